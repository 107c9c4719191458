"""Landing page (AppTest through app.py, where it is the default page): dataset counts, classes, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.workspace import load_workspace
from tests.pages.eval_workspaces import CHECKPOINT, plain

REPO = Path(__file__).resolve().parents[2]


def test_landing_page_shows_the_workspace(drawn_workspace, open_app):
    app = open_app(drawn_workspace)  # no page named: the landing page
    dataset = load_workspace(drawn_workspace).load_dataset()
    assert app.title[0].value == "TaxaLens"
    assert any(str(drawn_workspace) in plain(c.value) for c in app.caption)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Classes"] == str(len(dataset.class_names)) == "9"
    assert metrics["Images"] == f"{len(dataset):,}"
    assert metrics["Specimens"] == f"{dataset.samples['specimen_id'].nunique():,}"

    classes = next(d.value for d in app.dataframe if "total" in d.value.columns)
    assert list(classes.index) == list(dataset.class_names)
    assert int(classes["total"].sum()) == len(dataset)
    assert {"phylum", "order"} <= set(classes.columns)  # the demo's taxonomy

    checkpoints = next(d.value for d in app.dataframe if "status" in d.value.columns)
    assert checkpoints["name"].tolist() == [CHECKPOINT]
    assert checkpoints["status"].tolist() == ["ok"]
    assert checkpoints["predictions"].tolist() == ["cached"]
    assert not any("members" in d.value.columns for d in app.dataframe)  # no [[ensembles]] in this workspace


# What the landing page of a workspace without pools never needs: torch (the cached predictions are found from the
# checkpoint's header), the calibration and curation machinery (the sidebar's switches are names from core.modes),
# the label store (sqlalchemy), scipy, and the annotation and confidence page helpers.
NOT_ON_THE_LANDING_PAGE = ("torch", "timm", "torchvision", "core.calibration", "core.curation", "core.labelstore",
                           "sqlalchemy", "scipy", "pages._annotate", "pages._confidence", "pages._review_support")


def test_the_landing_page_imports_no_torch(drawn_workspace):
    """A server restart's first page imports none of `NOT_ON_THE_LANDING_PAGE` (run in a fresh interpreter; this
    test process has them loaded)."""
    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"app = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=180)\n"
        f"app.session_state['tl_workspace'] = {str(drawn_workspace)!r}\n"
        "app.run()\n"
        "assert not app.exception, [e.value for e in app.exception]\n"
        "rows = next(d.value for d in app.dataframe if 'predictions' in d.value.columns)\n"
        f"print(sorted(m for m in {NOT_ON_THE_LANDING_PAGE!r} if m in sys.modules), rows['predictions'].tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TAXALENS_IMPORT_WARMUP": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[] ['cached']"


def test_a_rerun_reuses_the_image_check_and_check_again_sees_an_edited_image(tmp_path, open_app):
    """Reruns never stat the images again (a million images: seconds each): an image edited in place is noticed when
    the dataset is loaded again, which "Check the images again" does; the edited image's new stamp changes the
    predictions key, so the predictions are no longer the cached ones."""
    from PIL import Image

    from tests.pages.eval_workspaces import build_drawn_workspace

    root = build_drawn_workspace(tmp_path / "ws", scale=0.05)
    app = open_app(root)

    def predictions() -> list[str]:
        return next(d.value for d in app.dataframe if "predictions" in d.value.columns)["predictions"].tolist()

    assert predictions() == ["cached"]
    edited = Path(load_workspace(root).load_dataset().samples["path"].iloc[0])
    with Image.open(edited) as image:
        image.convert("RGB").rotate(90).save(edited, format=image.format)  # in place: same path, new bytes
    info = edited.stat()
    os.utime(edited, ns=(info.st_atime_ns, info.st_mtime_ns + 2_000_000_000))
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert predictions() == ["cached"]  # the rerun used the load's check of the files
    app.button(key="home-recheck").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert predictions() == ["not computed"]
    assert {m.label: m.value for m in app.metric}["Images"] == f"{len(load_workspace(root).load_dataset()):,}"


def test_a_large_dataset_opens_from_its_snapshot_and_a_background_check_reloads_what_changed(tmp_path, open_app,
                                                                                             monkeypatch):
    """A dataset at the quick-open size (lowered here from 50,000 to 5) is shown from the snapshot its last full
    load left, with no image stat-ed, while a child process checks the files; a removed image is then noticed: the
    next run shows the new dataset. A snapshot the check itself wrote is not checked again; "Check the images again"
    starts a new check, which finds nothing changed."""
    import streamlit as st

    from core.dataset_snapshot import QUICK_OPEN_ENV
    from pages._cached import dataset_check
    from tests.pages.eval_workspaces import build_drawn_workspace

    monkeypatch.setenv(QUICK_OPEN_ENV, "5")
    root = build_drawn_workspace(tmp_path / "ws", scale=0.05)
    workspace = load_workspace(root)
    full = workspace.load_dataset()  # what `predict --workspace` or `index` leaves behind: a snapshot
    assert workspace.dataset_snapshot_path.is_file()
    old_snapshot = workspace.dataset_snapshot_path.read_bytes()
    Path(full.samples["path"].iloc[0]).unlink()

    app = open_app(root)
    images = lambda: {m.label: m.value for m in app.metric}["Images"]  # noqa: E731
    assert images() == f"{len(full):,}"  # the snapshot, before any file was looked at
    assert any("Checking the" in c.value and "in the background" in c.value for c in app.sidebar.caption)
    check = dataset_check(workspace)
    assert check is not None and check.wait(300) and check.state == "changed", check.detail

    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert images() == f"{len(full) - 1:,}"  # the snapshot the check wrote
    assert any("read again" in i.value for i in app.sidebar.info)
    assert any(s.value.startswith("Skipped files (1)") for s in app.subheader)
    app.run()
    assert dataset_check(workspace) is check  # that snapshot is not checked a second time

    # as if the check could not have replaced the snapshot (a read-only cache folder): the out-of-date one is not
    # shown again, nor checked again in a loop; the dataset is loaded fully
    workspace.dataset_snapshot_path.write_bytes(old_snapshot)
    st.cache_resource.clear()
    app.run()
    assert images() == f"{len(full) - 1:,}" and dataset_check(workspace) is check

    app.button(key="home-recheck").click().run()
    again = dataset_check(workspace)
    assert again is not check and again.wait(300) and again.state == "unchanged", again.detail
    app.run()
    assert any(c.value.startswith(":material/check: All") and "unchanged" in c.value for c in app.sidebar.caption)
