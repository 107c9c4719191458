"""What to label first: the orders an unlabeled pool can be ranked in (uncertainty, diversity, rare-class first,
possibly-unknown first, random), each one entry of `ORDERS`, and `rank_pool` that validates the inputs and ranks.

Every order returns *all* `n` pool indices, most useful first; ties are broken by a seeded random key, so one seed
gives one order. Inputs come as a `PoolView` (pure numpy; the caller picks raw or calibrated probabilities).

- margin: smallest gap between the two most probable classes first (Scheffer et al. 2001).
- entropy: highest predictive entropy first.
- diversity: k-center greedy ("core-set", Sener & Savarese 2018) on L2-normalised embeddings: each pick is the pool
  image farthest from every centre so far (the labelled images' embeddings are the first centres when given), so a
  batch covers the embedding space instead of 50 near-copies. The first `batch` picks are greedy; the rest follow by
  their distance to the chosen centres (farthest first). At most `MAX_REFERENCE` labelled embeddings (a seeded
  sample) seed it; on a large pool (n x (batch + labelled) x d above `EXACT_BUDGET`) the distances are computed on
  the top `PROJECTED_DIM` principal directions, which keeps the ranking to seconds at 100,000 x 512.
- diverse_uncertain: the same greedy with each image's distance weighted by its uncertainty (1 - margin, plus a
  floor of `UNCERTAINTY_FLOOR` so a confident outlier is still reachable): far *and* uncertain first.
- rare_first: the predicted class's count in the labelled set, rarest first; ties by margin (uncertain first).
- unknown_first: the novelty score, highest first. Without a given score: the k-NN cosine distance to the labelled
  embeddings (`core.novelty.knn_distance`; sampled and projected as for diversity on a large pool) where both
  embeddings exist, else max-softmax (as the review queue's "possibly unknown" score falls back,
  `core.novelty.queue_score`).
- random: a seeded permutation, the baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import entr

from core.errors import TaxaLensError
from core.novelty import knn_distance
from core.predictions import PredictionTable

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 1_000  # greedy k-center picks when the caller names no labelling batch
EXACT_BUDGET = 2_000_000_000  # n x (picks or references) x d above which distances use `PROJECTED_DIM` directions
PROJECTED_DIM = 32  # principal directions kept for a large pool's distances
PCA_FIT_ROWS = 20_000  # rows the projection is fitted on (a seeded sample of a larger pool)
MAX_REFERENCE = 2_000  # labelled embeddings k-center starts from and unknown_first measures against (a seeded sample)
UNCERTAINTY_FLOOR = 0.05  # added to 1 - margin in diverse_uncertain
_EPS = 1e-12
INPUTS = ("embeddings", "novelty", "labelled_embeddings")  # what an order may need beyond probabilities and counts


class AcquisitionError(TaxaLensError, ValueError):
    """A pool that cannot be ranked as asked; the message names the order or input at fault and the fix."""


@dataclass(frozen=True)
class PoolView:
    """What an order may look at, for `n` unlabeled images and `k` classes."""

    probs: np.ndarray  # (n, k) float probabilities (raw or calibrated); rows sum to about 1
    embeddings: np.ndarray | None  # (n, d) stored embeddings, or None
    labelled_counts: np.ndarray  # (k,) images per class already labelled (the curated/labelled set)
    novelty: np.ndarray | None  # (n,) "possibly unknown" score (higher = more novel), or None
    labelled_embeddings: np.ndarray | None = None  # (m, d) embeddings of labelled images (diversity), or None

    @property
    def n(self) -> int:
        return int(self.probs.shape[0])

    def has(self, name: str) -> bool:
        """Whether the optional input `name` (one of `INPUTS`) is present and non-empty."""
        value = getattr(self, name)
        return value is not None and value.size > 0


@dataclass(frozen=True)
class AcquisitionOrder:
    """One way to rank a pool (an entry of `ORDERS`)."""

    name: str  # registry key
    label: str  # short name a page shows
    help: str  # one sentence: what comes first
    needs: frozenset[str]  # optional inputs (of `INPUTS`) it cannot do without; the UI disables it otherwise
    rank: Callable[..., np.ndarray]  # (view, rng[, batch]) -> all n indices, most useful first
    uses_batch: bool = False  # True: `rank` takes the labelling batch size as a third argument


# --- scores -------------------------------------------------------------------------------------------------------


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """(n,) top-1 minus top-2 probability of `probs` `(n, k)`; smaller = more uncertain (1.0 when k == 1)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """(n,) Shannon entropy (nats) of each row of `probs` `(n, k)`; larger = more uncertain."""
    return entr(np.clip(probs, 0.0, None)).sum(axis=1, dtype=np.float64)  # entr(p) = -p log p, 0 at p = 0


