"""Ensembles: mean and per-class-F1-weighted probabilities, alignment, differing class lists."""

from __future__ import annotations

import numpy as np
import pytest

from core.compare import compare_predictions
from core.ensemble import EnsembleSpec, add_ensemble, class_weights_from_f1, ensemble_tables, read_ensemble_specs
from core.metrics import compute_headline_metrics
from core.predictions import build_prediction_table

CLASSES = ("ant", "bee", "fly")


def _table(probs, labels, *, classes=CLASSES, ids=None, splits=None, name="m"):
    probs = np.asarray(probs, dtype=np.float32)
    n = len(probs)
    ids = ids or [f"s{i}" for i in range(n)]
    return build_prediction_table(ids, probs, np.arange(n * 2, dtype=np.float32).reshape(n, 2), labels=list(labels),
                                  splits=splits or ["val"] * n, specimen_ids=ids, class_names=classes,
                                  meta={"checkpoint": name, "checkpoint_sha256": name * 4})


def test_mean_is_the_average_probability_and_rows_are_aligned_by_id():
    a = _table([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], ["ant", "bee"], name="a")
    b = _table([[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], ["bee", "ant"], ids=["s1", "s0"], name="b")
    ens = ensemble_tables([a, b], method="mean", name="a+b")
    assert list(ens.frame["sample_id"]) == ["s0", "s1"]
    np.testing.assert_allclose(ens.pred_probs[0], [(0.7 + 0.3) / 2, (0.2 + 0.3) / 2, (0.1 + 0.4) / 2], atol=1e-6)
    np.testing.assert_allclose(ens.pred_probs[1], [(0.1 + 0.2) / 2, (0.8 + 0.2) / 2, (0.1 + 0.6) / 2], atol=1e-6)
    assert list(ens.frame["pred"]) == ["ant", "bee"]
    assert ens.meta["checkpoint"] == "a+b" and ens.meta["ensemble"]["members"] == ["a", "b"]
    np.testing.assert_array_equal(ens.embeddings, a.embeddings)


def test_f1_weights_follow_each_models_per_class_skill():
    # model A is perfect on ant and useless on fly; B the opposite. The weighted ensemble trusts each on its class.
    labels = ["ant", "ant", "fly", "fly", "bee", "bee"]
    a_probs = [[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1],
               [0.1, 0.8, 0.1]]
    b_probs = [[0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.05, 0.05, 0.9], [0.05, 0.05, 0.9], [0.1, 0.8, 0.1],
               [0.1, 0.8, 0.1]]
    a, b = _table(a_probs, labels, name="a"), _table(b_probs, labels, name="b")
    weights = class_weights_from_f1([a, b], CLASSES, split="val")
    assert weights[0, 0] == pytest.approx(2 * 2 / (2 + 4))  # A on ant: tp 2, support 2, predicted 4
    assert weights[1, 0] == 0.0  # B never predicts ant
    assert weights[0, 2] == 0.0 and weights[1, 2] == pytest.approx(2 * 2 / (2 + 4))
    weighted = ensemble_tables([a, b], method="f1_weighted")
    # per class: the F1-weighted average of the members' probabilities, then each row renormalised
    raw = (weights[0] * np.array(a_probs) + weights[1] * np.array(b_probs)) / weights.sum(axis=0)
    np.testing.assert_allclose(weighted.pred_probs, raw / raw.sum(axis=1, keepdims=True), atol=1e-6)
    # the ant rows follow A (B's 0.7 "fly" has no say on fly-vs-ant beyond its fly weight), the fly rows follow B
    assert list(weighted.frame["pred"]) == labels
    np.testing.assert_allclose(weighted.pred_probs.sum(axis=1), 1.0, atol=1e-5)
    assert weighted.meta["ensemble"]["weights_split"] == "val"


def test_class_lists_may_differ_and_a_member_only_votes_on_its_classes():
    a = _table([[0.5, 0.5]], ["ant"], classes=("ant", "bee"), name="a")
    b = _table([[0.2, 0.8]], ["ant"], classes=("ant", "wasp"), name="b")
    ens = ensemble_tables([a, b])
    assert ens.class_names == ("ant", "bee", "wasp")
    raw = np.array([(0.5 + 0.2) / 2, 0.5, 0.8])
    np.testing.assert_allclose(ens.pred_probs[0], raw / raw.sum(), atol=1e-6)


def test_an_ensemble_is_evaluated_and_compared_like_a_checkpoint():
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.choice(CLASSES, size=n)
    y = np.array([CLASSES.index(c) for c in labels])
    def member(seed):
        noise = np.random.default_rng(seed).normal(0, 1.0, size=(n, 3))
        logits = noise + 1.2 * np.eye(3)[y]
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    tables = [_table(member(s), labels, name=f"m{s}") for s in (1, 2, 3)]
    ens = ensemble_tables(tables)
    single = compute_headline_metrics(tables[0], n_boot=0)["macro_f1"].value
    combined = compute_headline_metrics(ens, n_boot=0)["macro_f1"].value
    assert combined > single  # independent errors average out
    result = compare_predictions(tables[0], ens, n_boot=300)
    assert result.metric("macro_f1")["delta_low"] > 0


def test_bad_ensembles_are_refused():
    a = _table([[0.5, 0.3, 0.2]], ["ant"])
    with pytest.raises(ValueError, match="at least two"):
        ensemble_tables([a])
    with pytest.raises(ValueError, match="share no sample"):
        ensemble_tables([a, _table([[0.5, 0.3, 0.2]], ["ant"], ids=["other"])])
    with pytest.raises(ValueError, match="method"):
        ensemble_tables([a, a], method="vote")


def test_ensembles_are_stored_in_the_workspace_toml(tmp_path, bccd_root):
    from core.workspace import load_workspace

    (tmp_path / "taxalens.toml").write_text(
        f'[dataset]\nroot = "{bccd_root}"\n\n[[checkpoints]]\nname = "a"\npath = "a.safetensors"\n\n'
        '[[checkpoints]]\nname = "b \\"quoted\\""\npath = "b.safetensors"\n', encoding="utf-8")
    add_ensemble(tmp_path, EnsembleSpec("a+b", ("a", 'b "quoted"'), "f1_weighted"))
    specs = read_ensemble_specs(load_workspace(tmp_path))
    assert specs == (EnsembleSpec("a+b", ("a", 'b "quoted"'), "f1_weighted", "val"),)
    with pytest.raises(ValueError, match="already has"):
        add_ensemble(tmp_path, EnsembleSpec("a+b", ("a", 'b "quoted"')))
    with pytest.raises(ValueError, match="unknown checkpoint"):
        add_ensemble(tmp_path, EnsembleSpec("x", ("a", "zzz")))
    assert len(read_ensemble_specs(load_workspace(tmp_path))) == 1  # a refused entry is never written
