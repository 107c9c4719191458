"""Bad input a user can give TaxaLens, one registry for both surfaces: each case builds a real workspace (real bccd
images, real SQLite, a real closed port) and says what the one-sentence error must name. `tests/cli/test_errors.py`
runs each through `python -m cli`, `tests/pages/test_bad_input.py` opens each in the dashboard."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BCCD_CLASSES = ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil")


@dataclass(frozen=True)
class BadInput:
    """One mistake, the command that meets it, where the dashboard meets it, and what the message must say."""

    name: str  # test id
    build: Callable[[Path, Path], Path]  # (empty folder, bccd root) -> the workspace folder the dashboard opens
    argv: Callable[[Path, Path], list[str]]  # (that workspace, a scratch folder) -> `python -m cli` arguments
    phrases: tuple[str, ...]  # each must be in the message; `{bccd}` stands for the bccd root
    page: str = "pages/home.py"  # the dashboard page that meets it
    click: str | None = None  # the label (prefix) of a button to press on that page first
    absent: tuple[str, ...] = ()  # what the message must not say


# ------------------------------------------------------------------------------------------------ workspace builders

def _toml(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "taxalens.toml").write_text(text, encoding="utf-8")
    return folder


def _on_bccd(extra: str = "") -> Callable[[Path, Path], Path]:
    """A workspace on the bccd folder, plus `extra` toml (`{folder}` is the workspace folder)."""
    return lambda folder, bccd: _toml(folder, f'[dataset]\nroot = "{bccd}"\n' + extra.format(folder=folder))


def _root_is_a_file(folder: Path, bccd: Path) -> Path:
    """`root` naming a file: the unreadable-folder case made real for a test that runs as root (a chmod 000 folder
    is readable to root; a file is never a folder to anyone)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("images are on the lab server\n", encoding="utf-8")
    return _toml(folder, '[dataset]\nroot = "notes.txt"\n')


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pg_down(folder: Path, bccd: Path) -> Path:
    return _on_bccd(f'\n[labels]\nurl = "postgresql://taxalens@127.0.0.1:{_closed_port()}/labels"\n')(folder, bccd)


def _corrupt_db(folder: Path, bccd: Path) -> Path:
    workspace = _on_bccd()(folder, bccd)
    (workspace / "labels.db").write_bytes(np.random.default_rng(11).integers(0, 256, 16384, np.uint8).tobytes())
    return workspace


def _with_checkpoint(write: Callable[[Path], None], file_name: str) -> Callable[[Path, Path], Path]:
    """A workspace on bccd listing checkpoint `bad` = `file_name`, written by `write(path)`."""
    def build(folder: Path, bccd: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        write(folder / file_name)
        (folder / "classes.txt").write_text("\n".join(BCCD_CLASSES) + "\n", encoding="utf-8")
        entry = f'\n[[checkpoints]]\nname = "bad"\npath = "{file_name}"\narch = "resnet10t"\nclasses = "classes.txt"\n'
        return _toml(folder, f'[dataset]\nroot = "{bccd}"\n{entry}')
    return build


def _text_file(path: Path) -> None:
    path.write_text("epoch,loss\n1,0.53\n2,0.41\n", encoding="utf-8")


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 65536, np.uint8).tobytes())


def _metadata_not_json(path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(BCCD_CLASSES))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"taxalens": "{'arch': 'resnet10t', 'class_names': ['Basophil']}"})  # Python, not JSON


def _manifest_rows(bccd: Path, per_class: dict[str, int]) -> list[str]:
    rows = []
    for name, n in per_class.items():
        rows += [f"{name}/{p.name}" for p in sorted((bccd / name).iterdir())[:n]]
    return rows


