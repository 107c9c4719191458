"""Review queues: likely label errors first (cleanlab on out-of-sample probabilities), plus cell, class and confidence.

Only out-of-sample probabilities are ranked: validation/test predictions as they are, and training rows only from
cross-validated probabilities (`cv_table`, e.g. computed over `grouped_folds`). In-sample training probabilities
are memorised labels and would hide exactly the errors we look for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.predictions import PredictionTable, table_token

QUEUE_KINDS = ("likely_errors", "confusion_cell", "class", "low_confidence", "not_reviewed_by_me", "possibly_unknown",
               "selection", "image_quality")
LISTED_KINDS = ("selection", "image_quality")  # queues of the sample ids a page handed over (`QueueSpec.sample_ids`)
OUT_OF_SAMPLE_SPLITS = ("val", "test")
MIN_CLASS_SAMPLES = 5
KNN_BUDGET = 2_000_000_000  # query x reference pairs above which the embedding kNN is skipped
RANKING_COLUMNS = ("rank", "sample_id", "split", "specimen_id", "label", "suggested", "label_quality",
                   "is_label_issue", "given_prob", "suggested_prob", "rare_class", "source")


@dataclass(frozen=True)
class LabelIssueRanking:
    """Samples ordered by how likely their label is wrong (flagged issues first, then by label quality)."""

    frame: pd.DataFrame  # RANKING_COLUMNS; rank 1 = most suspicious; unscorable rows (label not a model class) last
    class_names: tuple[str, ...]  # the model's classes
    rare_classes: dict[str, int]  # class -> ranked samples, for classes below `min_class_samples`
    messages: tuple[str, ...]  # what was left out and why, unreliable classes, cleanlab's warnings

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class QueueSpec:
    """Which review queue to build."""

    kind: str = "likely_errors"  # one of QUEUE_KINDS
    true_label: str | None = None  # confusion_cell: the given label (row of the confusion matrix)
    pred_label: str | None = None  # confusion_cell: the predicted class (column)
    class_name: str | None = None  # class: samples whose given label is this class
    hide_reviewed: bool = False  # drop samples the reviewer already decided (any kind)
    only_flagged: bool = False  # likely_errors: only samples cleanlab flags, not the whole ranking
    sample_ids: tuple[str, ...] = ()  # selection (lassoed on the map), image_quality (flagged images): the samples


def grouped_folds(frame: pd.DataFrame, *, n_splits: int = 5, seed: int = 0, label_column: str = "label",
                  group_column: str = "specimen_id") -> np.ndarray:
    """Fold index (0..n_splits-1) per row for cross-validated probabilities, keeping each specimen in one fold.

    `frame`: one row per image with `label_column` and `group_column` (a specimen's images share its id).
    Folds are stratified by label as far as whole specimens allow (sklearn `StratifiedGroupKFold`).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    for column in (label_column, group_column):
        if column not in frame.columns:
            raise ValueError(f"grouped_folds needs column {column!r}; found {list(frame.columns)}")
    n_groups = frame[group_column].nunique()
    if n_splits < 2 or n_splits > n_groups:
        raise ValueError(f"n_splits={n_splits} must be between 2 and the number of specimens ({n_groups})")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(frame), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(frame)), frame[label_column].to_numpy(),
                                                            frame[group_column].to_numpy())):
            folds[held_out] = fold
    return folds


