"""The active-learning simulation: how many labels each acquisition order (`core.acquisition.ORDERS`) spends to
reach a macro-F1, measured by hiding the labels of the training split and labelling it back round by round.

One run (one order, one seed): a stratified seed set of the training split keeps its labels (`seed_per_class`
images per class, each from a different specimen where it can); every other training image forms the pool. Each
round a linear probe (standardised embeddings, L2 logistic regression, fixed seed) is fitted on the labelled images
and scored on the validation split (macro-F1 over the classes present there); then the probe's probabilities on
the pool (with the labelled counts and embeddings) rank it by the order, and the first `batch` images get their
hidden label. Specimens stay apart: the probe trains only on the training split and is scored only on validation
images whose specimen has no training image (the rest are dropped, logged). Results are averaged over seeds.

`labels_to_reach` turns the curves into the headline: per order, the labels at which its mean curve first reaches
random's final mean macro-F1, as a share of random's labels (the issue's target: <= 60% for the best order).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from core import acquisition
from core.acquisition import ORDERS, AcquisitionError, PoolView, rank_pool
from core.errors import TaxaLensError
from core.predictions import PredictionTable
from core.result_cache import result_key
from core.scores import ClassCounts, headline_scores

logger = logging.getLogger(__name__)

CURVE_COLUMNS = ("order", "seed", "round", "labels", "macro_f1")
BASELINE = "random"


class SimulationError(TaxaLensError, ValueError):
    """A simulation that cannot run as asked; the message names the setting or data at fault and the fix."""


@dataclass(frozen=True)
class SimulationConfig:
    """One active-learning simulation (see the module docstring)."""

    orders: tuple[str, ...] = tuple(ORDERS)  # keys of core.acquisition.ORDERS; must include "random" to summarise
    seed_per_class: int = 2  # labelled images per class before the first round (fewer if a class has fewer)
    batch: int = 20  # images labelled per round
    rounds: int = 10  # labelling rounds after the seed set (the curve has rounds + 1 points)
    seeds: tuple[int, ...] = (0, 1, 2)  # one run per order and seed: seed set, ties, k-center start
    probe_c: float = 0.5  # inverse L2 strength of the logistic-regression probe
    probe_iter: int = 200  # lbfgs iterations of the probe
    probe_dims: int = 64  # principal components of the standardised pool the probe sees (0: all); a 10x faster fit
    probe_balanced: bool = True  # class weights inverse to the labelled counts (macro-F1 weighs every class alike)

    def validate(self) -> None:
        unknown = [o for o in self.orders if o not in ORDERS]
        if unknown or not self.orders:
            raise SimulationError(f"orders={list(self.orders)}: use one or more of {', '.join(ORDERS)}")
        for name in ("seed_per_class", "batch", "rounds", "probe_iter"):
            if getattr(self, name) < 1:
                raise SimulationError(f"{name}={getattr(self, name)}: must be at least 1")
        if not self.seeds:
            raise SimulationError("seeds=(): give at least one seed (three or more to average)")
        if self.probe_c <= 0:
            raise SimulationError(f"probe_c={self.probe_c}: the probe's inverse regularisation must be positive")

    @property
    def steps(self) -> int:
        """Probe fits the simulation makes (for a progress bar)."""
        return len(self.orders) * len(self.seeds) * (self.rounds + 1)


@dataclass(frozen=True)
class SimulationData:
    """What a simulation runs on: embeddings and integer labels of a training pool and an evaluation set."""

    pool_x: np.ndarray  # (n, d) float32 embeddings of the training images (all labels hidden but the seed set's)
    pool_y: np.ndarray  # (n,) int class index in range(k) (the hidden truth)
    pool_groups: np.ndarray  # (n,) specimen of each training image (the seed set takes distinct specimens)
    eval_x: np.ndarray  # (m, d) embeddings of the evaluation images
    eval_y: np.ndarray  # (m,) int class index
    class_names: tuple[str, ...]  # k names


def simulation_data(table: PredictionTable, *, pool_split: str = "train", eval_split: str = "val"
                    ) -> SimulationData:
    """The `pool_split` rows (known label) as the pool and the `eval_split` rows as the evaluation set of `table`,
    dropping evaluation images whose specimen also has a pool image."""
    if table.embeddings.shape[1] == 0:
        raise SimulationError("the predictions carry no embeddings, so no probe can be trained; recompute them "
                              "(`python -m core predict --workspace DIR --checkpoint NAME`)")
    frame = table.frame
    known = frame["label_idx"].to_numpy() >= 0
    split = frame["split"].to_numpy()
    pool = known & (split == pool_split)
    evaluate = known & (split == eval_split)
    shared = evaluate & frame["specimen_id"].isin(set(frame.loc[pool, "specimen_id"])).to_numpy()
    if shared.any():
        logger.info("dropping %d %s images whose specimen also has %s images", int(shared.sum()), eval_split,
                    pool_split)
        evaluate &= ~shared
    for name, mask, split_name in (("pool", pool, pool_split), ("evaluation set", evaluate, eval_split)):
        if mask.sum() < 2:
            raise SimulationError(f"the {name} (split {split_name!r}) has {int(mask.sum())} labelled images; the "
                                  "simulation needs a training and a validation split with labels")
    y = frame["label_idx"].to_numpy(dtype=np.int64)
    return SimulationData(pool_x=np.ascontiguousarray(table.embeddings[pool], dtype=np.float32), pool_y=y[pool],
                          pool_groups=frame["specimen_id"].to_numpy()[pool],
                          eval_x=np.ascontiguousarray(table.embeddings[evaluate], dtype=np.float32),
                          eval_y=y[evaluate], class_names=tuple(table.class_names))


def seed_set(y: np.ndarray, groups: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified seed set: up to `per_class` images of each class in `y`, from distinct specimens
    first (a class with fewer specimens gives more than one image of a specimen only when it must)."""
    chosen: list[int] = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        _, first = np.unique(groups[rows], return_index=True)
        distinct = rows[np.sort(first)]
        rest = np.setdiff1d(rows, distinct, assume_unique=True)
        chosen.extend(np.concatenate([distinct, rng.permutation(rest)])[:per_class].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


class _Probe:
    """The round's classifier: standardised embeddings reduced to their top `probe_dims` principal components (both
    fitted once on the whole pool, which is unlabelled data the annotator has), L2 logistic regression on the
    labelled rows; probabilities over all k classes."""

    def __init__(self, pool_x: np.ndarray, k: int, config: SimulationConfig) -> None:
        self.mean = pool_x.mean(axis=0)
        self.scale = pool_x.std(axis=0) + 1e-6
        self.basis = None
        if 0 < config.probe_dims < pool_x.shape[1]:
            z = (pool_x - self.mean) / self.scale
            _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            self.basis = vt[:config.probe_dims].T
        self.k = k
        self.config = config

    def standardise(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        return z if self.basis is None else z @ self.basis

    def fit_predict(self, x_fit: np.ndarray, y_fit: np.ndarray, queries: list[np.ndarray], seed: int
                    ) -> list[np.ndarray]:
        """(rows, k) probabilities of each array in `queries` (already standardised)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        present = np.unique(y_fit)
        out = [np.zeros((len(q), self.k)) for q in queries]
        if len(present) == 1:  # one class labelled: the probe can only say that class
            for probs in out:
                probs[:, present[0]] = 1.0
            return out
        model = LogisticRegression(C=self.config.probe_c, max_iter=self.config.probe_iter, tol=1e-3,
                                   class_weight="balanced" if self.config.probe_balanced else None,
                                   random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_fit, y_fit)
        for probs, q in zip(out, queries, strict=True):
            if len(q):
                probs[:, model.classes_] = model.predict_proba(q)
        return out


def _macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    counts = ClassCounts.from_labels(y_true, probs.argmax(axis=1), probs.shape[1])
    return float(headline_scores(counts, ("macro_f1",))["macro_f1"])


def simulate(data: SimulationData, config: SimulationConfig = SimulationConfig(), *,
             progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The learning curves: one row per order, seed and round (`CURVE_COLUMNS`): labels spent (seed set included)
    and the probe's macro-F1 on the evaluation set. `progress(done, total)` is called after each probe fit."""
    config.validate()
    k = len(data.class_names)
    probe = _Probe(data.pool_x, k, config)
    pool_x = probe.standardise(data.pool_x)
    eval_x = probe.standardise(data.eval_x)
    rows: list[tuple[str, int, int, int, float]] = []
    done = 0
    for seed in config.seeds:
        start = seed_set(data.pool_y, data.pool_groups, config.seed_per_class, np.random.default_rng(seed))
        for order in config.orders:
            labelled = np.zeros(len(pool_x), dtype=bool)
            labelled[start] = True
            for round_ in range(config.rounds + 1):
                fit = np.flatnonzero(labelled)
                rest = np.flatnonzero(~labelled)
                eval_probs, pool_probs = probe.fit_predict(pool_x[fit], data.pool_y[fit], [eval_x, pool_x[rest]],
                                                           seed)
                rows.append((order, seed, round_, int(labelled.sum()), _macro_f1(data.eval_y, eval_probs)))
                done += 1
                if progress is not None:
                    progress(done, config.steps)
                if round_ == config.rounds or not len(rest):
                    continue
                view = PoolView(probs=pool_probs, embeddings=data.pool_x[rest],
                                labelled_counts=np.bincount(data.pool_y[fit], minlength=k), novelty=None,
                                labelled_embeddings=data.pool_x[fit])
                try:
                    ranked = rank_pool(order, view, seed=seed * 1_000 + round_, batch=config.batch)
                except AcquisitionError as exc:
                    raise SimulationError(f"order {order!r} cannot rank this pool: {exc}") from exc
                labelled[rest[ranked[:config.batch]]] = True
        logger.info("active-learning simulation: seed %d done (%d of %d probe fits)", seed, done, config.steps)
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def mean_curves(curve: pd.DataFrame) -> pd.DataFrame:
    """Per order and round: mean labels, mean and standard deviation of macro-F1 over seeds, and the seed count."""
    grouped = curve.groupby(["order", "round"], sort=False)
    out = grouped.agg(labels=("labels", "mean"), macro_f1=("macro_f1", "mean"), sd=("macro_f1", "std"),
                      seeds=("seed", "nunique")).reset_index()
    out["sd"] = out["sd"].fillna(0.0)
    return out


def curve_table(curve: pd.DataFrame) -> pd.DataFrame:
    """The learning curves as a wide table: one row per round (labels spent), one column of mean macro-F1 per
    order."""
    means = mean_curves(curve)
    wide = means.pivot(index="round", columns="order", values="macro_f1")
    wide.insert(0, "labels", means.groupby("round")["labels"].mean())
    orders = [o for o in dict.fromkeys(curve["order"]) if o in wide.columns]
    return wide[["labels", *orders]].reset_index()


def labels_to_reach(curve: pd.DataFrame, *, baseline: str = BASELINE) -> pd.DataFrame:
    """Per order: its final mean macro-F1, its mean over rounds (the area under the curve per round, steadier than
    one point on a noisy curve), the labels at which its mean curve first reaches the baseline's final mean
    macro-F1 (NaN if it never does), and that as a share of the baseline's final labels; best share first."""
    if baseline not in set(curve["order"]):
        raise SimulationError(f"the curves hold no {baseline!r} order; run the simulation with it as the baseline")
    means = mean_curves(curve)
    base = means[means["order"] == baseline].sort_values("round")
    target = float(base["macro_f1"].iloc[-1])
    base_labels = float(base["labels"].iloc[-1])
    rows = []
    for order, part in means.groupby("order", sort=False):
        part = part.sort_values("round")
        reached = part[part["macro_f1"] >= target - 1e-12]
        labels = float(reached["labels"].iloc[0]) if len(reached) else np.nan
        rows.append({"order": order, "final_macro_f1": float(part["macro_f1"].iloc[-1]),
                     "mean_macro_f1": float(part["macro_f1"].mean()),
                     "labels_to_reach": labels, "share_of_random": labels / base_labels})
    out = pd.DataFrame(rows).sort_values(["share_of_random", "final_macro_f1"], ascending=[True, False],
                                         na_position="last").reset_index(drop=True)
    out.attrs.update(target=target, baseline_labels=base_labels)
    return out


@cache
def _code_digest() -> str:
    digest = hashlib.sha256()
    for source in (acquisition.__file__, __file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def simulation_key(token: str, config: SimulationConfig) -> str:
    """The disk key (`core.result_cache`) of the curves of the table whose content token (labels, probabilities
    and embeddings) is `token` under `config`; it changes with this module's and core.acquisition's source."""
    return result_key("active-learning", token, repr(config), _code_digest())


def build_learning_curve_figure(curve: pd.DataFrame, *, title: str = "") -> object:
    """A plotly figure: mean macro-F1 (over seeds) against labels spent, one line per order, a band of +-1 sd."""
    import plotly.graph_objects as go

    means = mean_curves(curve)
    fig = go.Figure()
    for order, part in means.groupby("order", sort=False):
        label = ORDERS[order].label if order in ORDERS else str(order)
        fig.add_trace(go.Scatter(
            x=part["labels"], y=part["macro_f1"], mode="lines+markers", name=label,
            line={"dash": "dash" if order == BASELINE else "solid"},
            error_y={"type": "data", "array": part["sd"], "visible": True, "thickness": 1},
            hovertemplate=f"{label}<br>%{{x:.0f}} labels<br>macro-F1 %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=title or None, xaxis_title="labels spent (images)",
                      yaxis=dict(title="macro-F1 (validation)", range=[0, 1.02]), height=420,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50), legend=dict(orientation="h", y=-0.2))
    return fig
