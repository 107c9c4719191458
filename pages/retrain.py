"""Retrain: start a training run in the background from the workspace dataset or a curated export, follow it live.

Runs are separate processes (`python -m core train`); this page only starts them and reads their files, so a reload
or a second browser shows the same runs. A finished run adds its checkpoint to the workspace by itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from core.errors import USER_ERRORS, user_message
from core.train_runs import list_runs, read_log_tail, start_training_run, stop_run
from core.training_data import count_new_images, image_root_problem
from pages._access import current_actor, explain_hidden, may
from pages._cached import start_page
from pages._crossval_job import render_crossval_job
from pages._text import md

ARCHS = ("resnet10t", "resnet18", "resnet50", "convnext_atto", "convnext_tiny", "efficientnet_b0",
         "mobilenetv3_small_050", "mobilenetv3_large_100", "vit_tiny_patch16_224", "vit_small_patch16_224")
FROM_SCRATCH = "(none: train from the architecture)"
WORKSPACE_DATA = "(workspace dataset)"
OTHER_CSV = "(upload a CSV or give its path below)"
# Run state -> (material icon, badge colour). Material icons ship with Streamlit; the emoji used before rendered as
# an empty box in browsers without an emoji font.
RUN_BADGES = {"starting": (":material/hourglass_top:", "gray"), "running": (":material/autorenew:", "blue"),
              "done": (":material/check_circle:", "green"), "failed": (":material/error:", "red"),
              "stopped": (":material/stop_circle:", "orange")}


def _save_upload(upload, folder: Path) -> Path:
    """Keep an uploaded CSV in the workspace's exports folder (a fresh name; never overwrites) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(upload.name).stem or "upload"
    target = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    target.write_bytes(upload.getvalue())
    return target


ctx = start_page("Retrain")
workspace = ctx.workspace
st.caption("Train a new checkpoint from the workspace dataset or a curated label export (excluded samples are left "
           "out, relabels applied). The run continues in the background; this page follows it.")

if may("retrain"):  # leads and admins start training and cross-validation runs; everyone else follows them
    dataset_root = workspace.dataset_root or (workspace.dataset_source if workspace.dataset_source.is_dir()
                                              else workspace.dataset_source.parent)
    with st.form("retrain-form"):
        left, right = st.columns(2)
        name = left.text_input("New checkpoint name", value=f"retrain-{time.strftime('%Y%m%d-%H%M')}", key="rt-name")
        exports = sorted(str(p) for p in workspace.root.glob("*.csv")) + sorted(
            str(p) for p in (workspace.root / "exports").glob("*.csv"))
        new_counts = {p: count_new_images(p) for p in exports}
        data = right.selectbox("Training data", [WORKSPACE_DATA, *exports, OTHER_CSV], key="rt-data",
                               format_func=lambda p: f"{p} (+{new_counts[p]:,} new images)" if new_counts.get(p)
                               else p,
                               help="A curated export written by `python -m cli export` or the Adjudicate page, or any "
                               "manifest CSV")
        upload = right.file_uploader("Upload a curated export (CSV)", type=["csv"], key="rt-upload",
                                     help="Kept in the workspace's exports/ folder")
        typed = right.text_input("…or the path of a CSV anywhere on the server", key="rt-path",
                                 placeholder="/data/curated_labels.csv")
        image_root = right.text_input("Image root of the CSV", value=str(dataset_root), key="rt-root",
                                      help="The folder the CSV's image paths are relative to: for a curated export, "
                                      "the dataset root it was exported from (this workspace's, unless it came from "
                                      "elsewhere)")
        init_options = [FROM_SCRATCH, *[c.name for c in workspace.checkpoints]]
        init = left.selectbox("Start from checkpoint", init_options, key="rt-init",
                              help="Fine-tune an existing checkpoint (its architecture and classes)")
        arch = left.selectbox("Architecture (when not starting from a checkpoint)", ARCHS, key="rt-arch")
        c1, c2, c3, c4 = st.columns(4)
        epochs = c1.number_input("Epochs", 1, 500, 20, key="rt-epochs")
        img_size = c2.number_input("Image size", 32, 1024, 224, step=16, key="rt-img")
        batch = c3.number_input("Batch size", 2, 1024, 64, key="rt-batch")
        lr = c4.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="rt-lr")
        c5, c6, c7, c8 = st.columns(4)
        minutes = c5.number_input("Time budget (min, 0 = none)", 0.0, 10_000.0, 0.0, key="rt-minutes")
        balance = c6.selectbox("Class balance", ("sampler", "loss", "none"), key="rt-balance")
        pretrained = c7.checkbox("ImageNet weights (timm cache)", key="rt-pretrained")
        include_disputed = c7.checkbox("Include disputed samples", key="rt-disputed",
                                       help="A curated export's status=disputed rows (reviewers disagree, no ruling) "
                                       "train with their original label; by default they are left out")
        new_head = c8.checkbox("New classifier head", key="rt-newhead",
                               help="With a start checkpoint: train a fresh head for the data's classes")
        threads = c8.number_input("CPU threads (0 = default)", 0, 256, 0, key="rt-threads")
        submitted = st.form_submit_button("Start training", type="primary")


    def _training_csv() -> Path | None:
        """The CSV the form names (None: the workspace dataset); an upload is saved first. Raises ValueError."""
        if upload is not None:
            return _save_upload(upload, workspace.root / "exports")
        if typed.strip():
            return Path(typed.strip()).expanduser()
        if data == OTHER_CSV:
            raise ValueError("choose a CSV: upload one or type its path under Training data")
        return None if data == WORKSPACE_DATA else Path(data)


    if submitted:
        options = {"epochs": int(epochs), "img-size": int(img_size), "batch-size": int(batch), "lr": float(lr),
                   "balance": balance, "max-minutes": float(minutes) or None, "threads": int(threads) or None,
                   "pretrained": bool(pretrained), "include-disputed": bool(include_disputed)}
        if init != FROM_SCRATCH:
            options["init-checkpoint"] = str(workspace.checkpoint(init).path)
            options["new-head"] = bool(new_head)
        else:
            options["arch"] = arch
        try:
            csv = _training_csv()
            if csv is not None:
                if not csv.is_file():
                    raise FileNotFoundError(f"training data not found: {csv}")
                problem = image_root_problem(csv, image_root.strip())
                if problem:
                    raise ValueError(problem)
                options["root"] = str(Path(image_root.strip()).expanduser().resolve())
            run = start_training_run(workspace, name.strip(), data=csv, options=options, actor=current_actor())
        except USER_ERRORS as exc:
            st.error(md(user_message(exc)))
        else:
            new = count_new_images(csv) if csv is not None else 0
            st.success(f"Started run **{md(run.name)}** in {md(run.run_dir)}"
                       + (f" on {md(csv)} (images under {md(options['root'])})" if csv is not None else "")
                       + (f"; it adds **{new:,} new images** (labelled pool images)" if new else ""))