def out_of_sample_table(table: PredictionTable, *, cv_table: PredictionTable | None = None,
                        ) -> tuple[PredictionTable, tuple[str, ...]]:
    """The rows of `table` whose probabilities are out-of-sample, with training rows taken from `cv_table`.

    Returns the table (a `source` column says `holdout` or `cv`) and messages about what was left out.
    """
    messages: list[str] = []
    is_holdout = table.frame["split"].isin(OUT_OF_SAMPLE_SPLITS).to_numpy()
    n_train = int((~is_holdout).sum())
    holdout = table.subset(is_holdout)
    parts = [(holdout, "holdout")]
    if cv_table is not None:
        if tuple(cv_table.class_names) != tuple(table.class_names):
            raise ValueError(f"cv_table has classes {list(cv_table.class_names)[:5]}... but the predictions have "
                             f"{list(table.class_names)[:5]}...; compute both with the same class list")
        wanted = set(table.frame.loc[~is_holdout, "sample_id"])
        cv_rows = cv_table.subset(cv_table.frame["sample_id"].isin(wanted).to_numpy())
        parts.append((cv_rows, "cv"))
        if len(cv_rows) < n_train:
            messages.append(f"{n_train - len(cv_rows)} training sample(s) have no cross-validated probabilities "
                            "and are not ranked")
    elif n_train:
        messages.append(f"{n_train} training-split sample(s) are not ranked: their probabilities are in-sample "
                        "(the model memorised their labels). Compute cross-validated probabilities over "
                        "`core.ranking.grouped_folds` to rank them (`python -m core crossval`, or "
                        "\"Out-of-sample probabilities\" below).")
    frames = [part.frame.assign(source=source) for part, source in parts]
    widths = {part.embeddings.shape[1] for part, _ in parts}
    n_rows = sum(len(part) for part, _ in parts)
    combined = PredictionTable(
        frame=pd.concat(frames, ignore_index=True),
        # one part (no cross-validated rows): converted once, not concatenated first (a copy fewer at 1M rows)
        pred_probs=parts[0][0].pred_probs.astype(np.float32, copy=False) if len(parts) == 1
        else np.concatenate([part.pred_probs for part, _ in parts]).astype(np.float32, copy=False),
        # embeddings of the two sources may differ in width; ranking does not need them then
        embeddings=np.concatenate([part.embeddings for part, _ in parts]) if len(widths) == 1
        else np.zeros((n_rows, 0), dtype=np.float32),
        class_names=table.class_names,
        meta=table.meta,
    )
    return combined, tuple(messages)


def knn_pred_probs(query: PredictionTable, reference: PredictionTable, *, k: int = 15,
                   chunk: int = 1024) -> np.ndarray:
    """Class probabilities `(N, K)` from the given labels of each query row's `k` nearest reference rows.

    Neighbours by cosine similarity of the embeddings, weighted by similarity; a row never counts its own specimen
    (so a training row is not its own neighbour). Smoothed towards uniform (10%) so no class has probability 0.
    """
    if query.embeddings.shape[1] == 0 or query.embeddings.shape[1] != reference.embeddings.shape[1]:
        raise ValueError("kNN probabilities need embeddings of the same width in both tables")
    usable = reference.frame["label_idx"].to_numpy() >= 0
    ref = reference.embeddings[usable].astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True) + 1e-12
    ref_labels = reference.frame["label_idx"].to_numpy()[usable]
    ref_specimens = reference.frame["specimen_id"].to_numpy()[usable]
    n_classes = len(query.class_names)
    k = min(k, len(ref) - 1) if len(ref) > 1 else 0
    probs = np.full((len(query), n_classes), 1.0 / n_classes, dtype=np.float32)
    if k <= 0:
        return probs
    specimens = query.frame["specimen_id"].to_numpy()
    for start in range(0, len(query), chunk):
        emb = query.embeddings[start:start + chunk].astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        sims = emb @ ref.T
        sims[specimens[start:start + chunk, None] == ref_specimens[None, :]] = -np.inf
        nearest = np.argpartition(-sims, k, axis=1)[:, :k]
        weights = np.clip(np.take_along_axis(sims, nearest, axis=1), 0.0, None) + 1e-6
        votes = np.zeros((len(emb), n_classes), dtype=np.float32)
        np.add.at(votes, (np.repeat(np.arange(len(emb)), k), ref_labels[nearest].ravel()), weights.ravel())
        probs[start:start + chunk] = 0.9 * votes / votes.sum(axis=1, keepdims=True) + 0.1 / n_classes
    return probs


def rank_label_issues(
    table: PredictionTable,
    *,
    cv_table: PredictionTable | None = None,
    reference: PredictionTable | None = None,
    knn_weight: float = 0.5,
    method: str = "normalized_margin",
    filter_by: str = "prune_by_noise_rate",
    min_class_samples: int = MIN_CLASS_SAMPLES,
) -> LabelIssueRanking:
    """Rank the out-of-sample rows of `table` by how likely their given label is wrong.

    Uses `cleanlab.filter.find_label_issues` (which samples are likely mislabelled, `filter_by`) and
    `cleanlab.rank.get_label_quality_scores` (`method`: normalized_margin (default), self_confidence or
    confidence_weighted_entropy; lower = more suspicious). Flagged samples come first, each group by ascending
    quality. normalized_margin (given-class probability minus the best other class's) puts first the samples whose
    model confidently prefers another class, ahead of those it is merely unsure about.
    The probabilities ranked are the model's blended with kNN probabilities from the embeddings (`knn_weight`, the
    given labels of the nearest `reference` rows, default the table's training rows, never the row's own specimen;
    holdout rows only, as cross-validated rows come from other models' embedding spaces):
    a small, briefly trained head often lags its features (demo: head 60% accurate, kNN on its embeddings 93%), and
    the blend found 9-10 of the 10 validation flips in the top 10 on two demo builds where the head alone found 1-9.
    Classes with fewer than `min_class_samples` ranked samples are reported in `rare_classes`: cleanlab's per-class
    noise estimates are unreliable there, so review them in full (class queue).
    """
    if method not in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        raise ValueError(f"method={method!r}; use self_confidence, normalized_margin or confidence_weighted_entropy")
    if not 0.0 <= knn_weight <= 1.0:
        raise ValueError(f"knn_weight={knn_weight}; use a share in [0, 1] (0: the model's probabilities only)")
    ranked, messages = out_of_sample_table(table, cv_table=cv_table)
    messages = list(messages)
    reference = reference if reference is not None else table.for_split("train")
    if knn_weight > 0 and len(ranked):
        ranked = _blend_knn(ranked, reference, knn_weight, messages)
    return _rank(ranked, messages, method=method, filter_by=filter_by, min_class_samples=min_class_samples)