def _semicolons(folder: Path, bccd: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = _manifest_rows(bccd, {"Eosinophil": 4, "Monocyte": 4})
    # as a spreadsheet in a decimal-comma locale saves "CSV": semicolons between cells, commas inside numbers
    lines = ["path;label;diameter_um"] + [f"{row};{row.split('/')[0]};12,5" for row in rows]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return _toml(folder, f'[dataset]\nmanifest = "manifest.csv"\nroot = "{bccd}"\n')


def _one_image_class(folder: Path, bccd: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = _manifest_rows(bccd, {"Basophil": 1, "Eosinophil": 6, "Lymphocyte": 6, "Monocyte": 6})
    lines = ["path,label"] + [f"{row},{row.split('/')[0]}" for row in rows]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return _toml(folder, f'[dataset]\nmanifest = "manifest.csv"\nroot = "{bccd}"\n')


def _curated_export_without_root(folder: Path, bccd: Path) -> Path:
    """The team's workspace on bccd with a real curated export in it (`curated.csv`, paths relative to bccd), and
    a second workspace `reuse/` that names that export as its manifest but not its root: the dashboard opens that."""
    from core.export import export_curated_labels
    from core.labelstore import open_label_store
    from core.workspace import load_workspace

    team = _on_bccd()(folder, bccd)
    workspace = load_workspace(team)
    with open_label_store(workspace) as store:
        export_curated_labels(workspace.load_dataset(verify="none"), store, team / "curated.csv")
    return _toml(team / "reuse", '[dataset]\nmanifest = "../curated.csv"\n')


# --------------------------------------------------------------------------------------------------------- the cases

def _export(workspace: Path, scratch: Path) -> list[str]:
    return ["export", "--workspace", str(workspace), "--out", str(scratch / "curated.csv")]


def _predict_bad(workspace: Path, scratch: Path) -> list[str]:
    return ["predict", "--workspace", str(workspace), "--checkpoint", "bad", "--workers", "0"]


def _train(workspace: Path, scratch: Path) -> list[str]:
    return ["train", "--workspace", str(workspace), "--out", str(scratch / "run"), "--epochs", "1", "--img-size",
            "32", "--threads", "1"]


def _train_export_without_root(workspace: Path, scratch: Path) -> list[str]:
    return ["train", "--data", str(workspace.parent / "curated.csv"), "--out", str(scratch / "run"), "--epochs", "1",
            "--img-size", "32", "--threads", "1"]


COMPUTE = "Compute predictions with bad"
NOT_TRUST = ("--trust-checkpoint", "trust = true")

BAD_INPUTS = (
    BadInput("dataset-is-a-string", lambda f, b: _toml(f, 'dataset = "x"\n'), _export,
             ("taxalens.toml", "`dataset` must be a table", "[dataset] on a line of its own")),
    BadInput("val-fraction-is-text", _on_bccd('val_fraction = "lots"\n'), _export,
             ("taxalens.toml", "`val_fraction` in [dataset] must be a number", "'lots'", "val_fraction = 0.2")),
    BadInput("root-is-the-filesystem-root", lambda f, b: _toml(f, '[dataset]\nroot = "/"\n'), _export,
             ("dataset root / is the filesystem root", "one sub-folder per class")),
    BadInput("root-is-a-file", _root_is_a_file, _export,
             ("taxalens.toml", "`root` in [dataset]", "notes.txt, a file, not a folder")),
    BadInput("postgres-unreachable", _pg_down, _export,
             ("cannot open the label store postgresql://taxalens@127.0.0.1:", "`url` under [labels]",
              "nothing accepts connections"), page="pages/adjudicate.py"),
    BadInput("mysql-url", _on_bccd('\n[labels]\nurl = "mysql://taxalens@127.0.0.1/labels"\n'), _export,
             ("`url` under [labels]", "mysql", "use sqlite:///", "postgresql://"), page="pages/adjudicate.py"),
    BadInput("labels-db-is-random-bytes", _corrupt_db, _export,
             ("labels.db is not a SQLite database", "left untouched", "restore labels.db from a backup"),
             page="pages/adjudicate.py"),
    BadInput("text-file-renamed-pth", _with_checkpoint(_text_file, "model.pth"), _predict_bad,
             ("model.pth is not a checkpoint", "a text file", "check the path"), page="pages/overview.py",
             click=COMPUTE, absent=NOT_TRUST),
    BadInput("random-bytes-renamed-pth", _with_checkpoint(_random_bytes, "model.pth"), _predict_bad,
             ("model.pth is not a checkpoint", "binary data", "check the path"), page="pages/overview.py",
             click=COMPUTE, absent=NOT_TRUST),
    BadInput("metadata-not-json", _with_checkpoint(_metadata_not_json, "model.safetensors"), _predict_bad,
             ("model.safetensors", "`taxalens` metadata in the header is not JSON", "re-save"),
             page="pages/overview.py"),
    BadInput("one-image-in-a-class", _one_image_class, _train,
             ("'Basophil' (1 image)", "fewer than 2 images", "add images"), page="pages/retrain.py",
             click="Start training"),
    BadInput("semicolon-manifest", _semicolons, _export,
             ("manifest.csv is semicolon-separated", "comma")),
    BadInput("curated-export-without-root", _curated_export_without_root, _train_export_without_root,
             ("curated.csv is a curated export", "its images are under {bccd}", "--root {bccd}")),
)


# ------------------------------------------------------------------------------ a folder the process may not read

def build_unreadable_root(folder: Path) -> Path:
    """A workspace whose dataset root is a folder with mode 000. Only a process without root's permission override
    is refused by it: run the command under `as_ordinary_process`."""
    locked = folder / "locked-images"
    (locked / "Basophil").mkdir(parents=True)
    locked.chmod(0)
    return _toml(folder, f'[dataset]\nroot = "{locked}"\n')


def as_ordinary_process(argv: list[str]) -> list[str]:
    """`argv` run so that file permissions apply to it: as root (tests often run as root, where chmod 000 stops
    nothing), without the capabilities that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), via setpriv."""
    import os
    import shutil

    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        import pytest

        pytest.skip("running as root without setpriv: no way to make a folder unreadable to this process")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *argv]


UNREADABLE_PHRASES = ("cannot read", "locked-images", "permission denied", "give this account read access")
