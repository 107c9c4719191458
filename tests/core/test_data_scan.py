"""Leak, quality and outlier scans on bccd with planted copies and defects; the map's selection geometry and
projections on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.embedding_map import (
    build_map_figure,
    colour_values,
    knn_outlier_scores,
    map_frame,
    points_in_box,
    points_in_polygon,
    project_embeddings,
    selected_rows,
)
from core.leakage import (
    CONFIRM_BITS,
    DuplicateSettings,
    LeakageError,
    banded_embedding_pairs,
    confirmation_distances,
    deduplicated,
    exhaustive_embedding_pairs,
    find_split_leaks,
    hash_distances,
    image_hashes,
    layout_distances,
    leak_recall_precision,
    scan_leakage,
)
from core.predictions import build_prediction_table
from core.quality import QUALITY_CHECKS, flag_quality_issues, measure_images, quality_summary
from tests.core.planted_data import build_planted_dataset, planted_predictions


@pytest.fixture(scope="module")
def planted(tmp_path_factory, bccd_root):
    """(planted dataset, its samples, predictions, image paths in table order, hashes, readable)."""
    import torch

    torch.set_num_threads(1)
    data = build_planted_dataset(tmp_path_factory.mktemp("planted"), bccd_root)
    dataset, table = planted_predictions(data, input_px=32)
    paths = dataset.samples.set_index("sample_id").loc[table.frame["sample_id"], "path"].tolist()
    hashes, readable = image_hashes(paths)
    return data, dataset.samples, table, paths, hashes, readable


def test_planted_leaks_are_found_at_the_default_threshold(planted):
    data, _, table, _, hashes, readable = planted
    report = scan_leakage(table, hashes, readable)
    recall, precision = leak_recall_precision(report.leaks, list(data.leaks))
    assert recall >= 0.95, (recall, set(data.leaks) - set(report.leaks["sample_id"]))
    assert precision >= 0.8, report.leaks[~report.leaks["sample_id"].isin(list(data.leaks))]
    # each planted copy is matched to the training image it was made from, never to a validation image
    found = report.leaks.set_index("sample_id")
    matched = [s for s in data.leaks if s in found.index and found.loc[s, "train_sample_id"] == data.sources[s]]
    assert len(matched) >= 0.95 * len(data.leaks)
    assert set(report.leaks["split"]) == {"val"}
    for kind in ("exact", "flip", "crop", "jitter"):
        ids = [s for s, how in data.leaks.items() if how == kind]
        assert found.index.isin(ids).sum() >= len(ids) - 1, kind
    # every leaked copy and its source sit in one group of near-identical images
    groups = report.groups.set_index("sample_id")["group"]
    exact = [s for s, how in data.leaks.items() if how == "exact"]
    assert all(groups[s] == groups[data.sources[s]] for s in exact)


def test_a_stricter_hash_threshold_misses_the_crops(planted):
    data, _, table, _, hashes, readable = planted
    strict = scan_leakage(table, hashes, readable, settings=DuplicateSettings(max_hash_distance=0, min_similarity=1.1))
    crops = [s for s, how in data.leaks.items() if how == "crop"]
    assert strict.leaks["sample_id"].isin(crops).sum() < len(crops) - 2
    exact = [s for s, how in data.leaks.items() if how == "exact"]
    assert strict.leaks["sample_id"].isin(exact).all() or set(exact) <= set(strict.leaks["sample_id"])


def test_deduplicated_set_drops_exactly_the_leaks(planted):
    data, _, table, _, hashes, readable = planted
    report = scan_leakage(table, hashes, readable)
    val = table.for_split("val")
    clean = deduplicated(val, report.leaks)
    assert len(clean) == len(val) - report.n_leaked
    assert not clean.frame["sample_id"].isin(list(data.leaks)).any()


def test_same_specimen_across_splits_is_a_leak():
    table = build_prediction_table(
        ["a", "b", "c", "d"], np.full((4, 2), 0.5), np.eye(4, 3),
        labels=["x", "x", "y", "y"], splits=["train", "val", "test", "val"], specimen_ids=["s1", "s1", "s2", "s3"],
        class_names=["x", "y"])
    pairs = scan_leakage(table, settings=DuplicateSettings(min_similarity=0.999)).pairs
    leaks = find_split_leaks(table, pairs)
    assert leaks["sample_id"].tolist() == ["b"]
    assert leaks["reason"].tolist() == ["same specimen"] and leaks["train_sample_id"].tolist() == ["a"]


def test_scan_without_embeddings_or_hashes_says_what_to_do():
    table = build_prediction_table(["a", "b"], np.full((2, 2), 0.5), np.zeros((2, 0)), labels=["x", "y"],
                                   splits=["train", "val"], specimen_ids=["a", "b"], class_names=["x", "y"])
    with pytest.raises(LeakageError, match="no embeddings"):
        scan_leakage(table)


def test_quality_checks_find_the_planted_defects(planted):
    data, samples, _, _, _, _ = planted
    stats = measure_images(samples["sample_id"].tolist(), samples["path"].tolist())
    flagged = flag_quality_issues(stats).set_index("sample_id")
    for kind, check in (("blurry", "blurry"), ("dark", "dark"), ("bright", "bright")):
        ids = [s for s, how in data.defects.items() if how == kind]
        assert flagged.loc[ids, check].all(), (kind, flagged.loc[ids, "issues"])
    exact = [s for s, how in data.leaks.items() if how == "exact"]
    assert flagged.loc[exact, "exact_duplicate"].all()
    assert flagged.loc[[data.sources[s] for s in exact], "exact_duplicate"].all()
    # the untouched bccd crops that are no exact copy stay clean of exposure and blur flags
    planted_ids = set(data.defects) | set(data.leaks) | set(data.sources.values())
    clean = flagged[~flagged.index.isin(planted_ids)]
    assert not clean[["dark", "bright", "low_information"]].to_numpy().any()
    assert clean["blurry"].sum() <= 5  # the softest real crops (bccd has upscaled cells) sit near the cut
    summary = quality_summary(flag_quality_issues(stats))
    assert summary["check"].tolist() == list(QUALITY_CHECKS)
    assert int(summary.set_index("check").loc["dark", "images"]) == 6


def test_unreadable_image_is_flagged_not_raised(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    flagged = flag_quality_issues(measure_images(["bad", "gone"], [str(bad), None]))
    assert flagged["unreadable"].tolist() == [True, True]
    assert not flagged[["blurry", "dark", "exact_duplicate"]].to_numpy().any()


def test_outlier_score_ranks_a_foreign_image_first():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    emb = centre + 0.05 * rng.normal(size=(30, 16))
    emb[7] = -centre  # one image unlike the rest of its class
    table = build_prediction_table([f"s{i}" for i in range(30)], np.full((30, 1), 1.0), emb, labels=["a"] * 30,
                                   splits=["val"] * 30, specimen_ids=[f"s{i}" for i in range(30)], class_names=["a"])
    scores = knn_outlier_scores(table, k=5)
    assert scores.sort_values("outlier_score", ascending=False)["sample_id"].iloc[0] == "s7"
    assert scores.loc[7, "class_percentile"] == 1.0


def test_polygon_and_box_selection():
    coords = np.array([[0, 0], [1, 1], [2, 2], [0.5, 0.2], [5, 5]], dtype=np.float32)
    triangle = [(-0.1, -0.1), (2.5, -0.1), (2.5, 2.5)]
    assert points_in_polygon(coords, triangle).tolist() == [True, True, True, True, False]
    assert points_in_box(coords, (0.4, 1.5), (0.0, 1.2)).tolist() == [False, True, False, True, False]
    table = build_prediction_table(list("abcde"), np.full((5, 2), 0.5), np.zeros((5, 3)), labels=list("xxyyx"),
                                   splits=["val"] * 5, specimen_ids=list("abcde"), class_names=["x", "y"])
    assert selected_rows(table, [3, 1, 3, 99])["sample_id"].tolist() == ["b", "d"]


def test_pca_map_separates_two_clusters_and_figure_is_webgl():
    rng = np.random.default_rng(1)
    emb = np.vstack([rng.normal(size=(40, 32)) + 4 * np.eye(32)[0], rng.normal(size=(40, 32)) + 4 * np.eye(32)[1]])
    labels = ["a"] * 40 + ["b"] * 40
    table = build_prediction_table([f"s{i}" for i in range(80)], np.tile([[0.6, 0.4]], (80, 1)), emb, labels=labels,
                                   splits=["val"] * 80, specimen_ids=[f"s{i}" for i in range(80)],
                                   class_names=["a", "b"])
    coords = project_embeddings(table.embeddings, method="pca")
    assert coords.shape == (80, 2)
    frame = map_frame(table, coords)
    centroid = pd.DataFrame(coords).groupby(np.array(labels)).mean().to_numpy()
    spread = coords[:40].std(axis=0).max()
    assert np.linalg.norm(centroid[0] - centroid[1]) > 3 * spread
    values = colour_values(frame, "correct")
    assert set(values) == {"correct", "wrong"}
    fig = build_map_figure(frame, values)
    assert {trace.type for trace in fig.data} == {"scattergl"}
    assert sum(len(trace.x) for trace in fig.data) == 80
    rows = np.concatenate([np.asarray(trace.customdata)[:, 0] for trace in fig.data])
    assert sorted(rows.tolist()) == list(range(80))
    taxa = colour_values(frame, "rank:order", taxa={"a": "A-order"})
    assert set(taxa) == {"A-order", "(not in taxonomy)"}


UNCONFIRMED = DuplicateSettings(max_confirm_distance=CONFIRM_BITS, max_layout_distance=np.inf)  # 64-bit hash alone


def test_planted_copies_pass_both_confirmations_with_a_margin(planted):
    """Each planted copy and its source: 256-bit hashes well inside `max_confirm_distance` (the farthest, a crop, at
    26 of 32 bits) and colour layouts well inside `max_layout_distance` (at most about half of it)."""
    data, _, table, _, hashes, _ = planted
    position = {s: i for i, s in enumerate(table.frame["sample_id"])}
    copies = np.array([position[s] for s in data.leaks])
    sources = np.array([position[data.sources[s]] for s in data.leaks])
    settings = DuplicateSettings()
    assert confirmation_distances(hashes, copies, sources).max() <= settings.max_confirm_distance - 4
    layouts = layout_distances(hashes, copies, sources)
    assert layouts.max() <= 0.6 * settings.max_layout_distance
    assert np.allclose(layouts[[data.leaks[s] in ("exact", "flip") for s in data.leaks]], 0.0)


def test_the_demos_look_alike_daphnia_are_no_leak_but_their_copies_are(demo_workspace_readonly, tmp_path):
    """The full demo's one false leak before the colour check: two drawings of different Daphnia in one pose whose
    hashes match in 64 bits and in 256 bits (22 of 32); their colour layouts (another background tint, another body)
    keep them apart. A jittered and a mirrored-and-cropped copy of one of them still count as leaks."""
    from PIL import ImageEnhance, ImageOps

    from core.images import load_image_rgb

    images = demo_workspace_readonly / "data" / "images" / "Daphnia"
    first, second = images / "DAPH-0023_1.jpg", images / "DAPH-0039_1.jpg"
    image = load_image_rgb(first)
    jitter = ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.12)).enhance(0.88)
    w, h = image.size
    cropped = ImageOps.mirror(image.crop((6, 6, w - 6, h - 6)).resize((w, h)))
    paths = [first, second]
    for name, copy in (("jitter.png", jitter), ("crop.png", cropped)):
        copy.save(tmp_path / name)
        paths.append(tmp_path / name)
    hashes, readable = image_hashes([str(p) for p in paths])
    settings = DuplicateSettings()
    pair = (np.array([0]), np.array([1]))
    assert hash_distances(hashes[:1], hashes[1:2])[0, 0] <= settings.max_hash_distance  # the case this test is about
    assert confirmation_distances(hashes, *pair)[0] <= settings.max_confirm_distance
    assert layout_distances(hashes, *pair)[0] > 2 * settings.max_layout_distance
    ids = ["train-a", "val-b", "val-jitter", "val-crop"]
    table = build_prediction_table(ids, np.full((4, 1), 1.0), np.zeros((4, 0)), labels=["Daphnia"] * 4,
                                   splits=["train", "val", "val", "val"], specimen_ids=ids, class_names=["Daphnia"])
    assert set(scan_leakage(table, hashes, readable, settings=UNCONFIRMED).leaks["sample_id"]) == set(ids[1:])
    report = scan_leakage(table, hashes, readable)
    assert sorted(report.leaks["sample_id"]) == ["val-crop", "val-jitter"]
    assert set(report.leaks["train_sample_id"]) == {"train-a"}


def test_distinct_drawn_images_on_plain_backgrounds_are_no_leak(tmp_path):
    """Demo-style drawings (one plain microscope background, organisms alike in shape) collide in the 64-bit hash;
    the 256-bit confirmation keeps them apart and still finds a real copy and a mirrored copy."""
    from PIL import Image, ImageOps

    from core.demo import generate_demo_dataset

    samples = generate_demo_dataset(tmp_path, scale=0.05)
    specimens = sorted({s.specimen_id for s in samples})
    val_specimens = set(specimens[1::3])
    ids = [s.path for s in samples]
    splits = ["val" if s.specimen_id in val_specimens else "train" for s in samples]
    source = next(s.path for s, split in zip(samples, splits, strict=True) if split == "train")
    image = Image.open(tmp_path / source).convert("RGB")
    for name, copy in (("copy.png", image), ("mirror.png", ImageOps.mirror(image))):
        copy.save(tmp_path / name)
        ids.append(name)
        splits.append("val")
    specimen_ids = [s.specimen_id for s in samples] + ["copy", "mirror"]
    labels = [s.label for s in samples] + [samples[ids.index(source)].label] * 2
    classes = sorted(set(labels))
    table = build_prediction_table(ids, np.full((len(ids), len(classes)), 1 / len(classes)), np.zeros((len(ids), 0)),
                                   labels=labels, splits=splits, specimen_ids=specimen_ids, class_names=classes)
    hashes, readable = image_hashes([str(tmp_path / i) for i in ids])
    assert readable.all()
    unconfirmed = scan_leakage(table, hashes, readable, settings=UNCONFIRMED)
    distinct = unconfirmed.pairs[~unconfirmed.pairs["sample_a"].isin(["copy.png", "mirror.png"])
                                 & ~unconfirmed.pairs["sample_b"].isin(["copy.png", "mirror.png"])]
    assert len(distinct) >= 3  # the drawn images do collide in 64 bits: the case this test is about
    report = scan_leakage(table, hashes, readable)
    assert sorted(report.leaks["sample_id"]) == ["copy.png", "mirror.png"]
    assert set(report.leaks["train_sample_id"]) == {source}
    assert set(report.pairs["sample_a"]) | set(report.pairs["sample_b"]) <= {"copy.png", "mirror.png", source}


def test_hashes_of_an_older_shape_say_what_to_do():
    table = build_prediction_table(["a", "b"], np.full((2, 2), 0.5), np.zeros((2, 0)), labels=["x", "y"],
                                   splits=["train", "val"], specimen_ids=["a", "b"], class_names=["x", "y"])
    with pytest.raises(LeakageError, match=r"\.taxalens/scan"):
        scan_leakage(table, np.zeros((2, 4), dtype=np.uint64), np.ones(2, dtype=bool))


# The scalable embedding search ---------------------------------------------------------------------------------------

def _pair_set(a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    return {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist(), strict=True)}


@pytest.mark.parametrize("settings", [DuplicateSettings(), DuplicateSettings(min_similarity=0.97)],
                         ids=["default", "looser"])
def test_banded_embedding_search_finds_exactly_the_exhaustive_pairs_on_the_planted_set(planted, settings):
    """The random-hyperplane band search (what runs above EXHAUSTIVE_BELOW images) returns the pairs the all-pairs
    search returns on the planted bccd copies' real embeddings, at the default and a looser threshold."""
    _, _, table, _, _, _ = planted
    exhaustive = _pair_set(*exhaustive_embedding_pairs(table.embeddings, settings)[:2])
    banded = _pair_set(*banded_embedding_pairs(table.embeddings, settings)[:2])
    assert len(exhaustive) >= 10  # the planted exact copies at least: a comparison of two empty sets proves nothing
    assert banded == exhaustive