def _blend_knn(ranked: PredictionTable, reference: PredictionTable, weight: float,
               messages: list[str]) -> PredictionTable:
    width = ranked.embeddings.shape[1]
    if width == 0 or reference.embeddings.shape[1] != width or len(reference) < 2:
        messages.append("ranked on the model's probabilities alone (no embeddings or no labelled training rows "
                        "to find neighbours among)")
        return ranked
    if len(ranked) * len(reference) > KNN_BUDGET:
        messages.append(f"ranked on the model's probabilities alone: {len(ranked):,} x {len(reference):,} "
                        "neighbour comparisons exceed the budget")
        return ranked
    # Only holdout rows share the reference's embedding space; cross-validated rows come from fold models.
    holdout = (ranked.frame["source"] == "holdout").to_numpy() if "source" in ranked.frame.columns \
        else np.ones(len(ranked), dtype=bool)
    probs = ranked.pred_probs.copy()
    if holdout.any():
        knn = knn_pred_probs(ranked.subset(holdout), reference)
        probs[holdout] = (1 - weight) * probs[holdout] + weight * knn
    return PredictionTable(ranked.frame, probs.astype(np.float32), ranked.embeddings, ranked.class_names,
                           ranked.meta)


def _rank(table: PredictionTable, messages: list[str], *, method: str, filter_by: str,
          min_class_samples: int) -> LabelIssueRanking:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    frame = table.frame
    n, k = table.pred_probs.shape
    labels = frame["label_idx"].to_numpy(dtype=np.int64)
    scorable = labels >= 0
    if (~scorable).any():
        unknown = sorted(frame.loc[~scorable, "label"].unique())
        messages.append(f"{int((~scorable).sum())} sample(s) carry labels the model does not know ({unknown[:5]}); "
                        "they cannot be scored and are listed last")
    probs = table.pred_probs if scorable.all() else table.pred_probs[scorable]  # no copy when every row scores
    y = labels[scorable]
    quality = np.full(n, np.nan)
    flagged = np.zeros(n, dtype=bool)
    if len(y):
        quality[scorable] = get_label_quality_scores(y, probs, method=method)
        if len(np.unique(y)) >= 2 and len(y) >= k:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                flagged[scorable] = find_label_issues(y, probs, filter_by=filter_by, n_jobs=1)
            for warning in caught:
                if issubclass(warning.category, UserWarning) and "too few examples" not in str(warning.message):
                    messages.append(f"cleanlab: {warning.message}")
        else:
            messages.append(f"only {len(y)} scorable sample(s) in {len(np.unique(y))} class(es): too few for "
                            "cleanlab's issue filter; ordered by label quality alone")
    counts = pd.Series(frame.loc[scorable, "label"]).value_counts()
    rare = {str(c): int(counts.get(c, 0)) for c in table.class_names if 0 < counts.get(c, 0) < min_class_samples}
    if rare:
        listed = ", ".join(f"{c} ({m})" for c, m in sorted(rare.items(), key=lambda kv: kv[1]))
        messages.append(f"ranking is unreliable for classes with fewer than {min_class_samples} ranked samples: "
                        f"{listed}; review these classes in full (class queue)")
    rows = np.arange(n)
    suggested_idx = table.pred_probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    given_prob = np.where(scorable, table.pred_probs[rows, np.clip(labels, 0, None)] if n else 0.0, np.nan)
    out = pd.DataFrame({
        "sample_id": frame["sample_id"].to_numpy(),
        "split": frame["split"].to_numpy(),
        "specimen_id": frame["specimen_id"].to_numpy(),
        "label": frame["label"].to_numpy(),
        "suggested": [table.class_names[i] for i in suggested_idx],
        "label_quality": quality,
        "is_label_issue": flagged,
        "given_prob": given_prob,
        "suggested_prob": table.pred_probs[rows, suggested_idx] if n else np.zeros(0),
        "rare_class": frame["label"].isin(list(rare)).to_numpy(),
        "source": frame["source"].to_numpy() if "source" in frame.columns else "holdout",
    })
    # flagged first, then by quality (NaN = unscorable last); sample_id breaks ties deterministically
    order = np.lexsort((out["sample_id"].to_numpy(), np.nan_to_num(quality, nan=np.inf), ~flagged, ~scorable))
    out = out.iloc[order].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, n + 1))
    return LabelIssueRanking(out, tuple(table.class_names), rare, tuple(messages))


