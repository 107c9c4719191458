"""Scores from per-class counts, and the one bootstrap behind every interval TaxaLens shows.

Counts -> scores: `ClassCounts` holds true positives, support and predicted counts per class (any leading batch
shape); `COUNT_SCORES` (accuracy, balanced accuracy, macro-F1, weighted-F1) and `class_scores` (precision, recall,
F1 per class) turn them into numbers with scikit-learn's conventions. A new headline metric is one entry in
`COUNT_SCORES` (and its label in `METRIC_LABELS`).

The bootstrap: `ResamplingPlan` resamples a table's *units* stratified by class. The unit is the specimen when
specimen ids are given and some specimen has several images (a cluster bootstrap: a specimen is drawn with all its
images, because images of one individual are not independent), else the image. Each class keeps its weight (its
number of units) in every resample, so no class vanishes from a resample and macro averages run over the same
classes as the point estimate. A specimen's class (its stratum) is the most common label among its images (ties:
the lower class index); its images keep their own labels when scored, so a specimen whose images carry different
labels is drawn whole, counted under its majority class. A class with a single specimen has its images resampled
instead (one specimen cannot be resampled; no interval can then show how another specimen of it would fare), and
so does a class whose specimens are not *clustered*: whose specimens differ no more than its images would by
chance (`design_effect` at most 1: Pearson's X^2 of the class's specimen x outcome table over its degrees of
freedom, about 1 + (images per specimen - 1) x the intra-class correlation; e.g. a near-perfect class whose few
specimens are all right). There its images carry image-level information, and the spread of its specimens, which
a few specimens estimate poorly (none at all when they all agree), is no better a guide than its images'.

The product's intervals ("bayes", `DEFAULT_METHOD`) come from the stratified Bayesian bootstrap with a Jeffreys
prior per class (`ResamplingPlan.resample_bayes`): in every draw the units of a class get Dirichlet weights (Rubin
1981), and so do three *pseudo-images* of the class: one right, one missed, one false alarm, each of prior mass 1/2
(Beta(1/2, 1/2) on its recall and precision). A class of 3 right answers is then not "certainly perfect", and F1 = 0
on 3 images reads differently from F1 = 0 on 300, with no special case. Each draw is rescaled so that the class's
images keep their weight. The interval is the equal-tailed 95% of the draws, widened to hold the point value where
the prior pulls every draw off a 0 or 1 estimate.

How far the draws spread is set by the total Dirichlet mass A of each class stratum (units and pseudo-images
together, `stratum_mass`): a Dirichlet-weighted mean of m values varies by sigma_n^2 / (A + 1) (sigma_n^2: their
variance about their mean, divided by m).
- m specimens (a clustered class): A = m - 2 (at least 1), so a class's rate varies by s^2 / m, the unbiased
  variance of a mean of m specimens (s^2 divides by m - 1) and the variance of the rescaled bootstrap below. The
  plain Bayesian bootstrap (A = m) and the ordinary bootstrap shrink it by (m - 1) / m or more, which a few
  specimens cannot afford: a specimen's rate has a spread of its own that m specimens estimate with m - 1 degrees
  of freedom. The prior's pseudo-images take their mass from that total.
- m single images (the image unit, or specimens of one image): A = m + 3/2 - 1. A 0/1 outcome's spread follows
  from its rate, so nothing is left to estimate and the mass is near the Jeffreys posterior's (m + 3/2: then
  Beta(s + 1/2, f + 1/2) exactly). One less, by measurement on a class of three single images: the full Jeffreys
  mass covered its F1 92.4%, m + 3/2 - 1.5 96.1% (balanced accuracy 97.3%), the previous total m - 1 98.7%.
- m images resampled within their specimens (a lone specimen's, an unclustered class's, see above):
  A = m + 3/2 - 2. They share specimens, so they vary together more than independent images: with the full
  Jeffreys mass a 1-specimen x 3-image class's F1 was covered 87.0% (balanced accuracy 92.1%), with m + 3/2 - 1.5
  93.0% (93.4%). (For an unclustered class of 4 specimens, m + 3/2 - 1 changed next to nothing: rare F1 93.7%
  against 94.2% at 1,000 sets, the same mean width 0.43.)
A stratum mixing specimens and single images blends the two by their shares. Calibration's plans
(`class_prior=False`) take the same units and totals without pseudo-images.

The choices, by measurement (`benchmarks/bench_coverage.py`, 1,000 sets unless said). A near-perfect rare class
(4 specimens, right 90% of the time) over-covered its F1 98.8% while every class's specimens were resampled with
A = m - 2: its specimens usually all agree (all right), so its spread came only from the pseudo-images, and m - 2
leaves them a large share of a small total. The candidates for it:
- m - 2 for every class of specimens (the previous method): that rare F1 98.8%, accuracy 94.2% (table below);
- m - 1.5 for every class of specimens: accuracy and macro-F1 down to 92.9% and 93.1% there (700 sets), while the
  4-specimen class right half of the time needs m - 2 (its F1 covered 92.0% with m - 1);
- the design effect deciding per class between its specimens (A = m - 2) and its images (the winner, above): that
  rare F1 93.7% (2,000 sets); no other cell moved by more than 1.3 points (that scenario's balanced accuracy and
  macro-F1 at 1,000 sets, which lean on the same class's recall): one rule, no tuned constant (the threshold 1 is
  what independent images give on average), and it keeps the m - 2 that clustered classes need.
A mass continuous in the estimated intra-class correlation was not pursued: the specimens' Dirichlet weights
already carry the between-specimen spread, so no mass on 4 specimens can make them carry image-level information;
a studentised (bootstrap-t) interval needs a variance per draw of every statistic (macro-F1 over 300 classes), a
nested or jackknife computation per draw. Earlier: the previous total m - 1 for every stratum covered a 4-specimen
class's F1 92.0% (2,000 sets) and over-covered three single images (balanced accuracy 97.5%, rare F1 98.7%); a
prior only where a class's rate is exactly 0 or 1 (no pull towards 1/2 elsewhere) covered the 4-specimen class's F1
82.5% (the pseudo-images' spread is what a few specimens need); earlier (200 sets): the plain total m covered
macro-F1 92.8%, pseudo-units of a whole specimen over-covered small classes and pulled the demo's near-perfect
scores down, a prior centred on the table's accuracy covered 85-93%, re-centring the draws on the point value lost
what the prior gives (balanced accuracy 75% with a 3-image class).

Why not the bootstrap's own fixes: with m = 4 specimens a resample sees 4 values, so its percentiles under-cover
(a t-quantile with 3 degrees of freedom, not a normal one) and a class whose few units all agree has no spread at
all; BCa's bias correction cannot create spread that is not in the resamples (one specimen x 3 images: balanced
accuracy covered 65.8% at 400 sets). Coverage of the population value, nominal 95% (specimens of 2-5 correlated
images, classes of 40 to 4 specimens; `python benchmarks/bench_coverage.py --sets 1000 --boot 500
--recipes image:percentile,image:bayes,specimen:percentile,specimen:bayes`; the product's rows also with
`--sets 2000 --recipes specimen:bayes`):

    scenario (rare class)        recipe                    sets  accuracy  bal. acc.  macro-F1  rare F1
    4 specimens of 2-5 images    image, percentile         1000     81.1%     78.7%     80.2%    78.4%
                                 image, bayes              1000     80.9%     78.7%     79.6%    80.2%
                                 specimen, percentile      1000     94.0%     91.7%     93.1%    88.3%
                                 specimen, bayes           1000     95.2%     96.3%     96.0%    95.5%
                                 specimen, bayes           2000     95.7%     96.7%     96.0%    95.3%
                                 (previous: all by specimen 1000    95.3%     96.2%     96.0%    96.9%)
    1 specimen x 3 images        image, percentile         1000     82.1%     56.1%     79.2%    74.4%
                                 image, bayes              1000     82.9%     86.7%     84.9%    86.2%
                                 specimen, percentile      1000     94.3%     68.7%     91.1%    80.4%
                                 specimen, bayes           1000     96.4%     94.9%     95.3%    94.7%
                                 specimen, bayes           2000     95.5%     94.9%     95.1%    94.9%
                                 (previous: all by specimen 1000    96.2%     95.0%     95.3%    95.0%)
    3 specimens x 1 image        image, percentile         1000     79.5%     79.8%     83.5%    88.1%
                                 image, bayes              1000     79.8%     90.9%     82.8%    92.7%
                                 specimen, percentile      1000     93.3%     85.0%     92.8%    90.0%
                                 specimen, bayes           1000     95.1%     96.0%     95.3%    95.4%
                                 specimen, bayes           2000     95.0%     95.9%     95.5%    95.8%
                                 (previous: all by specimen 1000    95.1%     96.1%     95.4%    95.2%)
    4 specimens, right 90%       image, percentile         1000     79.6%     79.6%     79.9%    75.3%
                                 image, bayes              1000     79.2%     80.0%     79.0%    80.7%
                                 specimen, percentile      1000     93.5%     92.6%     92.6%    88.9%
                                 specimen, bayes           1000     93.9%     95.2%     94.4%    94.2%
                                 specimen, bayes           2000     94.5%     96.0%     95.4%    93.7%
                                 (previous: all by specimen 1000    94.2%     96.5%     95.6%    98.8%)

(One standard error: about 0.7 points at 1,000 sets, 0.5 at 2,000.) The product's recipe (specimen, bayes) covers
93.7-96.7% in every cell at 2,000 sets (93.9-96.4% at 1,000). Its F1 interval for the near-perfect rare class
narrowed from a mean width of 0.49 to 0.43; elsewhere the widths moved by under 0.01. Resampling images falls short
throughout (accuracy 79-83%, the rest 56-93%): images of one specimen are not independent. Setting
`CLUSTERED_DESIGN_EFFECT = -inf` resamples every class of specimens by specimen again (the previous method).

The classical draws remain for comparison (`BootstrapConfig(method="bca" | "percentile")`): the rescaled bootstrap
(Rao & Wu 1988): a stratum of m units gets m - 1 draws with replacement, each weighted m / (m - 1), which keeps the
stratum's full variance (m draws would shrink it by (m - 1) / m: by half for a class of two specimens), BCa
(acceleration from the leave-one-unit-out jackknife, computed per type) or percentile intervals. Draws are exact and
vectorised: units with identical content (same stratum, same multiset of (label, prediction, flags) cells) are
merged into *types*; a Bayesian draw is one gamma variate per type (u units: u times a unit's mass), a classical one
uniform unit indices per stratum (or, for strata of many units in few types, one multinomial over the types); per
class sums come from one sparse (types x sums) product.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.errors import TaxaLensError

# scipy (sparse maps, the normal quantile) is imported where a plan is built or an interval computed, not here: this
# module loads with every evaluation page, and scipy's import (about 0.25 s) would land on the first page a fresh
# server shows even when every interval it needs is already on disk (core.result_cache).

logger = logging.getLogger(__name__)

Unit = Literal["image", "specimen"]
IntervalMethod = Literal["bayes", "bca", "percentile"]
INTERVAL_METHODS: dict[str, str] = {  # method -> how a caption names it
    "bayes": "Bayesian bootstrap, Jeffreys prior per class",
    "bca": "BCa",
    "percentile": "percentile",
}

METRIC_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro-F1",
    "weighted_f1": "Weighted-F1",
    "top3_accuracy": "Top-3 accuracy",
    "top5_accuracy": "Top-5 accuracy",
}
CLASS_METRIC_LABELS: dict[str, str] = {"precision": "Precision", "recall": "Recall", "f1": "F1"}
DEFAULT_METHOD: IntervalMethod = "bayes"  # the product's interval (see benchmarks/bench_coverage.py)
JEFFREYS_MASS = 0.5  # prior mass of each pseudo-image (right, missed, false alarm) of a class stratum
SPECIMEN_MASS_LESS = 2.0  # a stratum of m specimens has Dirichlet mass m - 2 (at least 1): variance s^2 / m
IMAGE_MASS_LESS = 1.0  # a stratum of m single images has mass m + its prior's mass - 1 (at least 1)
LONE_SPECIMEN_MASS_LESS = 2.0  # images resampled within their specimens (a lone specimen's, an unclustered class's):
#                                mass m + prior's - 2 (images of one specimen vary together more than independent ones)
CLUSTERED_DESIGN_EFFECT = 1.0  # a class's specimens are resampled when its design effect exceeds this, else its images
BOOT_CHUNK_NUMBERS = 4_000_000  # resample counts are drawn in chunks of about this many numbers (memory bound)
_MAX_MERGED_UNIT = 16  # units with more images than this are never merged into a type (bounds the padded key)


class ScoresError(TaxaLensError, ValueError):
    """Bad arguments to a score or bootstrap function; the message names the argument and its allowed values."""


def stratum_mass(units: np.ndarray, *, prior_mass: float, single_share: np.ndarray, lone: np.ndarray) -> np.ndarray:
    """Total Dirichlet mass of each class stratum in a Bayesian draw (its units and pseudo-images together).

    `units`: `(H,)` units per stratum; `prior_mass`: the pseudo-images' mass per stratum (0 without a class prior);
    `single_share`: `(H,)` share of each stratum's units that are single images; `lone`: `(H,)` True where the
    units are images resampled within their specimens (a class's lone specimen, or an unclustered class's
    specimens). A stratum of m specimens gets m - `SPECIMEN_MASS_LESS`, one of m single images
    m + `prior_mass` - `IMAGE_MASS_LESS` (`LONE_SPECIMEN_MASS_LESS` where `lone`), a mixed one the blend by
    `single_share`; at least 1. The module docstring says why.
    """
    units = np.asarray(units, dtype=np.float64)
    specimens = np.maximum(units - SPECIMEN_MASS_LESS, 1.0)
    less = np.where(lone, LONE_SPECIMEN_MASS_LESS, IMAGE_MASS_LESS)
    images = np.maximum(units + prior_mass - less, 1.0)
    return single_share * images + (1.0 - single_share) * specimens


# ----------------------------------------------------------------------------------------------------------------
# Counts -> scores


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator` as float64, 0 where the denominator is 0 (scikit-learn's `zero_division=0`)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


@dataclass(frozen=True)
class ClassCounts:
    """Per-class counts of one or many confusions: arrays of shape `(..., K)` (e.g. `(K,)` or `(B, K)`)."""

    tp: np.ndarray  # samples of the class predicted as it
    support: np.ndarray  # samples whose label is the class
    predicted: np.ndarray  # samples predicted as the class

    @classmethod
    def from_labels(cls, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> ClassCounts:
        """Counts of integer labels and predictions, each `(N,)` with values in `range(k)`; a negative value (a label
        or prediction outside the class list) counts nowhere on its side."""
        y_true = np.asarray(y_true, dtype=np.int64)
        y_pred = np.asarray(y_pred, dtype=np.int64)
        return cls(
            tp=np.bincount(y_true[(y_true == y_pred) & (y_true >= 0)], minlength=k).astype(np.float64),
            support=np.bincount(y_true[y_true >= 0], minlength=k).astype(np.float64),
            predicted=np.bincount(y_pred[y_pred >= 0], minlength=k).astype(np.float64),
        )

    @classmethod
    def from_confusion(cls, confusion: np.ndarray) -> ClassCounts:
        """Counts of a `(K, K)` confusion matrix (rows = true class, columns = predicted class)."""
        confusion = np.asarray(confusion, dtype=np.float64)
        return cls(tp=np.diag(confusion).copy(), support=confusion.sum(axis=1), predicted=confusion.sum(axis=0))


def class_scores(counts: ClassCounts) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per class, shaped like the counts; 0 where undefined (scikit-learn's
    `precision_recall_fscore_support(..., zero_division=0)`)."""
    return {
        "precision": ratio(counts.tp, counts.predicted),
        "recall": ratio(counts.tp, counts.support),
        "f1": ratio(2 * counts.tp, counts.support + counts.predicted),
    }