def _order_by(score: np.ndarray, rng: np.random.Generator, *, descending: bool = False) -> np.ndarray:
    """Indices by `score` (ascending unless `descending`); ties in seeded random order."""
    key = -score if descending else score
    return np.lexsort((rng.random(len(score)), key))


def _rank_margin(view: PoolView, rng: np.random.Generator) -> np.ndarray:
    return _order_by(margin_scores(view.probs), rng)


def _rank_entropy(view: PoolView, rng: np.random.Generator) -> np.ndarray:
    return _order_by(entropy_scores(view.probs), rng, descending=True)


def _rank_random(view: PoolView, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(view.n)


def _rank_rare_first(view: PoolView, rng: np.random.Generator) -> np.ndarray:
    predicted = view.probs.argmax(axis=1)
    frequency = np.asarray(view.labelled_counts, dtype=np.float64)[predicted]
    return np.lexsort((rng.random(view.n), margin_scores(view.probs), frequency))


def pool_novelty(view: PoolView, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n,) the score unknown_first sorts by (higher = more novel): the given `novelty`, else the k-NN cosine
    distance to the labelled embeddings (at most `MAX_REFERENCE` of them, a seeded sample; on `PROJECTED_DIM`
    principal directions when n x m x d exceeds `EXACT_BUDGET`), else max-softmax (see the module docstring)."""
    if view.has("novelty"):
        return np.asarray(view.novelty, dtype=np.float64)
    if view.has("embeddings") and view.has("labelled_embeddings") and len(view.labelled_embeddings) > 1:
        rng = rng if rng is not None else np.random.default_rng(0)
        x, reference = _normalised(view.embeddings), _normalised(_reference(view.labelled_embeddings, rng))
        if len(x) * len(reference) * x.shape[1] > EXACT_BUDGET and x.shape[1] > PROJECTED_DIM:
            x, reference = _project(x, reference, PROJECTED_DIM, rng)
        return knn_distance(x, reference)
    return -view.probs.max(axis=1).astype(np.float64)


def _rank_unknown_first(view: PoolView, rng: np.random.Generator) -> np.ndarray:
    return _order_by(pool_novelty(view, rng), rng, descending=True)


# --- k-center greedy -----------------------------------------------------------------------------------------------


def _reference(labelled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`labelled`, or a seeded sample of `MAX_REFERENCE` of its rows when it has more (a labelled set of 100,000
    would make the distances to it cost more than the ranking)."""
    if len(labelled) <= MAX_REFERENCE:
        return labelled
    return labelled[np.sort(rng.choice(len(labelled), MAX_REFERENCE, replace=False))]


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + _EPS)


def _project(pool: np.ndarray, labelled: np.ndarray | None, dim: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """`pool` and `labelled` on the top `dim` eigenvectors of the pool's (uncentred) second-moment matrix, fitted
    on a seeded sample: the best rank-`dim` approximation of the rows themselves, so both their distances and their
    cosines (which centring would change) are kept as far as `dim` directions can."""
    fit = pool if len(pool) <= PCA_FIT_ROWS else pool[rng.choice(len(pool), PCA_FIT_ROWS, replace=False)]
    _, vectors = np.linalg.eigh(fit.T @ fit)
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :dim], dtype=np.float32)
    return pool @ basis, None if labelled is None else labelled @ basis