def ranking_code_version() -> str:
    """sha256 (16 hex) of this module's source and the cleanlab version: part of a stored ranking's key, so a
    change to the ranking never serves an old one."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(version("cleanlab").encode())
    return digest.hexdigest()[:16]


def label_issue_key(table_token: str, reference_token: str, crossval_key: str) -> str:
    """The on-disk key of a stored ranking: the ranked table's content token, its kNN reference's, the
    cross-validated table's key and the ranking code (`ranking_code_version`)."""
    import hashlib
    import json

    # not core.result_cache.result_key: that one covers the interval code, which a ranking does not depend on
    blob = json.dumps([table_token, reference_token, crossval_key, ranking_code_version()])
    return f"label-issues-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def reference_token(full: PredictionTable, split: str = "train") -> str:
    """The content token of `full`'s `split` rows (a kNN reference, `rank_label_issues(reference=...)`) without
    slicing them out: `full`'s own `table_token`, the split's name and which rows are in it. Slicing 700,000 training
    rows of a million x 1,000 table only to hash them took 3.4 s; this reads three columns and the split's mask.
    A changed table or a changed split assignment changes it."""
    import hashlib

    in_split = (full.frame["split"] == split).to_numpy(dtype=bool)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(table_token(full, "reference", split).encode())
    digest.update(np.packbits(in_split).tobytes())
    return digest.hexdigest()


def cached_label_issues(folder: Path | None, key: str, table: PredictionTable, *,
                        reference: PredictionTable | Callable[[], PredictionTable | None] | None = None,
                        cv_table: PredictionTable | None = None) -> LabelIssueRanking:
    """`rank_label_issues(table, reference=..., cv_table=...)`, read from `folder` when stored under `key`
    (`label_issue_key`), else computed and stored there (Parquet through `core.result_cache`): a restarted server
    reads the ranking instead of running cleanlab again (a minute and gigabytes at a million images).
    `reference` may be a function returning it, called only when the ranking is computed (`reference_token` keys
    it without slicing its rows)."""
    from core.result_cache import cached_result

    def compute() -> pd.DataFrame:
        ref = reference() if callable(reference) else reference
        return ranking_as_frame(rank_label_issues(table, reference=ref, cv_table=cv_table))

    try:
        return ranking_from_frame(cached_result(folder, key, compute))
    except ValueError:  # a damaged or foreign file under the key: rank again
        return ranking_from_frame(compute())


def ranking_as_frame(ranking: LabelIssueRanking) -> pd.DataFrame:
    """`ranking` as one DataFrame for the on-disk result cache (Parquet, no pickle): its frame, with the class names,
    rare classes and messages in `attrs` (pandas keeps them in the Parquet metadata). `ranking_from_frame` reads it
    back."""
    frame = ranking.frame.copy(deep=False)
    frame.attrs = {"class_names": list(ranking.class_names), "rare_classes": dict(ranking.rare_classes),
                   "messages": list(ranking.messages)}
    return frame


def ranking_from_frame(frame: pd.DataFrame) -> LabelIssueRanking:
    """The `LabelIssueRanking` that `ranking_as_frame` stored; `ValueError` when `frame` is not one."""
    attrs = frame.attrs
    missing = {"class_names", "rare_classes", "messages"} - set(attrs)
    if missing or list(frame.columns) != list(RANKING_COLUMNS):
        raise ValueError(f"not a stored label-issue ranking (attrs missing {sorted(missing)}, columns "
                         f"{list(frame.columns)})")
    plain = frame.copy(deep=False)
    plain.attrs = {}
    rare = {str(k): int(v) for k, v in attrs["rare_classes"].items()}
    return LabelIssueRanking(plain, tuple(attrs["class_names"]), rare, tuple(attrs["messages"]))