def _accuracy(counts: ClassCounts) -> np.ndarray:
    return ratio(counts.tp.sum(axis=-1), counts.support.sum(axis=-1))


def _balanced_accuracy(counts: ClassCounts) -> np.ndarray:
    present = counts.support > 0
    return ratio((ratio(counts.tp, counts.support) * present).sum(axis=-1), present.sum(axis=-1))


def _macro_f1(counts: ClassCounts) -> np.ndarray:
    present = counts.support > 0
    return ratio((class_scores(counts)["f1"] * present).sum(axis=-1), present.sum(axis=-1))


def _weighted_f1(counts: ClassCounts) -> np.ndarray:
    return ratio((class_scores(counts)["f1"] * counts.support).sum(axis=-1), counts.support.sum(axis=-1))


# Headline scores computed from per-class counts. Macro averages run over the classes present in the labels (a
# model class without samples would otherwise add a 0); weighted-F1 weights by support. Each equals scikit-learn's
# (tests/core/test_scores.py); 0 where undefined (no samples).
COUNT_SCORES: dict[str, Callable[[ClassCounts], np.ndarray]] = {
    "accuracy": _accuracy,
    "balanced_accuracy": _balanced_accuracy,
    "macro_f1": _macro_f1,
    "weighted_f1": _weighted_f1,
}