def test_banded_embedding_search_matches_on_the_demo(demo_predictions):
    """The same on the full demo's embeddings (every split), where the all-pairs search is the reference."""
    settings = DuplicateSettings(min_similarity=0.98)
    exhaustive = _pair_set(*exhaustive_embedding_pairs(demo_predictions.embeddings, settings)[:2])
    banded = _pair_set(*banded_embedding_pairs(demo_predictions.embeddings, settings)[:2])
    assert exhaustive and banded == exhaustive


def test_the_scan_at_scale_reports_the_same_pairs_and_leaks(planted, monkeypatch):
    """`scan_leakage` with the banded search forced (as above EXHAUSTIVE_BELOW images): the same pairs, found by the
    same tests, and the same leaks as the exhaustive search."""
    from core import leakage

    _, _, table, _, hashes, readable = planted
    small = scan_leakage(table, hashes, readable)
    monkeypatch.setattr(leakage, "EXHAUSTIVE_BELOW", 0)
    large = scan_leakage(table, hashes, readable)
    columns = ["a", "b", "found_by", "hash_distance"]
    assert (small.pairs["found_by"] != "hash").any()  # the embeddings found some pairs
    pd.testing.assert_frame_equal(small.pairs[columns].sort_values(["a", "b"]).reset_index(drop=True),
                                  large.pairs[columns].sort_values(["a", "b"]).reset_index(drop=True))
    assert set(large.leaks["sample_id"]) == set(small.leaks["sample_id"])