def k_center_greedy(embeddings: np.ndarray, *, batch: int, rng: np.random.Generator,
                    labelled: np.ndarray | None = None, weights: np.ndarray | None = None,
                    chunk: int = 4096) -> np.ndarray:
    """All `n` indices of `embeddings` `(n, d)`: the first `batch` by k-center greedy on L2-normalised rows (each
    pick maximises its distance to the nearest centre so far, times `weights` `(n,)` when given), seeded from
    `labelled` `(m, d)` when given (at most `MAX_REFERENCE` of them, a seeded sample; else the first pick is drawn
    at random); then the rest by that distance, largest first. Exact distances while n x (batch + m) x d <=
    `EXACT_BUDGET`, else on `PROJECTED_DIM` principal directions."""
    x = _normalised(embeddings)
    centres = None if labelled is None or len(labelled) == 0 else _normalised(_reference(labelled, rng))
    n, d = x.shape
    batch = max(0, min(int(batch), n))
    m = 0 if centres is None else len(centres)
    if n * (batch + m) * d > EXACT_BUDGET and d > PROJECTED_DIM:
        logger.info("k-center on %d x %d with %d picks and %d labelled: distances on %d principal directions", n,
                    d, batch, m, PROJECTED_DIM)
        x, centres = _project(x, centres, PROJECTED_DIM, rng)
    sq_norms = np.einsum("ij,ij->i", x, x)
    min_dist = np.full(n, np.inf, dtype=np.float32)
    if centres is not None:
        centre_norms = np.einsum("ij,ij->i", centres, centres)
        for start in range(0, n, chunk):
            block = x[start:start + chunk]
            d2 = sq_norms[start:start + chunk, None] - 2.0 * block @ centres.T + centre_norms[None, :]
            min_dist[start:start + chunk] = np.maximum(d2.min(axis=1), 0.0)
    gain_weight = None if weights is None else np.asarray(weights, dtype=np.float32)
    xt = np.ascontiguousarray(x.T, dtype=np.float32)  # (d, n): a row vector times it streams memory faster
    picked = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    gain = min_dist if gain_weight is None else np.empty(n, dtype=np.float32)
    step_dist = np.empty(n, dtype=np.float32)
    for step in range(batch):  # in-place float32 passes: one matvec and five vector operations per pick
        if step == 0 and centres is None:
            choice = int(rng.integers(n)) if gain_weight is None else int(np.argmax(gain_weight))
        else:
            if gain_weight is not None:
                np.multiply(min_dist, gain_weight, out=gain)
            choice = int(np.argmax(gain))
        order[step] = choice
        picked[choice] = True
        centre = x[choice]
        np.matmul(centre, xt, out=step_dist)  # squared distance = |x|^2 - 2 x.c + |c|^2
        step_dist *= -2.0
        step_dist += sq_norms
        step_dist += float(centre @ centre)
        np.minimum(min_dist, step_dist, out=min_dist)
        min_dist[choice] = -np.inf  # picked: never the farthest again (weights are positive)
    rest = np.flatnonzero(~picked)
    if len(rest):
        gain = np.where(np.isfinite(min_dist[rest]), min_dist[rest], 0.0)
        if gain_weight is not None:
            gain = gain * gain_weight[rest]
        order[batch:] = rest[np.lexsort((rng.random(len(rest)), -gain))]
    return order


def _rank_diversity(view: PoolView, rng: np.random.Generator, batch: int = DEFAULT_BATCH) -> np.ndarray:
    return k_center_greedy(view.embeddings, batch=batch, rng=rng, labelled=view.labelled_embeddings)


def _rank_diverse_uncertain(view: PoolView, rng: np.random.Generator, batch: int = DEFAULT_BATCH) -> np.ndarray:
    weights = 1.0 - margin_scores(view.probs) + UNCERTAINTY_FLOOR
    return k_center_greedy(view.embeddings, batch=batch, rng=rng, labelled=view.labelled_embeddings,
                           weights=weights)


# One declarative table the pages, the CLI and the simulation read; a new order is one entry.
ORDERS: dict[str, AcquisitionOrder] = {
    order.name: order for order in (
        AcquisitionOrder("margin", "Uncertain (margin)",
                         "the images whose two most probable classes are closest first", frozenset(), _rank_margin),
        AcquisitionOrder("entropy", "Uncertain (entropy)",
                         "the images with the most spread-out class probabilities first", frozenset(), _rank_entropy),
        AcquisitionOrder("diversity", "Diverse (k-center)",
                         "each next image the farthest, in the embedding space, from everything labelled or picked "
                         "so far, so a batch is not near-copies", frozenset({"embeddings"}), _rank_diversity,
                         uses_batch=True),
        AcquisitionOrder("diverse_uncertain", "Diverse and uncertain",
                         "k-center greedy with each image's distance weighted by its uncertainty (1 - margin)",
                         frozenset({"embeddings"}), _rank_diverse_uncertain, uses_batch=True),
        AcquisitionOrder("rare_first", "Rare classes first",
                         "the images predicted as the classes with the fewest labelled images first, uncertain "
                         "ones first within a class", frozenset(), _rank_rare_first),
        AcquisitionOrder("unknown_first", "Possibly unknown first",
                         "the images least like any known class first (novelty score)", frozenset(),
                         _rank_unknown_first),
        AcquisitionOrder("random", "Random", "a seeded random order (the baseline)", frozenset(), _rank_random),
    )
}