else:
    explain_hidden("retrain", "Starting a training run")

render_crossval_job(ctx)  # label errors in the training split are found from out-of-fold probabilities (its own gate)


@st.fragment(run_every=2.0)
def _runs_panel() -> None:
    runs = list_runs(workspace, kind="train")
    if not runs:
        st.info("No training runs in this workspace yet.")
        return
    st.subheader("Runs")
    for index, run in enumerate(runs):
        event = run.status.get("last_event") or {}
        epoch = run.status.get("last_epoch") or {}
        icon, color = RUN_BADGES.get(run.state, RUN_BADGES["starting"])
        with st.expander(f"{md(run.name)} · {run.state}", icon=icon, expanded=index == 0):
            st.badge(run.state, icon=icon, color=color)
            if run.active:
                eta = event.get("eta_s")
                text = (f"epoch {event.get('epoch', '?')}/{event.get('epochs', '?')}"
                        + (f" · step {event['step']}/{event['steps']}" if event.get("event") == "step" else "")
                        + (f" · ETA {eta / 60:.1f} min" if isinstance(eta, int | float) else ""))
                st.progress(run.epoch_progress, text=text)
                if may("retrain") and st.button("Stop", key=f"rt-stop-{run.run_dir.name}"):
                    stop_run(run, actor=current_actor())
            if epoch:
                st.caption(f"last epoch {epoch.get('epoch')}: val macro-F1 {epoch.get('val_macro_f1', 0):.3f} "
                           f"(best {epoch.get('best_macro_f1', 0):.3f} at epoch {epoch.get('best_epoch')})")
            if run.state == "done":
                added = run.status.get("added_as")
                st.success(f"best val macro-F1 {run.status.get('best_macro_f1', 0):.4f} at epoch "
                           f"{run.status.get('best_epoch')} ({run.status.get('stop_reason')}); "
                           + (f"added to the workspace as **{md(added)}**" if added else "not added to the workspace"))
            elif run.state == "failed":
                st.error(md(run.status.get("error", "the run failed; see the log")))
            elif run.state == "stopped":
                st.warning("The process ended without finishing (stopped or killed); see the log.")
            st.code(read_log_tail(run) or "(no output yet)", language=None)
            st.caption(md(run.run_dir))


_runs_panel()
