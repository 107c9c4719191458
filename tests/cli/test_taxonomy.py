"""`python -m cli taxonomy` on the real bccd crops with their real taxonomy file (synthetic predictions): the printed
per-rank accuracies and error counts equal a direct computation; a workspace without a taxonomy gets a clear error."""

from __future__ import annotations

import pytest

from cli.main import main
from core import taxonomy_metrics as T
from core.taxonomy import read_taxonomy_csv
from tests.pages.eval_workspaces import build_bccd_workspace, load_table


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bccd_root):
    return build_bccd_workspace(tmp_path_factory.mktemp("cli-tax") / "ws", bccd_root)


def test_report_matches_direct_computation(workspace, capsys):
    assert main(["taxonomy", "--workspace", str(workspace), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    table = load_table(workspace).for_split("val")
    taxonomy = read_taxonomy_csv(workspace / "taxonomy.csv")
    frame = T.rank_metrics_frame(T.metrics_by_rank(table, taxonomy, n_boot=0))
    for row in frame.itertuples():
        line = next(line for line in out.splitlines() if line.startswith(f"{row.rank} "))
        assert f"{row.accuracy:.1%} [" in line, line
    severity = T.mistake_severity(table, taxonomy, n_boot=0)
    for row in severity.histogram.itertuples():
        assert f"LCA {row.lca_rank:<10} {row.errors:>6} errors" in out
    effect = T.decision_rule_effect(table, taxonomy, n_boot=0)
    assert f"changes {effect.n_changed:,} predictions" in out


def test_no_taxonomy_is_a_clear_error(tmp_path, bccd_root, capsys):
    root = build_bccd_workspace(tmp_path / "ws", bccd_root, predictions=False, taxonomy=False)
    assert main(["taxonomy", "--workspace", str(root)]) == 2
    assert "names no taxonomy; set `taxonomy = \"taxonomy.csv\"`" in capsys.readouterr().err