def headline_scores(counts: ClassCounts, names: Sequence[str] = tuple(COUNT_SCORES)) -> dict[str, np.ndarray]:
    """The `COUNT_SCORES` named in `names`, each of shape `counts.tp.shape[:-1]`."""
    return {name: COUNT_SCORES[name](counts) for name in names}


def top_k_hits(pred_probs: np.ndarray, y_true: np.ndarray, *, k: int) -> np.ndarray:
    """Boolean `(N,)`: is `y_true[i]` among the `k` highest scores of row i.

    Ties are broken as scikit-learn's `top_k_accuracy_score` does (a stable ascending argsort reversed, so among
    equal scores the higher class index ranks first), so `hits.mean()` equals that function's result.
    """
    pred_probs = np.asarray(pred_probs)
    y_true = np.asarray(y_true, dtype=np.int64)
    n, n_classes = pred_probs.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    out = np.empty(n, dtype=bool)
    columns = np.arange(n_classes)
    step = max(1, 2_000_000 // max(n_classes, 1))  # rows per chunk, bounds the temporary boolean arrays
    for start in range(0, n, step):
        probs = pred_probs[start : start + step]
        truth = y_true[start : start + step]
        score = probs[np.arange(len(truth)), truth][:, None]
        ahead = (probs > score).sum(axis=1) + ((probs == score) & (columns[None, :] > truth[:, None])).sum(axis=1)
        out[start : start + step] = ahead < k
    return out


# ----------------------------------------------------------------------------------------------------------------
# The bootstrap


@dataclass(frozen=True)
class BootstrapConfig:
    """How intervals are computed."""

    n_boot: int = 1000  # resamples (0: no intervals)
    confidence_level: float = 0.95  # e.g. 0.95 for 95% intervals
    seed: int | None = 0  # makes the resamples reproducible
    method: IntervalMethod = DEFAULT_METHOD  # "bayes" (the product's), "bca" or "percentile"

    def __post_init__(self) -> None:
        if self.n_boot < 0:
            raise ScoresError(f"n_boot must be >= 0, got {self.n_boot}")
        if not 0.0 < self.confidence_level < 1.0:
            raise ScoresError(f"confidence_level must be in (0, 1), got {self.confidence_level}")
        if self.method not in INTERVAL_METHODS:
            raise ScoresError(f"interval method must be one of {', '.join(map(repr, INTERVAL_METHODS))}, "
                              f"got {self.method!r}")


def describe_intervals(config: BootstrapConfig, unit: Unit) -> str:
    """The caption of an interval: "95% CI (BCa), 1,000 specimen resamples, stratified by class"."""
    level = f"{config.confidence_level * 100:g}%"
    return f"{level} CI ({INTERVAL_METHODS[config.method]}), {config.n_boot:,} {unit} resamples, stratified by class"


@dataclass(frozen=True)
class Tally:
    """Linear sums over units of one or many weightings (`R` rows: resamples, the full table, jackknife rows)."""

    support: np.ndarray  # (R, K) samples per true class
    tp: Mapping[str, np.ndarray]  # prediction column -> (R, K) true positives
    predicted: Mapping[str, np.ndarray]  # prediction column -> (R, K) samples predicted per class
    flags: Mapping[str, np.ndarray]  # flag name -> (R,) samples with the flag set
    n: np.ndarray  # (R,) samples

    def counts(self, column: str) -> ClassCounts:
        """The class counts of prediction column `column`."""
        return ClassCounts(tp=self.tp[column], support=self.support, predicted=self.predicted[column])

    def rate(self, flag: str) -> np.ndarray:
        """Share of samples with `flag` set, `(R,)`."""
        return ratio(self.flags[flag], self.n)


Statistic = Callable[[Tally], Mapping[str, np.ndarray]]  # a tally -> named arrays of shape (R, ...)


class ResamplingPlan:
    """The stratified (cluster) bootstrap of one table; see the module docstring.

    `y_true`: `(N,)` int class indices in `range(k)`; `predictions`: named `(N,)` int arrays in `range(k)` (one per
    model: paired comparisons resample the same units for both); `flags`: named `(N,)` booleans (e.g. top-3 hits);
    `groups`: `(N,)` specimen ids, or None. The unit is the specimen when `groups` holds some id twice, else the
    image (rows that are already specimens are images of this plan: pass `groups=None`). `class_prior`: whether the
    Bayesian draws add the Jeffreys pseudo-images of each class (`_prepare_prior`); a statistic whose columns are not
    class predictions (e.g. calibration's confidence levels) passes False and gets the plain stratified Bayesian
    bootstrap.
    """

    def __init__(
        self,
        y_true: np.ndarray,
        predictions: Mapping[str, np.ndarray],
        *,
        k: int,
        flags: Mapping[str, np.ndarray] | None = None,
        groups: np.ndarray | Sequence | None = None,
        class_prior: bool = True,
    ) -> None:
        y_true = np.asarray(y_true, dtype=np.int64)
        n = len(y_true)
        if n == 0:
            raise ScoresError("cannot resample an empty table (no evaluated samples)")
        flags = dict(flags or {})
        preds = {name: np.asarray(values, dtype=np.int64) for name, values in predictions.items()}
        for name, values in [*preds.items(), *flags.items()]:
            if len(values) != n:
                raise ScoresError(f"{name!r} has {len(values)} values for {n} labels")
        self.k = k
        self.columns = tuple(preds)
        self.flag_names = tuple(flags)
        unit_of_row = self._units(groups, n)
        self.unit: Unit = "specimen" if unit_of_row is not None else "image"
        if unit_of_row is None:
            unit_of_row = np.arange(n)
        n_units = int(unit_of_row.max()) + 1

        # Cells: distinct (label, each prediction, each flag) combinations.
        code = y_true.copy()
        for name in self.columns:
            code = code * k + preds[name]
        for name in self.flag_names:
            code = code * 2 + np.asarray(flags[name], dtype=np.int64)
        cells, cell_of_row = np.unique(code, return_inverse=True)
        cell_flags = {}
        rest = cells
        for name in reversed(self.flag_names):
            cell_flags[name] = (rest % 2).astype(np.float64)
            rest = rest // 2
        cell_preds = {}
        for name in reversed(self.columns):
            cell_preds[name] = rest % k
            rest = rest // k
        cell_true = rest

        # Strata: a unit's class is its most common label (ties: the lower class index). A class with one specimen
        # cannot show its variation by resampling specimens (every resample holds that specimen), and a class whose
        # specimens differ no more than its images would by chance (design effect at most 1) has its information in
        # its images: in both, its images become the units of its stratum (see the module docstring).
        stratum_of_unit = _majority_label(unit_of_row, y_true, n_units, k)
        several = np.bincount(unit_of_row, minlength=n_units) > 1
        lone = (np.bincount(stratum_of_unit, minlength=k)[stratum_of_unit] == 1) & several
        split = lone.copy()
        if self.unit == "specimen":
            clustered = design_effect(unit_of_row, cell_of_row, stratum_of_unit, k) > CLUSTERED_DESIGN_EFFECT
            split |= ~clustered[stratum_of_unit] & several
        self._image_strata = np.unique(stratum_of_unit[split]) if self.unit == "specimen" else np.zeros(0, np.int64)
        self.n_unclustered_classes = int(len(np.unique(stratum_of_unit[split & ~lone])))  # classes resampled by image
        if self.unit == "specimen" and split.any():
            split_rows = split[unit_of_row]
            unit_of_row = unit_of_row.copy()
            unit_of_row[split_rows] = n_units + np.arange(int(split_rows.sum()))
            unit_of_row = np.unique(unit_of_row, return_inverse=True)[1].ravel()
            n_units = int(unit_of_row.max()) + 1
            stratum_of_unit = _majority_label(unit_of_row, y_true, n_units, k)
        self.n_image_units = int(lone.sum())  # specimens resampled as images (their class has no other specimen)
        self.n_unclustered_specimens = int((split & ~lone).sum())  # specimens resampled as images (unclustered class)

        # Types: units with the same stratum and the same multiset of cells.
        type_of_unit = self._types(unit_of_row, cell_of_row, stratum_of_unit)
        n_types = int(type_of_unit.max()) + 1
        self.multiplicity = np.bincount(type_of_unit, minlength=n_types).astype(np.float64)  # units per type
        rep_unit = np.zeros(n_types, dtype=np.int64)
        rep_unit[type_of_unit[::-1]] = np.arange(n_units)[::-1]  # first unit of each type
        stratum_of_type = stratum_of_unit[rep_unit]
        n_cells = len(cells)
        from scipy import sparse

        unit_cells = sparse.csr_matrix((np.ones(n), (unit_of_row, cell_of_row)), shape=(n_units, n_cells))
        type_cells = unit_cells[rep_unit]  # (T, cells) images of each cell in one unit of the type

        cell_rows = np.arange(n_cells)

        def to_class(cls_of_cell: np.ndarray, weight: np.ndarray | None = None) -> sparse.csr_matrix:
            data = np.ones(n_cells) if weight is None else weight
            return (type_cells @ sparse.csr_matrix((data, (cell_rows, cls_of_cell)), shape=(n_cells, k))).tocsr()

        # One sparse (T, Q) map from type weights to every sum a tally holds: support, tp and predicted per column
        # (K each), flags, images; a tally is one sparse product.
        blocks = [to_class(cell_true)]
        blocks += [to_class(cell_true, (cell_true == cell_preds[c]).astype(np.float64)) for c in self.columns]
        blocks += [to_class(cell_preds[c]) for c in self.columns]
        blocks += [sparse.csr_matrix((type_cells @ cell_flags[f]).reshape(-1, 1)) for f in self.flag_names]
        blocks.append(sparse.csr_matrix(np.asarray(type_cells.sum(axis=1)).reshape(-1, 1)))
        self._map = sparse.hstack(blocks, format="csr")
        self.n_types = n_types
        self.n_units = n_units
        self.n_rows = n
        self.units_per_class = np.bincount(stratum_of_unit, minlength=k)  # units resampled per class stratum
        self.n_strata = int(len(np.unique(stratum_of_type)))
        self._prepare_draws(stratum_of_type)
        self._prepare_prior(stratum_of_type, JEFFREYS_MASS if class_prior else 0.0)
        logger.debug("resampling plan: %d rows, %d %ss in %d strata, %d types, %d cells", n, n_units, self.unit,
                     self.n_strata, n_types, n_cells)

    @staticmethod
    def _units(groups: np.ndarray | Sequence | None, n: int) -> np.ndarray | None:
        if groups is None:
            return None
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ScoresError(f"groups has {len(groups)} values for {n} labels")
        codes, uniques = _factorize(groups)
        return codes if len(uniques) < n else None

    @staticmethod
    def _types(unit_of_row: np.ndarray, cell_of_row: np.ndarray, stratum_of_unit: np.ndarray) -> np.ndarray:
        """Type index per unit: equal for units of one stratum holding the same multiset of cells."""
        n_units = len(stratum_of_unit)
        sizes = np.bincount(unit_of_row, minlength=n_units)
        width = int(min(sizes.max(), _MAX_MERGED_UNIT))
        order = np.lexsort((cell_of_row, unit_of_row))
        units_sorted = unit_of_row[order]
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        slot = np.arange(len(order)) - starts[units_sorted]
        small = sizes[units_sorted] <= width
        key = np.full((n_units, width + 2), -1, dtype=np.int64)
        key[:, 0] = stratum_of_unit
        key[:, 1] = np.where(sizes <= width, -1, np.arange(n_units))  # a large unit is a type of its own
        key[units_sorted[small], slot[small] + 2] = cell_of_row[order][small]
        _, type_of_unit = np.unique(key, axis=0, return_inverse=True)
        return type_of_unit.ravel()

    # ------------------------------------------------------------------------------------------------------------

    def _prepare_draws(self, stratum_of_type: np.ndarray) -> None:
        """Per stratum, how a resample is drawn: fixed (one unit or one type), as unit indices (most strata: a
        uniform draw per unit is far cheaper than a binomial per type), or as one multinomial over its types
        (strata of many units in few types, e.g. images of a large class)."""
        order = np.argsort(stratum_of_type, kind="stable")
        bounds = np.flatnonzero(np.r_[True, np.diff(stratum_of_type[order]) != 0, True])
        self._fixed = []  # types whose weight is their multiplicity in every resample
        self._multinomial = []  # (types, units, type probabilities)
        pools, offsets, sizes, scale = [], [], [], np.ones(self.n_types)
        pooled = 0
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            types = order[start:stop]
            units = self.multiplicity[types]
            m = int(units.sum())
            if len(types) == 1 or m == 1:
                self._fixed.append(types)
            elif m - 1 > 40 * len(types):
                self._multinomial.append((types, m, units / m))
            else:
                pools.append(np.repeat(types, units.astype(np.int64)))
                offsets.append(np.full(m - 1, pooled))
                sizes.append(np.full(m - 1, m))
                scale[types] = m / (m - 1)
                pooled += m
        self._fixed_types = np.concatenate(self._fixed) if self._fixed else np.zeros(0, dtype=np.int64)
        self._pool = np.concatenate(pools) if pools else np.zeros(0, dtype=np.int64)  # one entry per unit: its type
        self._draw_offset = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64)
        self._draw_size_int = np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64)
        self._draw_size = self._draw_size_int.astype(np.float32)  # stratum size per draw
        self._scale = scale

    def _prepare_prior(self, stratum_of_type: np.ndarray, mass: float) -> None:
        """The Bayesian bootstrap's pseudo-units: per class stratum c, three single images, *right* (c predicted c
        by every column, every flag set), *missed* (c predicted nowhere) and *false alarm* (no class, predicted c by
        every column), each of prior mass `mass` (`JEFFREYS_MASS`, or 0 without a class prior): a Jeffreys
        Beta(1/2, 1/2) prior on the class's recall, precision and flag rates, so a class of 3 right specimens is not
        certainly perfect. A `(3 H, Q)` map like
        `_map`, and the shapes and strata of a draw's gamma variates (`resample_bayes`)."""
        k, c, f = self.k, len(self.columns), len(self.flag_names)
        strata = np.unique(stratum_of_type)
        h = len(strata)
        from scipy import sparse

        one = np.ones(h)
        rows, cols = [], []

        def put(row: np.ndarray, col: np.ndarray) -> None:
            rows.append(row)
            cols.append(col)

        right, missed, false_alarm = np.arange(h), h + np.arange(h), 2 * h + np.arange(h)
        q = k * (1 + 2 * c) + f + 1  # width of a tally row (see `_split`)
        for pseudo in (right, missed):
            put(pseudo, strata)  # support
            put(pseudo, np.full(h, q - 1))  # images
        for i in range(c):
            put(right, k * (1 + i) + strata)  # true positives of column i
            put(right, k * (1 + c + i) + strata)  # predicted by column i
            put(false_alarm, k * (1 + c + i) + strata)
        for j in range(f):
            put(right, np.full(h, k * (1 + 2 * c) + j))
        self._prior_map = sparse.csr_matrix((np.ones(sum(map(len, rows))), (np.concatenate(rows),
                                                                            np.concatenate(cols))), shape=(3 * h, q))
        # Per column of a draw (real types, then the pseudo-units): its stratum (an index into `strata`), its gamma
        # shape, and the images it carries (a false alarm carries none of the class's).
        position = np.searchsorted(strata, stratum_of_type)
        self._bayes_stratum = np.r_[position, np.tile(np.arange(h), 3)]
        units = np.bincount(position, weights=self.multiplicity, minlength=h)  # real units per stratum
        type_images = np.asarray(self._map[:, -1].todense()).ravel()  # images of one unit of each type
        single = np.bincount(position, weights=self.multiplicity * (type_images == 1), minlength=h) / units
        total = stratum_mass(units, prior_mass=3 * mass, single_share=single, lone=np.isin(strata, self._image_strata))
        scale = total / (units + 3 * mass)
        self._bayes_shape = np.r_[self.multiplicity * scale[position], np.tile(mass * scale, 3)]
        carried = np.r_[type_images, one, one, 0 * one]
        self._bayes_members = sparse.csr_matrix((carried, (np.arange(len(carried)), self._bayes_stratum)),
                                                shape=(len(carried), h))
        # A draw is scaled so that the stratum's images weigh what they do in the table: each class keeps its
        # weight (its support, exactly, when its specimens hold only its own label).
        self._bayes_total = np.bincount(position, weights=self.multiplicity * type_images, minlength=h)
        # One (T + 3 H, Q) map from a draw's weights (real types, then pseudo-units) to a tally row.
        self._bayes_map = sparse.vstack([self._map, self._prior_map], format="csr")

    def _split(self, sums: np.ndarray) -> Tally:
        k, c = self.k, len(self.columns)
        return Tally(
            support=sums[:, :k],
            tp={name: sums[:, k * (1 + i) : k * (2 + i)] for i, name in enumerate(self.columns)},
            predicted={name: sums[:, k * (1 + c + i) : k * (2 + c + i)] for i, name in enumerate(self.columns)},
            flags={name: sums[:, k * (1 + 2 * c) + i] for i, name in enumerate(self.flag_names)},
            n=sums[:, -1],
        )

    def tally(self, weights: np.ndarray) -> Tally:
        """Sums under `(R, T)` type weights (units drawn per type)."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return self._split(np.asarray((self._map.T @ np.ascontiguousarray(weights.T)).T))

    def full(self) -> Tally:
        """The tally of the table itself (every unit once)."""
        return self.tally(self.multiplicity[None, :])

    def resample(self, n_boot: int, seed: int | None) -> Iterator[Tally]:
        """Tallies of `n_boot` stratified resamples, in chunks of draws (memory bound by `BOOT_CHUNK_NUMBERS`); the
        resamples are the same whatever the chunk size.

        Rescaled bootstrap: a stratum of m units gets m - 1 draws with replacement, each weighted m / (m - 1), so
        the class keeps its total weight and small strata keep their full variance (with m draws a stratum's
        variance shrinks by (m - 1) / m: half for two specimens); a stratum of one unit is fixed.
        """
        rng = np.random.default_rng(seed)
        # One stream per multinomial stratum (spawned: the main stream is untouched), so no stream's draws interleave
        # with another's and the resamples do not depend on the chunking.
        streams = rng.spawn(len(self._multinomial))
        per_resample = max(self.n_types, len(self._draw_offset))
        chunk = max(1, BOOT_CHUNK_NUMBERS // max(per_resample, 1))
        t = self.n_types
        for start in range(0, n_boot, chunk):
            size = min(chunk, n_boot - start)
            if len(self._pool):
                uniform = rng.random((size, len(self._draw_offset)), dtype=np.float32)
                local = (uniform * self._draw_size).astype(np.int64)
                np.minimum(local, self._draw_size_int - 1, out=local)  # float32 rounding may reach m itself
                picks = self._draw_offset + local
                flat = (np.arange(size)[:, None] * t + self._pool[picks]).ravel()
                weights = np.bincount(flat, minlength=size * t).reshape(size, t) * self._scale
            else:
                weights = np.zeros((size, t))
            weights[:, self._fixed_types] = self.multiplicity[self._fixed_types]
            for stream, (types, m, probabilities) in zip(streams, self._multinomial, strict=True):
                weights[:, types] = stream.multinomial(m - 1, probabilities, size=size) * (m / (m - 1))
            yield self.tally(weights)

    def resample_bayes(self, n_boot: int, seed: int | None) -> Iterator[Tally]:
        """Tallies of `n_boot` draws of the stratified Bayesian bootstrap with a Jeffreys prior, in chunks of draws
        (memory bound by `BOOT_CHUNK_NUMBERS`; the draws are the same whatever the chunk size).

        Per class stratum of m units, the units and the stratum's three pseudo-units (`_prepare_prior`) get
        Dirichlet weights (mass 1 per unit, `JEFFREYS_MASS` per pseudo-unit, all scaled to the stratum's total
        `stratum_mass`), rescaled so that the units carrying the class's images keep their images' weight: the
        posterior of the stratum's distribution over unit contents (Rubin 1981, with a prior). A type of u identical
        units gets one Gamma weight of u times the unit's mass (the sum of theirs), so a draw costs one gamma variate
        per type.
        """
        rng = np.random.default_rng(seed)
        width = len(self._bayes_shape)
        chunk = max(1, BOOT_CHUNK_NUMBERS // max(width, 1))
        for start in range(0, n_boot, chunk):
            size = min(chunk, n_boot - start)
            # float32 variates (a third cheaper than float64; a weight needs no more than 7 digits), sums in float64
            gammas = rng.standard_gamma(self._bayes_shape, size=(size, width), dtype=np.float32).astype(np.float64)
            totals = np.asarray((self._bayes_members.T @ gammas.T).T)  # (size, H) per-stratum sums
            gammas *= (self._bayes_total / totals)[:, self._bayes_stratum]
            yield self._split(np.asarray((self._bayes_map.T @ np.ascontiguousarray(gammas.T)).T))

    def jackknife(self, chunk_types: int = 2048) -> Iterator[tuple[Tally, np.ndarray]]:
        """Leave-one-unit-out tallies, one row per type (every unit of a type gives the same), with the units per
        type as weights; in chunks of `chunk_types` types."""
        total = np.asarray(self._map.T @ self.multiplicity).ravel()
        for start in range(0, self.n_types, chunk_types):
            rows = slice(start, min(start + chunk_types, self.n_types))
            yield self._split(total[None, :] - self._map[rows].toarray()), self.multiplicity[rows]


def design_effect(unit_of_row: np.ndarray, cell_of_row: np.ndarray, stratum_of_unit: np.ndarray, k: int
                  ) -> np.ndarray:
    """`(k,)` design effect of each class stratum: Pearson's X^2 of its (unit x cell) table over its degrees of
    freedom (about 1 when its units differ no more than its images would by chance, larger when images of a unit
    agree); 0 where the stratum has one unit or one cell."""
    n_cells = int(cell_of_row.max()) + 1
    pairs, observed = np.unique(unit_of_row * n_cells + cell_of_row, return_counts=True)
    pair_unit, pair_cell = pairs // n_cells, pairs % n_cells
    unit_images = np.bincount(unit_of_row, minlength=len(stratum_of_unit)).astype(np.float64)
    pair_stratum = stratum_of_unit[pair_unit]
    cells, cell_images = np.unique(pair_stratum * n_cells + pair_cell, return_inverse=True)
    cell_images = np.bincount(cell_images.ravel(), weights=observed.astype(np.float64))[cell_images.ravel()]
    stratum_images = np.bincount(stratum_of_unit, weights=unit_images, minlength=k)
    expected = unit_images[pair_unit] * cell_images / stratum_images[pair_stratum]
    chi2 = np.bincount(pair_stratum, weights=observed**2 / expected, minlength=k) - stratum_images
    units = np.bincount(stratum_of_unit, minlength=k)
    n_cells_in = np.bincount(cells // n_cells, minlength=k)
    df = np.maximum(units - 1, 0) * np.maximum(n_cells_in - 1, 0)
    return ratio(chi2, df)


def _majority_label(unit_of_row: np.ndarray, y_true: np.ndarray, n_units: int, k: int) -> np.ndarray:
    """Per unit, the most common label of its rows (ties: the lower class index)."""
    pairs, pair_counts = np.unique(unit_of_row * k + y_true, return_counts=True)
    pair_unit, pair_label = pairs // k, pairs % k
    best = np.lexsort((pair_label, -pair_counts, pair_unit))
    first = np.r_[True, pair_unit[best][1:] != pair_unit[best][:-1]]
    out = np.empty(n_units, dtype=np.int64)
    out[pair_unit[best][first]] = pair_label[best][first]
    return out


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(values), sort=False)
    return codes.astype(np.int64), np.asarray(uniques)


@dataclass(frozen=True)
class BootstrapResult:
    """Point values and intervals of named statistics (each an array of any shape, e.g. `()` or `(K,)`)."""

    values: dict[str, np.ndarray]  # statistic -> point value on the table
    low: dict[str, np.ndarray]  # statistic -> lower bound (NaN: no interval)
    high: dict[str, np.ndarray]  # statistic -> upper bound
    draws: dict[str, np.ndarray]  # statistic -> (n_boot, ...) resampled values
    unit: Unit  # what was resampled
    config: BootstrapConfig

    @property
    def caption(self) -> str:
        return describe_intervals(self.config, self.unit)


def bootstrap(plan: ResamplingPlan, statistic: Statistic, config: BootstrapConfig) -> BootstrapResult:
    """Point values of `statistic` on the table and their intervals over `config.n_boot` stratified resamples."""
    values = {name: v[0] for name, v in statistic(plan.full()).items()}
    if config.n_boot == 0:
        nan = {name: np.full(np.shape(v), np.nan) for name, v in values.items()}
        return BootstrapResult(values, nan, dict(nan), {}, plan.unit, config)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in values}
    draws_of = plan.resample_bayes if config.method == "bayes" else plan.resample
    for tally in draws_of(config.n_boot, config.seed):
        for name, v in statistic(tally).items():
            parts[name].append(v)
    draws = {name: np.concatenate(p) for name, p in parts.items()}
    acceleration = _acceleration(plan, statistic, values) if config.method == "bca" else None
    low, high = {}, {}
    for name, value in values.items():
        accel = None if acceleration is None else acceleration[name]
        low[name], high[name] = interval(draws[name], value, config.confidence_level, acceleration=accel)
        if config.method == "bayes":  # the prior may pull every draw off a 0 or 1 estimate: the interval keeps it
            low[name], high[name] = np.minimum(low[name], value), np.maximum(high[name], value)
    return BootstrapResult(values, low, high, draws, plan.unit, config)


def _acceleration(plan: ResamplingPlan, statistic: Statistic, values: Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """BCa acceleration per statistic (elementwise) from the leave-one-unit-out jackknife.

    a = sum(w d^3) / (6 sum(w d^2)^1.5), d = the jackknife mean minus each leave-one-out value, w = units per type.
    The moments are accumulated chunk by chunk about the full-table value (then shifted to the jackknife mean), so
    no `(types, ...)` array is ever held whole.
    """
    total_w = 0.0
    sums: dict[str, list[np.ndarray]] = {}
    for tally, w in plan.jackknife():
        total_w += float(w.sum())
        for name, theta in statistic(tally).items():
            e = theta - values[name]
            ww = w.reshape((-1,) + (1,) * (e.ndim - 1))
            we = ww * e
            we2 = we * e
            moments = [we.sum(axis=0), we2.sum(axis=0), (we2 * e).sum(axis=0)]
            if name in sums:
                sums[name] = [a + b for a, b in zip(sums[name], moments, strict=True)]
            else:
                sums[name] = moments
    out = {}
    for name, (s1, s2, s3) in sums.items():
        mu = s1 / total_w
        m2 = s2 - total_w * mu**2  # sum of w (theta - mean)^2
        m3 = s3 - 3 * mu * s2 + 2 * total_w * mu**3  # sum of w (theta - mean)^3
        num, den = -m3, 6.0 * np.clip(m2, 0.0, None) ** 1.5
        out[name] = np.divide(num, den, out=np.zeros_like(np.asarray(num, dtype=np.float64)), where=den > 0)
    return out


def interval(draws: np.ndarray, value: np.ndarray, confidence_level: float, *,
             acceleration: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise interval of `(B, ...)` bootstrap `draws` around point `value` (shape `...`).

    Without `acceleration`: the percentile interval. With it: BCa (Efron 1987): the percentiles are shifted by the
    bias correction z0 = Phi^-1(share of draws below the point value, ties counted half) and the acceleration.
    Where every draw is equal the interval is that value.
    """
    draws = np.asarray(draws, dtype=np.float64)
    alpha = (1.0 - confidence_level) / 2.0
    n_boot = draws.shape[0]
    shape = draws.shape[1:]
    levels = np.broadcast_to(np.array([alpha, 1.0 - alpha]).reshape((2,) + (1,) * len(shape)), (2,) + shape)
    if acceleration is not None:
        from scipy.special import ndtr, ndtri

        value = np.asarray(value, dtype=np.float64)
        share = ((draws < value).sum(axis=0) + 0.5 * (draws == value).sum(axis=0)) / n_boot
        z0 = ndtri(np.clip(share, 0.5 / n_boot, 1.0 - 0.5 / n_boot))
        z = ndtri(np.array([alpha, 1.0 - alpha])).reshape((2,) + (1,) * len(shape))
        a = np.asarray(acceleration, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            adjusted = ndtr(z0 + (z0 + z) / (1.0 - a * (z0 + z)))
        levels = np.where(np.isfinite(adjusted), adjusted, levels)
    ordered = np.sort(draws, axis=0)
    position = np.clip(levels, 0.0, 1.0) * (n_boot - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n_boot - 1)
    frac = position - below
    low_high = (np.take_along_axis(ordered, below, axis=0) * (1 - frac)
                + np.take_along_axis(ordered, above, axis=0) * frac)
    return low_high[0], low_high[1]


def wilson_interval(successes: np.ndarray, n: np.ndarray, confidence_level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (elementwise); (0, 1) where `n` is 0."""
    successes = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    from scipy.special import ndtri

    z = float(ndtri(1.0 - (1.0 - confidence_level) / 2.0))
    safe = np.where(n > 0, n, 1.0)
    p = successes / safe
    centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
    half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe)) / (1 + z * z / safe)
    return np.where(n > 0, centre - half, 0.0), np.where(n > 0, centre + half, 1.0)


def class_interval_bounds(plan: ResamplingPlan, config: BootstrapConfig, *, column: str = "pred"
                          ) -> dict[str, np.ndarray]:
    """Per-class intervals of precision, recall and F1 of prediction `column`: `(K,)` arrays keyed
    `precision_low`, `precision_high`, `recall_low`, ... (NaN for classes without samples).

    With the product's method ("bayes") these are the plain intervals of the draws: the Jeffreys prior of each
    class keeps a score of 0 or 1 open, so F1 = 0 on 3 images (upper bound about 0.5) reads differently from F1 = 0
    on 300 (upper bound about 0.01). With "bca" or "percentile", where the score sits at 0 or 1 with nothing to
    resample off it (no true positive, or every sample right), a bootstrap cannot leave that value, so the open side
    takes the Wilson score bound of the proportion on the class's units (its specimens; for precision, its predicted
    images divided by the table's images per unit), and F1's bound is the F1 of those precision and recall bounds.
    """

    def statistic(tally: Tally) -> dict[str, np.ndarray]:
        return class_scores(tally.counts(column))

    result = bootstrap(plan, statistic, config)
    counts = plan.full().counts(column)
    support = counts.support[0]
    if config.method == "bayes":  # the Jeffreys prior already keeps 0 and 1 open
        return {f"{name}_{side}": np.where(support > 0, np.array(getattr(result, side)[name], dtype=np.float64),
                                           np.nan)
                for name in ("precision", "recall", "f1") for side in ("low", "high")}
    tp, support, predicted = counts.tp[0], counts.support[0], counts.predicted[0]
    images_per_unit = plan.n_rows / plan.n_units
    n_recall = np.where(plan.units_per_class > 0, plan.units_per_class, support / images_per_unit)
    n_precision = predicted / images_per_unit
    level = config.confidence_level
    out = {f"{name}_{side}": np.array(getattr(result, side)[name], dtype=np.float64)
           for name in ("precision", "recall", "f1") for side in ("low", "high")}
    none_right, all_right = tp == 0, (tp == support) & (support > 0)
    all_precise = (tp == predicted) & (predicted > 0)
    r_low, r_high = wilson_interval(np.where(none_right, 0.0, n_recall), n_recall, level)
    p_low, p_high = wilson_interval(np.where(none_right, 0.0, n_precision), n_precision, level)
    out["recall_high"] = np.where(none_right, np.maximum(out["recall_high"], r_high), out["recall_high"])
    out["recall_low"] = np.where(all_right, np.minimum(out["recall_low"], r_low), out["recall_low"])
    out["precision_high"] = np.where(none_right, np.maximum(out["precision_high"], p_high), out["precision_high"])
    out["precision_low"] = np.where(all_precise, np.minimum(out["precision_low"], p_low), out["precision_low"])
    f1_high = ratio(2 * p_high * r_high, p_high + r_high)
    f1_low = ratio(2 * np.where(all_precise, p_low, 1.0) * r_low, np.where(all_precise, p_low, 1.0) + r_low)
    out["f1_high"] = np.where(none_right, np.maximum(out["f1_high"], f1_high), out["f1_high"])
    out["f1_low"] = np.where(all_right & all_precise, np.minimum(out["f1_low"], f1_low), out["f1_low"])
    for key in out:
        out[key] = np.where(support > 0, out[key], np.nan)
    return out