def pool_view(probs: np.ndarray, embeddings: np.ndarray | None, labelled: PredictionTable, *,
              novelty: np.ndarray | None = None, split: str | None = "train") -> PoolView:
    """The `PoolView` of a pool predicted as `probs` `(n, k)` (and `embeddings` `(n, d)`), where the labelled set
    is `labelled`'s rows of `split` with a known label (every split when `split` is None or has no such row):
    their class counts and, when their width matches, their embeddings."""
    known = labelled.frame["label_idx"].to_numpy() >= 0
    rows = known & (labelled.frame["split"].to_numpy() == split) if split else known
    rows = rows if rows.any() else known
    counts = np.bincount(labelled.frame["label_idx"].to_numpy()[rows], minlength=len(labelled.class_names))
    reference = labelled.embeddings[rows]
    usable = (embeddings is not None and np.ndim(embeddings) == 2 and reference.shape[1] > 0
              and reference.shape[1] == np.shape(embeddings)[1])
    empty = embeddings is None or np.ndim(embeddings) != 2 or np.shape(embeddings)[1] == 0
    return PoolView(probs=probs, embeddings=None if empty else embeddings, labelled_counts=counts, novelty=novelty,
                    labelled_embeddings=reference if usable else None)


# --- the public edge -----------------------------------------------------------------------------------------------


def missing_inputs(order: str, view: PoolView) -> list[str]:
    """The inputs `order` needs that `view` lacks (empty: it can rank)."""
    return [name for name in sorted(_order(order).needs) if not view.has(name)]


def available_orders(view: PoolView) -> list[str]:
    """The names of the orders `view` has every input for, in registry order."""
    return [name for name in ORDERS if not missing_inputs(name, view)]


def _order(order: str) -> AcquisitionOrder:
    if order not in ORDERS:
        raise AcquisitionError(f"unknown acquisition order {order!r}; use one of {', '.join(ORDERS)}")
    return ORDERS[order]


def _validate(view: PoolView) -> None:
    probs = np.asarray(view.probs)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise AcquisitionError(f"pool probabilities must be an (n, k) array with k >= 1, got shape {probs.shape}; "
                               "pass the predictions' probability matrix")
    if not np.issubdtype(probs.dtype, np.number) or not np.isfinite(probs).all() or (probs < 0).any():
        raise AcquisitionError("pool probabilities hold NaN, infinite or negative values; recompute the pool's "
                               "predictions (`python -m core predict`)")
    n, k = probs.shape
    counts = np.asarray(view.labelled_counts)
    if counts.shape != (k,) or (counts < 0).any():
        raise AcquisitionError(f"labelled_counts must be ({k},) non-negative counts (one per class of the "
                               f"probabilities), got shape {counts.shape}")
    if view.embeddings is not None and (np.ndim(view.embeddings) != 2 or len(view.embeddings) != n):
        raise AcquisitionError(f"pool embeddings must be ({n}, d) like the probabilities, got shape "
                               f"{np.shape(view.embeddings)}; use the embeddings of the same predictions table")
    if view.novelty is not None and np.shape(view.novelty) != (n,):
        raise AcquisitionError(f"novelty must be ({n},) one score per pool image, got shape {np.shape(view.novelty)}")
    if view.novelty is not None and not np.isfinite(view.novelty).all():
        raise AcquisitionError("novelty holds NaN or infinite scores; compute them with core.novelty on a table "
                               "that has embeddings, or pass novelty=None")
    if view.labelled_embeddings is not None and view.has("labelled_embeddings"):
        width = np.shape(view.embeddings)[1] if view.embeddings is not None else None
        shape = np.shape(view.labelled_embeddings)
        if len(shape) != 2 or (width is not None and shape[1] != width):
            raise AcquisitionError(f"labelled_embeddings must be (m, {width}) like the pool's embeddings, got "
                                   f"shape {shape}; take both from predictions of one checkpoint")


def rank_pool(order: str, view: PoolView, *, seed: int = 0, batch: int | None = None) -> np.ndarray:
    """All `n` pool indices `(n,)` int64, most useful first by `order` (a key of `ORDERS`).

    `seed`: ties (and random, and the first k-center pick without labelled embeddings) follow it. `batch`: the
    labelling batch size; the diversity orders pick this many greedily (default `DEFAULT_BATCH`), the others ignore
    it. Raises `AcquisitionError` for an unknown order, an input the order needs that `view` lacks, or bad shapes.
    """
    spec = _order(order)
    _validate(view)
    missing = missing_inputs(order, view)
    if missing:
        raise AcquisitionError(f"the {order!r} order needs {', '.join(missing)}, which this pool lacks; recompute "
                               "the pool's predictions so they carry embeddings (`python -m core predict`) or "
                               f"pick one of {', '.join(available_orders(view))}")
    if batch is not None and batch < 1:
        raise AcquisitionError(f"batch={batch}: the labelling batch must be at least 1 image")
    rng = np.random.default_rng(seed)
    if view.n == 0:
        return np.empty(0, dtype=np.int64)
    if spec.uses_batch:
        ranked = spec.rank(view, rng, DEFAULT_BATCH if batch is None else batch)
    else:
        ranked = spec.rank(view, rng)
    return np.asarray(ranked, dtype=np.int64)
