"""Near-duplicates and split leakage: cosine neighbours of the stored embeddings plus a perceptual hash, groups of
near-identical images, the validation/test images that have a near-duplicate or their specimen in training, and the
headline metrics on the evaluation set without them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import TaxaLensError
from core.images import ImageError, load_image_rgb
from core.metrics import HeadlineMetrics
from core.predictions import PredictionTable

logger = logging.getLogger(__name__)

EVALUATION_SPLITS = ("val", "test")
PAIR_COLUMNS = ("a", "b", "sample_a", "sample_b", "split_a", "split_b", "label_a", "label_b", "similarity",
                "hash_distance", "found_by")
LEAK_COLUMNS = ("sample_id", "split", "label", "reason", "train_sample_id", "train_label", "similarity",
                "hash_distance")
HASH_BUDGET = 4_000_000_000  # image pairs above which hashes are compared only across splits (train x evaluation)


class LeakageError(TaxaLensError, ValueError):
    """The duplicate scan cannot run on these inputs (mismatched lengths, no embeddings and no hashes)."""


@dataclass(frozen=True)
class DuplicateSettings:
    """When two images count as near-duplicates (either test suffices)."""

    min_similarity: float = 0.995  # cosine similarity of the mean-centred embeddings at or above which a pair matches
    max_hash_distance: int = 8  # differing bits (of 64) of the perceptual hashes (mirrored, centre-cropped) at or below
    # a hash candidate is a near-duplicate only when both checks below confirm it (drawn images on plain backgrounds
    # collide in 64 bits, and one look-alike demo pair passes the 256-bit hash at 22 bits):
    # 1. its 256-bit confirmation hashes (mirrored, centre crops of CONFIRM_SHARES) differ in at most this many bits.
    #    32: the farthest planted bccd copy (a 4-8 % crop) is at 26; the demo's distinct pairs from 22 bits on are
    #    left to the colour check
    max_confirm_distance: int = 32
    # 2. their colour layouts (LAYOUT_PX x LAYOUT_PX RGB, normalised by the image's own mean and spread, best over
    #    mirror and centre crops) differ by at most this mean absolute value (in standard deviations). 0.1: planted
    #    bccd copies (exact, flip, 4-8 % crop, +-15 % jitter) <= 0.056; the demo's look-alike Daphnia pair 0.29; every
    #    distinct demo pair the 64-bit hash matches >= 0.115
    max_layout_distance: float = 0.1
    k: int = 10  # embedding neighbours examined per image


@dataclass(frozen=True)
class LeakReport:
    """The scan's result over one predictions table (all splits)."""

    pairs: pd.DataFrame  # PAIR_COLUMNS: each near-duplicate pair once (a < b, positions in the table)
    groups: pd.DataFrame  # sample_id, split, label, group (id), size: images in a group of two or more
    leaks: pd.DataFrame  # LEAK_COLUMNS: each evaluation image with a training near-duplicate or specimen, once
    settings: DuplicateSettings

    @property
    def n_leaked(self) -> int:
        return int(self.leaks["sample_id"].nunique())


# Perceptual hashes --------------------------------------------------------------------------------------------------

HASH_VARIANTS = 4  # the image, its mirror image, its centre (CENTRE_SHARE of each side) and that centre mirrored
CENTRE_SHARE = 0.9
CONFIRM_SHARES = (1.0, 0.92, 0.88, 0.84)  # views (each also mirrored) of the 256-bit confirmation hash
CONFIRM_BITS = 256
CONFIRM_WORDS = CONFIRM_BITS // 64
CONFIRM_VIEWS = 2 * len(CONFIRM_SHARES)
LAYOUT_PX = 8  # side of the colour layout: a LAYOUT_PX x LAYOUT_PX RGB thumbnail of each CONFIRM_SHARES crop
LAYOUT_BYTES = len(CONFIRM_SHARES) * LAYOUT_PX * LAYOUT_PX * 3  # stored as uint8 RGB in the hash rows' last words
LAYOUT_WORDS = LAYOUT_BYTES // 8
HASH_COLUMNS = HASH_VARIANTS + CONFIRM_VIEWS * CONFIRM_WORDS + LAYOUT_WORDS