def test_banded_search_keeps_each_rows_k_nearest_above_the_threshold():
    """Five images on a line at 0, 1, 3, 7 and 15 steps (every pair above the threshold) among 600 random ones: with
    k = 1 each keeps only its nearest, so exactly the four neighbouring pairs are near-duplicates, as in the all-pairs
    search; rows of a constant embedding (zero after centring) match nothing and make no pair a candidate."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 32)).astype(np.float32)
    direction = rng.normal(size=32).astype(np.float32)
    direction *= 0.004 * np.linalg.norm(x[0]) / np.linalg.norm(direction)
    for row, steps in enumerate((0, 1, 3, 7, 15)):
        x[row] = x[0] + steps * direction if row else x[0]
    settings = DuplicateSettings(min_similarity=0.99, k=1)
    pairs = _pair_set(*banded_embedding_pairs(x, settings)[:2])
    assert pairs == {(0, 1), (1, 2), (2, 3), (3, 4)}
    assert pairs == _pair_set(*exhaustive_embedding_pairs(x, settings)[:2])
    assert len(_pair_set(*banded_embedding_pairs(x, DuplicateSettings(min_similarity=0.99, k=4))[:2])) == 10
    flat = np.ones((50, 8), dtype=np.float32)
    assert len(banded_embedding_pairs(flat, DuplicateSettings())[0]) == 0