def build_queue(ranking: LabelIssueRanking, spec: QueueSpec, *, reviewed_by_me: Collection[str] = (),
                novelty: pd.Series | None = None) -> pd.DataFrame:
    """The samples of one review queue, in review order (a slice of `ranking.frame`, `rank` kept).

    `reviewed_by_me`: sample ids the current reviewer already decided (`LabelStore.reviewed_by`); used by the
    `not_reviewed_by_me` queue and by `hide_reviewed`. `novelty`: sample_id -> novelty score (higher: more likely
    of no known class; `core.novelty.queue_score`), needed by the `possibly_unknown` queue (most novel first; rows
    without a score are left out).
    """
    if spec.kind not in QUEUE_KINDS:
        raise ValueError(f"queue kind {spec.kind!r} is not one of {list(QUEUE_KINDS)}")
    frame = ranking.frame
    if spec.kind == "likely_errors":
        queue = frame[frame["is_label_issue"]] if spec.only_flagged else frame
    elif spec.kind == "confusion_cell":
        if spec.true_label is None or spec.pred_label is None:
            raise ValueError("a confusion_cell queue needs true_label (given) and pred_label (predicted); pick a cell "
                             "on the confusion page")
        queue = frame[(frame["label"] == spec.true_label) & (frame["suggested"] == spec.pred_label)]
        queue = queue.sort_values(["label_quality", "rank"], na_position="last")
    elif spec.kind == "class":
        if spec.class_name is None:
            raise ValueError("a class queue needs class_name")
        queue = frame[frame["label"] == spec.class_name]
    elif spec.kind == "low_confidence":
        queue = frame.sort_values(["suggested_prob", "rank"], kind="stable")
    elif spec.kind in LISTED_KINDS:
        queue = frame[frame["sample_id"].isin(set(spec.sample_ids))]  # in ranking order: likely errors first
    elif spec.kind == "possibly_unknown":
        if novelty is None:
            raise ValueError("a possibly_unknown queue needs novelty scores (core.novelty.table_novelty)")
        queue = frame.assign(novelty=frame["sample_id"].map(novelty)).dropna(subset=["novelty"])
        queue = queue.sort_values(["novelty", "rank"], ascending=[False, True], kind="stable")
    else:
        queue = frame
    reviewed = set(reviewed_by_me)
    if reviewed and (spec.hide_reviewed or spec.kind == "not_reviewed_by_me"):
        queue = queue[~queue["sample_id"].isin(reviewed)]
    return queue.reset_index(drop=True)


def build_review_queue(table: PredictionTable, store: Any, spec: QueueSpec, *, reviewer: str | None = None,
                       cv_table: PredictionTable | None = None) -> tuple[pd.DataFrame, LabelIssueRanking]:
    """Rank `table` and build the queue; `store` (a `LabelStore`) supplies what `reviewer` already decided."""
    ranking = rank_label_issues(table, cv_table=cv_table)
    reviewed = store.reviewed_by(reviewer) if reviewer and store is not None else set()
    if spec.kind == "not_reviewed_by_me" and not reviewer:
        raise ValueError("the not_reviewed_by_me queue needs a reviewer identity")
    return build_queue(ranking, spec, reviewed_by_me=reviewed), ranking


def typical_examples(table: PredictionTable, class_name: str, *, n: int = 6,
                     exclude: Collection[str] = ()) -> pd.DataFrame:
    """Up to `n` correctly classified samples of `class_name`, most confident first (what the class looks like).

    Rows of `table.frame`; `exclude`: sample ids to leave out (e.g. the sample under review).
    """
    frame = table.frame
    mask = (frame["label"] == class_name) & (frame["pred"] == class_name) & ~frame["sample_id"].isin(list(exclude))
    return frame[mask].sort_values(["confidence", "sample_id"], ascending=[False, True]).head(n)


def precision_at_k(ranking: LabelIssueRanking, true_issues: Collection[str], *, k: int | None = None) -> float:
    """Share of the top-k ranked samples that are in `true_issues` (k defaults to the number of true issues)."""
    truth = set(true_issues) & set(ranking.frame["sample_id"])
    k = len(truth) if k is None else k
    if k <= 0:
        raise ValueError("precision@k needs k >= 1 (no known issues among the ranked samples?)")
    top = ranking.frame["sample_id"].iloc[:k]
    return float(top.isin(truth).sum()) / k