def image_hashes(paths: Sequence[str | None], *, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hashes of each image: `imagehash.phash` (64 bits) in `HASH_VARIANTS` views (as is, mirrored, its
    centre and its centre mirrored, so flipped and slightly cropped copies still match), then a 256-bit phash in
    `CONFIRM_VIEWS` views (as is and centre crops of `CONFIRM_SHARES`, each also mirrored) and a colour layout (an
    8 x 8 RGB thumbnail of each of those crops) that confirm a candidate.

    Returns `(hashes, readable)`: `hashes` uint64 `(N, HASH_COLUMNS)` (the 64-bit views first, then each
    confirmation view as `CONFIRM_WORDS` words, then the layouts' `LAYOUT_BYTES` bytes as `LAYOUT_WORDS` words),
    `readable` bool `(N,)` (False for a path that is None or cannot be decoded; its hashes are 0 and never match).
    """
    import imagehash
    from PIL import Image, ImageOps

    hashes = np.zeros((len(paths), HASH_COLUMNS), dtype=np.uint64)
    readable = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        if progress and i % 200 == 0:
            progress(i, len(paths))
        if not path:
            continue
        try:
            image = load_image_rgb(path)
        except ImageError as exc:
            logger.info("no perceptual hash for %s: %s", path, exc)
            continue
        centre = _centre(image, CENTRE_SHARE)
        for j, view in enumerate((image, ImageOps.mirror(image), centre, ImageOps.mirror(centre))):
            hashes[i, j] = _words(imagehash.phash(view))[0]
        column = HASH_VARIANTS
        layouts = []
        for share in CONFIRM_SHARES:
            crop = _centre(image, share)
            for view in (crop, ImageOps.mirror(crop)):
                hashes[i, column:column + CONFIRM_WORDS] = _words(imagehash.phash(view, hash_size=16))
                column += CONFIRM_WORDS
            layouts.append(np.asarray(crop.resize((LAYOUT_PX, LAYOUT_PX), Image.Resampling.BILINEAR), dtype=np.uint8))
        hashes[i, column:] = np.frombuffer(np.stack(layouts).tobytes(), dtype=np.uint64)
        readable[i] = True
    return hashes, readable


def _centre(image, share: float):
    if share >= 1.0:
        return image
    w, h = image.size
    dx, dy = int(w * (1 - share) / 2), int(h * (1 - share) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def _words(value) -> list[np.uint64]:
    bits = np.asarray(value.hash, dtype=bool).ravel()
    return [np.uint64(int("".join("1" if b else "0" for b in bits[k:k + 64]), 2)) for k in range(0, len(bits), 64)]


def _check_hashes(hashes: np.ndarray) -> None:
    if hashes.ndim != 2 or hashes.shape[1] != HASH_COLUMNS:
        raise LeakageError(f"image hashes of shape {hashes.shape}, expected (N, {HASH_COLUMNS}): hashes saved by an "
                           "older TaxaLens; delete the workspace's .taxalens/scan folder or rehash with `image_hashes`")


def hash_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Differing bits `(Q, R)` between the 64-bit hashes of `query` and `reference` (rows from `image_hashes`): the
    fewest over one image as is against any view of the other (symmetric)."""
    out = np.full((len(query), len(reference)), 64, dtype=np.int16)
    for j in range(HASH_VARIANTS):
        np.minimum(out, np.bitwise_count(query[:, None, 0] ^ reference[None, :, j]), out=out)
        np.minimum(out, np.bitwise_count(query[:, None, j] ^ reference[None, :, 0]), out=out)
    return out


def confirmation_distances(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits (of `CONFIRM_BITS`) between the confirmation hashes of rows `a` and `b` (paired arrays of
    positions into `hashes` from `image_hashes`): the fewest over one image as is against any view of the other."""
    words = hashes[:, HASH_VARIANTS:HASH_VARIANTS + CONFIRM_VIEWS * CONFIRM_WORDS].reshape(
        len(hashes), CONFIRM_VIEWS, CONFIRM_WORDS)
    out = np.full(len(a), CONFIRM_BITS, dtype=np.int16)
    for j in range(CONFIRM_VIEWS):
        for first, second in ((words[a, 0], words[b, j]), (words[a, j], words[b, 0])):
            np.minimum(out, np.bitwise_count(first ^ second).sum(axis=1, dtype=np.int16), out=out)
    return out


def layout_distances(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Colour-layout distance `(len(a),)` float32 between rows `a` and `b` (paired arrays of positions into `hashes`
    from `image_hashes`): the mean absolute difference of their 8 x 8 RGB layouts, each normalised by its own mean
    and standard deviation (a brightness or contrast change cancels out, a different background tint or body does
    not), the fewest over one image as is against the other's crops, each also mirrored (symmetric)."""
    shape = (len(hashes), len(CONFIRM_SHARES), LAYOUT_PX, LAYOUT_PX, 3)
    layouts = np.ascontiguousarray(hashes[:, -LAYOUT_WORDS:]).view(np.uint8).reshape(shape)
    first, second = _normalised(layouts[a]), _normalised(layouts[b])
    out = np.full(len(a), np.inf, dtype=np.float32)
    for j in range(len(CONFIRM_SHARES)):
        for one, other in ((first[:, 0], second[:, j]), (second[:, 0], first[:, j])):
            for view in (other, other[:, :, ::-1]):  # as is, mirrored (columns reversed)
                np.minimum(out, np.abs(one - view).mean(axis=(1, 2, 3)), out=out)
    return out


def _normalised(layouts: np.ndarray) -> np.ndarray:
    x = layouts.astype(np.float32)
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    return (x - mean) / (x.std(axis=(2, 3, 4), keepdims=True) + 1e-3)


# Pairs and groups ---------------------------------------------------------------------------------------------------

def find_near_duplicates(table: PredictionTable, hashes: np.ndarray | None = None,
                         readable: np.ndarray | None = None, *, settings: DuplicateSettings = DuplicateSettings(),
                         chunk: int = 2048) -> pd.DataFrame:
    """Each pair of rows of `table` that are near-duplicates, once (`PAIR_COLUMNS`, sorted by similarity).

    Embedding test: among each row's `settings.k` most similar rows (cosine of the mean-centred embeddings), those at
    or above `settings.min_similarity`. Hash test (when `hashes` from `image_hashes` are given): 64-bit perceptual
    hashes within `settings.max_hash_distance` bits, confirmed by 256-bit ones within
    `settings.max_confirm_distance` and by colour layouts within `settings.max_layout_distance`. `found_by` says
    which test (embedding, hash or both) matched.
    """
    n = len(table)
    if hashes is not None and len(hashes) != n:
        raise LeakageError(f"{len(hashes)} hashes for {n} predictions; hash the images of the same table")
    if hashes is not None:
        _check_hashes(hashes)
    width = table.embeddings.shape[1] if table.embeddings.ndim == 2 else 0
    if width == 0 and hashes is None:
        raise LeakageError("these predictions hold no embeddings and no image hashes were given; recompute the "
                           "predictions with a timm checkpoint or hash the images (`image_hashes`)")
    found: dict[tuple[int, int], list] = {}
    if width and n > 1:
        _embedding_pairs(table.embeddings, settings, chunk, found)
    if hashes is not None and n > 1:
        ok = np.ones(n, dtype=bool) if readable is None else np.asarray(readable, dtype=bool)
        _hash_pairs(hashes, ok, table.frame["split"].to_numpy(), settings, chunk, found)
    if hashes is not None and found:  # fill in the hash distance of pairs only the embeddings found
        keys = np.array(list(found), dtype=np.int64)
        d = np.full(len(keys), 64, dtype=np.int16)
        for j in range(HASH_VARIANTS):
            d = np.minimum(d, np.bitwise_count(hashes[keys[:, 0], 0] ^ hashes[keys[:, 1], j]))
            d = np.minimum(d, np.bitwise_count(hashes[keys[:, 0], j] ^ hashes[keys[:, 1], 0]))
        for (a, b), dist in zip(found, d.tolist(), strict=True):
            found[(a, b)][1] = int(dist)
    if width and found:  # and the similarity of pairs only the hashes found
        x = _unit(table.embeddings)
        keys = np.array(list(found), dtype=np.int64)
        sims = np.einsum("ij,ij->i", x[keys[:, 0]], x[keys[:, 1]])
        for (a, b), sim in zip(found, sims.tolist(), strict=True):
            found[(a, b)][0] = float(sim)
    return _pairs_frame(table, found, settings)


def _unit(embeddings: np.ndarray) -> np.ndarray:
    """Mean-centred rows of unit length: penultimate features are non-negative (after a ReLU), so raw cosine puts
    every pair near 1 (the demo's nearest neighbours: median 0.988); centring removes the shared component."""
    x = np.asarray(embeddings, dtype=np.float32)
    x = x - x.mean(axis=0, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _embedding_pairs(embeddings: np.ndarray, settings: DuplicateSettings, chunk: int,
                     found: dict[tuple[int, int], list]) -> None:
    """Each row's `settings.k` nearest rows at or above `settings.min_similarity`: the exhaustive search below
    `EXHAUSTIVE_BELOW` rows (or for a threshold too low for the bands to separate), else the same pairs from
    random-hyperplane bands (`banded_embedding_pairs`)."""
    if len(embeddings) < EXHAUSTIVE_BELOW or lsh_bands(settings.min_similarity) is None:
        _add_embedding_pairs(*exhaustive_embedding_pairs(embeddings, settings, chunk=chunk), found)
    else:
        _add_embedding_pairs(*banded_embedding_pairs(embeddings, settings, chunk=chunk), found)


EXHAUSTIVE_BELOW = 10_000  # rows below which every pair is compared (a few seconds)
LSH_BITS = 16  # hyperplanes per band: two images share a band's bucket when all 16 signs agree
LSH_MISS = 1e-4  # at most this chance that a pair exactly at the threshold shares no bucket (closer pairs: less)
LSH_MAX_BANDS = 64  # thresholds that would need more bands are searched exhaustively (below about 0.93)
LSH_SEED = 0  # the hyperplanes are drawn from this seed: the same table always gives the same pairs
BUCKET_BLOCK = 64  # rows of a bucket larger than this are compared as one block (a product), not pair by pair


def lsh_bands(min_similarity: float) -> int | None:
    """Bands of `LSH_BITS` hyperplanes that find a pair at cosine `min_similarity` with probability at least
    1 - `LSH_MISS` (a random hyperplane separates two vectors at angle a with probability a / pi), None when that
    takes more than `LSH_MAX_BANDS`."""
    if min_similarity >= 1.0:
        return 1
    if min_similarity <= 0.0:
        return None
    agree = (1.0 - np.arccos(min_similarity) / np.pi) ** LSH_BITS
    bands = int(np.ceil(np.log(LSH_MISS) / np.log1p(-agree)))
    return max(1, bands) if bands <= LSH_MAX_BANDS else None


def exhaustive_embedding_pairs(embeddings: np.ndarray, settings: DuplicateSettings, *, chunk: int = 2048
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(a, b, similarity)` of every pair where `b` is among `a`'s `settings.k` most similar rows (cosine of the
    mean-centred embeddings) at or above `settings.min_similarity`, comparing every row with every other (quadratic:
    the reference the pruned search is tested against). A pair may appear twice (once from each side)."""
    x = _unit(embeddings)
    n = len(x)
    k = min(settings.k, n - 1)
    out_a, out_b, out_s = [], [], []
    for start in range(0, n, chunk):
        sims = x[start:start + chunk] @ x.T
        rows = np.arange(start, min(start + chunk, n))
        sims[np.arange(len(rows)), rows] = -np.inf  # not its own neighbour
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near_sims = np.take_along_axis(sims, nearest, axis=1)
        hit_r, hit_c = np.nonzero(near_sims >= settings.min_similarity)
        out_a.append(rows[hit_r])
        out_b.append(nearest[hit_r, hit_c])
        out_s.append(near_sims[hit_r, hit_c])
    return _concat(out_a, np.int64), _concat(out_b, np.int64), _concat(out_s, np.float32)


def banded_embedding_pairs(embeddings: np.ndarray, settings: DuplicateSettings, *, chunk: int = 2048
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of `exhaustive_embedding_pairs` in near-linear time, by locality-sensitive hashing: each image gets
    the signs of its mean-centred embedding against `LSH_BITS` random hyperplanes per band (`lsh_bands` bands), and
    only images sharing a band's bucket are compared (their exact cosine). A pair at the threshold is missed with
    probability at most `LSH_MISS` (1e-4 at 0.995; a pair at 0.999 about 1e-7; identical embeddings never). Each row
    then keeps its `settings.k` most similar above the threshold, the exhaustive rule (a neighbour above the
    threshold that is not among a row's k nearest overall is not among its k nearest above the threshold either);
    ties at a row's k-th place may be broken differently."""
    x = _unit(embeddings)
    n = len(x)
    k = min(settings.k, n - 1)
    live = np.flatnonzero(np.linalg.norm(x, axis=1) > 0.5)  # a zero row (constant embedding) matches nothing
    bands = lsh_bands(settings.min_similarity)
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(live) < 2 or k < 1 or settings.min_similarity > 1.0:
        return empty
    if bands is None:
        raise LeakageError(f"a similarity threshold of {settings.min_similarity} is too low for the banded search; "
                           "use exhaustive_embedding_pairs")
    xs = x[live]
    planes = np.random.default_rng(LSH_SEED).standard_normal((xs.shape[1], bands * LSH_BITS)).astype(np.float32)
    weights = (1 << np.arange(LSH_BITS, dtype=np.int64))
    found: list[np.ndarray] = []
    for band in range(bands):
        keys = np.empty(len(xs), dtype=np.int64)
        for start in range(0, len(xs), 8 * chunk):
            signs = xs[start:start + 8 * chunk] @ planes[:, band * LSH_BITS:(band + 1) * LSH_BITS] > 0
            keys[start:start + 8 * chunk] = signs @ weights
        found.extend(_bucket_pairs(keys, xs, settings.min_similarity, chunk))
    if not found:
        return empty
    codes = np.unique(np.concatenate(found))  # a pair found in several bands once
    first, second = codes // len(xs), codes % len(xs)
    sims = np.concatenate([np.einsum("ij,ij->i", xs[first[i:i + 65536]], xs[second[i:i + 65536]])
                           for i in range(0, len(first), 65536)])
    a = np.concatenate([live[first], live[second]])  # each pair from both sides, for the k-nearest rule
    b = np.concatenate([live[second], live[first]])
    s = np.concatenate([sims, sims]).astype(np.float32)
    order = np.lexsort((b, -s, a))  # each row's neighbours, most similar first
    a, b, s = a[order], b[order], s[order]
    nearest = (np.arange(len(a)) - np.searchsorted(a, a, side="left")) < k
    return a[nearest], b[nearest], s[nearest]


def _bucket_pairs(keys: np.ndarray, xs: np.ndarray, min_similarity: float, chunk: int) -> list[np.ndarray]:
    """Pairs (coded `first * n + second`, first < second) of rows of `xs` that share a bucket of `keys` and reach
    `min_similarity`: small buckets pair by pair, buckets above `BUCKET_BLOCK` rows as blocks."""
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    size_of = np.repeat(sizes, sizes)  # the bucket size at each sorted position
    out: list[np.ndarray] = []
    small = np.flatnonzero((size_of > 1) & (size_of <= BUCKET_BLOCK))
    group = np.repeat(np.arange(len(starts)), sizes)
    for step in range(1, int(sizes[sizes <= BUCKET_BLOCK].max(initial=1))):
        small = small[size_of[small] > step]
        near = small[small + step < n]
        near = near[group[near] == group[near + step]]
        if len(near):
            first, second = order[near], order[near + step]
            keep = np.einsum("ij,ij->i", xs[first], xs[second]) >= min_similarity
            lo, hi = np.minimum(first[keep], second[keep]), np.maximum(first[keep], second[keep])
            out.append(lo.astype(np.int64) * n + hi)
    for g in np.flatnonzero(sizes > BUCKET_BLOCK):
        members = np.sort(order[starts[g]:starts[g] + sizes[g]])
        for begin in range(0, len(members), chunk):
            sims = xs[members[begin:begin + chunk]] @ xs[members].T
            rows, cols = np.nonzero(sims >= min_similarity)
            rows = rows + begin
            upper = rows < cols
            out.append(members[rows[upper]].astype(np.int64) * n + members[cols[upper]])
    return out


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _add_embedding_pairs(a: np.ndarray, b: np.ndarray, sims: np.ndarray, found: dict[tuple[int, int], list]) -> None:
    for first, second, sim in zip(a.tolist(), b.tolist(), sims.tolist(), strict=True):
        key = (first, second) if first < second else (second, first)
        found.setdefault(key, [float(sim), None, set()])[2].add("embedding")


def _hash_pairs(hashes: np.ndarray, ok: np.ndarray, splits: np.ndarray, settings: DuplicateSettings, chunk: int,
                found: dict[tuple[int, int], list]) -> None:
    n = len(hashes)
    usable = np.flatnonzero(ok)
    if n * n > HASH_BUDGET:  # at scale only the pairs that leak: evaluation images against training ones
        logger.info("%d images: perceptual hashes compared across splits only", n)
        queries = usable[np.isin(splits[usable], EVALUATION_SPLITS)]
        reference = usable[splits[usable] == "train"]
    else:
        queries = reference = usable
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        dist = hash_distances(hashes[part], hashes[reference])
        hit_r, hit_c = np.nonzero(dist <= settings.max_hash_distance)
        confirmed = confirmation_distances(hashes, part[hit_r], reference[hit_c]) <= settings.max_confirm_distance
        hit_r, hit_c = hit_r[confirmed], hit_c[confirmed]
        alike = layout_distances(hashes, part[hit_r], reference[hit_c]) <= settings.max_layout_distance
        hit_r, hit_c = hit_r[alike], hit_c[alike]
        for r, c in zip(hit_r.tolist(), hit_c.tolist(), strict=True):
            a, b = int(part[r]), int(reference[c])
            if a == b:
                continue
            key = (min(a, b), max(a, b))
            found.setdefault(key, [None, int(dist[r, c]), set()])[2].add("hash")


def _pairs_frame(table: PredictionTable, found: dict[tuple[int, int], list],
                 settings: DuplicateSettings) -> pd.DataFrame:
    if not found:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PAIR_COLUMNS})
    keys = np.array(list(found), dtype=np.int64)
    values = list(found.values())
    frame = table.frame
    out = pd.DataFrame({
        "a": keys[:, 0], "b": keys[:, 1],
        "sample_a": frame["sample_id"].to_numpy()[keys[:, 0]], "sample_b": frame["sample_id"].to_numpy()[keys[:, 1]],
        "split_a": frame["split"].to_numpy()[keys[:, 0]], "split_b": frame["split"].to_numpy()[keys[:, 1]],
        "label_a": frame["label"].to_numpy()[keys[:, 0]], "label_b": frame["label"].to_numpy()[keys[:, 1]],
        "similarity": [np.nan if v[0] is None else v[0] for v in values],
        "hash_distance": [np.nan if v[1] is None else v[1] for v in values],
        "found_by": ["both" if len(v[2]) == 2 else next(iter(v[2])) for v in values],
    })
    return out.sort_values(["similarity", "hash_distance"], ascending=[False, True], na_position="last",
                           kind="stable").reset_index(drop=True)


def duplicate_groups(table: PredictionTable, pairs: pd.DataFrame) -> pd.DataFrame:
    """Groups of near-identical images (connected by `pairs`): `sample_id, split, label, group, size`, the largest
    group first; images without a near-duplicate are left out."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(table)
    if n == 0 or pairs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("sample_id", "split", "label", "group", "size")})
    a, b = pairs["a"].to_numpy(dtype=np.int64), pairs["b"].to_numpy(dtype=np.int64)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    members = np.flatnonzero(sizes[component] > 1)
    frame = table.frame
    out = pd.DataFrame({"sample_id": frame["sample_id"].to_numpy()[members],
                        "split": frame["split"].to_numpy()[members], "label": frame["label"].to_numpy()[members],
                        "component": component[members], "size": sizes[component[members]]})
    order = out.groupby("component")["size"].first().sort_values(ascending=False, kind="stable").index
    renumber = {c: i + 1 for i, c in enumerate(order)}
    out["group"] = out["component"].map(renumber)
    return out.drop(columns="component").sort_values(["group", "split", "sample_id"]).reset_index(drop=True)


def find_split_leaks(table: PredictionTable, pairs: pd.DataFrame) -> pd.DataFrame:
    """Every validation/test row with a near-duplicate in training (`reason` near-duplicate) or whose specimen id
    also has training images (`reason` same specimen): `LEAK_COLUMNS`, one row per evaluation image (the closest
    training match; a near-duplicate wins over a shared specimen)."""
    frame = table.frame
    parts: list[pd.DataFrame] = []
    if not pairs.empty:
        for first, second in (("a", "b"), ("b", "a")):
            s_first, s_second = f"split_{first}", f"split_{second}"
            hit = pairs[pairs[s_first].isin(EVALUATION_SPLITS) & (pairs[s_second] == "train")]
            parts.append(_leak_rows(hit[f"sample_{first}"], hit[s_first], hit[f"label_{first}"], "near-duplicate",
                                    hit[f"sample_{second}"], hit[f"label_{second}"], hit["similarity"],
                                    hit["hash_distance"]))
    split = frame["split"]
    first_train = frame[(split == "train").to_numpy()].drop_duplicates("specimen_id")
    shared = is_member(frame["specimen_id"], first_train["specimen_id"])
    evaluation = frame[is_member(split, EVALUATION_SPLITS) & shared]
    match = pd.Index(first_train["specimen_id"]).get_indexer(evaluation["specimen_id"])
    nothing = np.full(len(evaluation), np.nan)
    parts.append(_leak_rows(evaluation["sample_id"], evaluation["split"], evaluation["label"], "same specimen",
                            first_train["sample_id"].to_numpy()[match], first_train["label"].to_numpy()[match],
                            nothing, nothing))
    out = pd.concat(parts, ignore_index=True)
    if out.empty:
        return out
    out["_order"] = (out["reason"] != "near-duplicate").astype(int)
    out = out.sort_values(["_order", "similarity", "hash_distance"], ascending=[True, False, True],
                          na_position="last", kind="stable")
    return out.drop_duplicates("sample_id").drop(columns="_order").reset_index(drop=True)


def _leak_rows(sample_id, split, label, reason: str, train_sample_id, train_label, similarity, hash_distance
               ) -> pd.DataFrame:
    columns = (sample_id, split, label, None, train_sample_id, train_label, similarity, hash_distance)
    data = {name: (np.full(len(sample_id), reason, dtype=object) if values is None else np.asarray(values))
            for name, values in zip(LEAK_COLUMNS, columns, strict=True)}
    out = pd.DataFrame(data)
    return out.astype({"similarity": "float64", "hash_distance": "float64"})


def is_member(column: pd.Series, values: object) -> np.ndarray:
    """Whether each entry of `column` (strings) is among `values` (a collection of strings), as a bool array: Arrow's
    hash lookup, where `Series.isin` on an Arrow string column converts every value one by one (0.6 s for 100,000
    values; this: 0.02 s)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pool = values.to_numpy() if isinstance(values, pd.Series) else list(values)
    try:
        found = pc.is_in(pa.array(column.to_numpy(dtype=object), from_pandas=True),
                         value_set=pa.array(pool, from_pandas=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return column.isin(pool).to_numpy()  # mixed types: pandas' own (slower) comparison
    return np.asarray(found.fill_null(False), dtype=bool)


def scan_leakage(table: PredictionTable, hashes: np.ndarray | None = None, readable: np.ndarray | None = None, *,
                 settings: DuplicateSettings = DuplicateSettings()) -> LeakReport:
    """Pairs, groups and split leaks of `table` (every split) in one call."""
    pairs = find_near_duplicates(table, hashes, readable, settings=settings)
    return LeakReport(pairs=pairs, groups=duplicate_groups(table, pairs), leaks=find_split_leaks(table, pairs),
                      settings=settings)


def deduplicated(table: PredictionTable, leaks: pd.DataFrame) -> PredictionTable:
    """`table` without the leaked rows (`leaks` from `find_split_leaks`)."""
    return table.subset(~is_member(table.frame["sample_id"], leaks["sample_id"]))


def compare_reported_deduplicated(reported: HeadlineMetrics, dedup: HeadlineMetrics) -> pd.DataFrame:
    """One row per headline metric: `metric, label, reported, reported_low, reported_high, deduplicated,
    deduplicated_low, deduplicated_high, delta` (delta = deduplicated - reported; NaN where undefined)."""
    rows = []
    other = {e.name: e for e in dedup.estimates}
    for estimate in reported.estimates:
        d = other.get(estimate.name)
        value = None if d is None else d.value
        delta = None if value is None or estimate.value is None else value - estimate.value
        rows.append((estimate.name, estimate.label, estimate.value, estimate.low, estimate.high, value,
                     None if d is None else d.low, None if d is None else d.high, delta))
    columns = ["metric", "label", "reported", "reported_low", "reported_high", "deduplicated", "deduplicated_low",
               "deduplicated_high", "delta"]
    return pd.DataFrame(rows, columns=columns).astype({c: "float64" for c in columns[2:]})


def leak_recall_precision(leaks: pd.DataFrame, planted: Sequence[str]) -> tuple[float, float]:
    """(recall, precision) of the leaked evaluation images against the ids known to be `planted` leaks."""
    found = set(leaks["sample_id"])
    truth = set(planted)
    recall = len(found & truth) / len(truth) if truth else float("nan")
    precision = len(found & truth) / len(found) if found else float("nan")
    return recall, precision
