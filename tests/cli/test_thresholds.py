"""`python -m core thresholds` on real bccd (synthetic predictions): the JSON/CSV file, the shim, the errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from core.calibration import fit_temperature, save_temperature
from core.workspace import load_workspace
from tests.pages.eval_workspaces import CHECKPOINT, build_bccd_workspace, load_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bccd_ws(bccd_root: Path, tmp_path_factory) -> Path:
    return build_bccd_workspace(tmp_path_factory.mktemp("thr") / "bccd", bccd_root)


def test_thresholds_json_names_every_class(bccd_ws: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "thresholds.json"
    assert main(["thresholds", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--precision", "0.9",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    table = load_table(bccd_ws)
    assert set(data["classes"]) == set(table.class_names)
    assert data["target_precision"] == 0.9 and data["checkpoint"] == CHECKPOINT and data["split"] == "val"
    assert data["n_rows"] == int((table.frame["split"] == "val").sum())
    for entry in data["classes"].values():
        if entry["threshold"] is not None:
            assert entry["precision"] >= 0.9
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_second_call_reads_the_thresholds_from_disk(bccd_ws: Path, tmp_path: Path, monkeypatch) -> None:
    from core import result_cache

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    args = ["thresholds", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--precision", "0.85", "--out"]
    assert main([*args, str(first)]) == 0
    monkeypatch.setattr(result_cache, "auto_accept_thresholds", lambda *a, **k: pytest.fail("computed again"))
    assert main([*args, str(second)]) == 0
    assert second.read_bytes() == first.read_bytes()
    with pytest.raises(pytest.fail.Exception, match="computed again"):  # another target is another entry
        main(["thresholds", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--precision", "0.8", "--out",
              str(second)])


def test_calibrated_needs_a_stored_temperature_then_uses_it(bccd_ws: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.csv"
    args = ["thresholds", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--calibrated", "--out", str(out)]
    assert main(args) == 2
    assert "no temperature stored" in capsys.readouterr().err
    table = load_table(bccd_ws)
    save_temperature(load_workspace(bccd_ws).cache_dir, fit_temperature(table.for_split("val"), checkpoint=CHECKPOINT))
    assert main(args) == 0
    assert out.read_text(encoding="utf-8").startswith("class,threshold")


def test_core_shim_lists_thresholds() -> None:
    result = subprocess.run([sys.executable, "-m", "core", "thresholds", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "--precision" in result.stdout and "--out" in result.stdout


def test_bad_precision_is_a_clear_error(bccd_ws: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad.json"
    assert main(["thresholds", "--workspace", str(bccd_ws), "--checkpoint", CHECKPOINT, "--precision", "1.5",
                 "--out", str(out)]) != 0
    assert "--precision" in capsys.readouterr().err and not out.exists()


def test_the_thresholds_command_reads_predictions_without_torch(bccd_ws: Path, tmp_path: Path) -> None:
    """A deployment script calls `thresholds` often: it reads the stored predictions without importing torch/timm
    (their import was most of a warm call's time)."""
    code = ("import sys; from cli.main import main; "
            f"rc = main(['thresholds', '--workspace', {str(bccd_ws)!r}, '--checkpoint', {CHECKPOINT!r}, "
            f"'--precision', '0.85', '--out', {str(tmp_path / 't.json')!r}]); "
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'torchvision'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert json.loads((tmp_path / "t.json").read_text())
