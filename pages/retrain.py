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
from pages._cached import start_page
from pages._crossval_job import render_crossval_job

ARCHS = ("resnet10t", "resnet18", "resnet50", "convnext_atto", "convnext_tiny", "efficientnet_b0",
         "mobilenetv3_small_050", "mobilenetv3_large_100", "vit_tiny_patch16_224", "vit_small_patch16_224")
FROM_SCRATCH = "(none: train from the architecture)"

ctx = start_page("Retrain")
workspace = ctx.workspace
st.caption("Train a new checkpoint from the workspace dataset or a curated label export (excluded samples are left "
           "out, relabels applied). The run continues in the background; this page follows it.")

with st.form("retrain-form"):
    left, right = st.columns(2)
    name = left.text_input("New checkpoint name", value=f"retrain-{time.strftime('%Y%m%d-%H%M')}", key="rt-name")
    exports = sorted(str(p) for p in workspace.root.glob("*.csv")) + sorted(
        str(p) for p in (workspace.root / "exports").glob("*.csv"))
    data = right.selectbox("Training data", ["(workspace dataset)", *exports], key="rt-data",
                           help="A curated export written by `python -m core export` or the review page")
    init_options = [FROM_SCRATCH, *[c.name for c in workspace.checkpoints]]
    init = left.selectbox("Start from checkpoint", init_options, key="rt-init",
                          help="Fine-tune an existing checkpoint (its architecture and classes)")
    arch = right.selectbox("Architecture (when not starting from a checkpoint)", ARCHS, key="rt-arch")
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", 1, 500, 20, key="rt-epochs")
    img_size = c2.number_input("Image size", 32, 1024, 224, step=16, key="rt-img")
    batch = c3.number_input("Batch size", 2, 1024, 64, key="rt-batch")
    lr = c4.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="rt-lr")
    c5, c6, c7, c8 = st.columns(4)
    minutes = c5.number_input("Time budget (min, 0 = none)", 0.0, 10_000.0, 0.0, key="rt-minutes")
    balance = c6.selectbox("Class balance", ("sampler", "loss", "none"), key="rt-balance")
    pretrained = c7.checkbox("ImageNet weights (timm cache)", key="rt-pretrained")
    new_head = c8.checkbox("New classifier head", key="rt-newhead",
                           help="With a start checkpoint: train a fresh head for the data's classes")
    threads = c8.number_input("CPU threads (0 = default)", 0, 256, 0, key="rt-threads")
    submitted = st.form_submit_button("Start training", type="primary")

if submitted:
    options = {"epochs": int(epochs), "img-size": int(img_size), "batch-size": int(batch), "lr": float(lr),
               "balance": balance, "max-minutes": float(minutes) or None, "threads": int(threads) or None,
               "pretrained": bool(pretrained)}
    if init != FROM_SCRATCH:
        options["init-checkpoint"] = str(workspace.checkpoint(init).path)
        options["new-head"] = bool(new_head)
    else:
        options["arch"] = arch
    try:
        run = start_training_run(workspace, name.strip(), data=None if data.startswith("(") else Path(data),
                                 options=options)
    except USER_ERRORS as exc:
        st.error(user_message(exc))
    else:
        st.success(f"Started run **{run.name}** in `{run.run_dir}`")

render_crossval_job(ctx)  # label errors in the training split are found from out-of-fold probabilities


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
        badge = {"done": "✅", "failed": "❌", "stopped": "⏹️"}.get(run.state, "⏳")
        with st.expander(f"{badge} {run.name} · {run.state}", expanded=index == 0):
            if run.active:
                eta = event.get("eta_s")
                text = (f"epoch {event.get('epoch', '?')}/{event.get('epochs', '?')}"
                        + (f" · step {event['step']}/{event['steps']}" if event.get("event") == "step" else "")
                        + (f" · ETA {eta / 60:.1f} min" if isinstance(eta, int | float) else ""))
                st.progress(run.epoch_progress, text=text)
                if st.button("Stop", key=f"rt-stop-{run.run_dir.name}"):
                    stop_run(run)
            if epoch:
                st.caption(f"last epoch {epoch.get('epoch')}: val macro-F1 {epoch.get('val_macro_f1', 0):.3f} "
                           f"(best {epoch.get('best_macro_f1', 0):.3f} at epoch {epoch.get('best_epoch')})")
            if run.state == "done":
                added = run.status.get("added_as")
                st.success(f"best val macro-F1 {run.status.get('best_macro_f1', 0):.4f} at epoch "
                           f"{run.status.get('best_epoch')} ({run.status.get('stop_reason')}); "
                           + (f"added to the workspace as **{added}**" if added else "not added to the workspace"))
            elif run.state == "failed":
                st.error(run.status.get("error", "the run failed; see the log"))
            elif run.state == "stopped":
                st.warning("The process ended without finishing (stopped or killed); see the log.")
            st.code(read_log_tail(run) or "(no output yet)", language=None)
            st.caption(f"`{run.run_dir}`")


_runs_panel()
