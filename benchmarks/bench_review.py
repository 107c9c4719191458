"""Keyboard review speed in a real browser: key press -> the next sample rendered, on the demo workspace on CPU.

    .venv/bin/python benchmarks/bench_review.py [--workspace demo_workspace] [--presses 20] [--cam on|off] [--pause S]

Serves app.py (`streamlit run`) on a private copy of the workspace (its label store starts empty; the given folder is
never written), opens the Review queue in headless Chromium, enters a reviewer and warms the page up (ranking,
model, first Grad-CAM maps). Then, per shortcut, it presses the key `--presses` times and times each press until
the next sample is rendered (its id in the header and its image, captioned with the id, on screen: the page renders
the facts and the decision buttons before any Grad-CAM work), and until the script run has ended (the sample's
Grad-CAM maps included; the next sample's are computed on a background thread and not waited for); it waits for that
end before the next press. A key press reruns only the page's sample fragment (`st.fragment`), not the sidebar, the
queue pickers or the ranking. Prints a table
with the median, 90th percentile and max per key; the target is a median <= 0.5 s for "rendered".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pages._review_support import SHORTCUTS  # noqa: E402
from tests.e2e.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve_app  # noqa: E402

TARGET_MEDIAN_S = 0.5
TIMEOUT_MS = 180_000
KEYS = {"next (n)": SHORTCUTS["rv-next"], "confirm (k)": SHORTCUTS["rv-confirm"]}
_NEXT_RENDERED = """before => {
    const nav = document.querySelector('.st-key-rv-nav');
    if (!nav || nav.innerText.includes(before)) return false;
    const match = nav.innerText.match(/queue rank \\d+ · (\\S+)/);
    if (!match) return false;
    const captions = [...document.querySelectorAll('[data-testid="stImageCaption"]')].map(c => c.innerText.trim());
    return captions.includes(match[1]);
}"""
_RUN_ENDED = """() => document.querySelector('[data-testid="stApp"]')
    .getAttribute('data-test-script-state') === 'notRunning'"""


def _shown(page) -> str:
    text = page.locator(".st-key-rv-nav").inner_text()
    return text.split("queue rank", 1)[1].split("·", 1)[1].split()[0]


def measure(workspace: Path, *, presses: int, cam: bool, pause: float = 0.0) -> dict[tuple[str, str], list[float]]:
    """Seconds from each key press to the next sample rendered and to the run's end, per (key, "rendered"|"ended")."""
    from playwright.sync_api import sync_playwright

    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        copy = Path(tmp) / "ws"
        shutil.copytree(workspace, copy, ignore=shutil.ignore_patterns("labels.db*"))
        with serve_app(copy, Path(tmp) / "streamlit.log") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("link", name="Review queue").click()
            box = page.get_by_role("textbox", name="Your name", exact=True)
            box.fill("bench")
            box.press("Enter")
            page.locator(".st-key-rv-confirm button:not([disabled])").wait_for()
            if not cam:
                page.get_by_text("Grad-CAM for the suggested and the given class").click()
            page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
            page.locator("h1").first.click()  # focus out of the text box
            for _ in range(2):  # warm-up presses: caches of the first samples, fonts, chart bundles
                before = _shown(page)
                page.keyboard.press(SHORTCUTS["rv-next"])
                page.wait_for_function(_NEXT_RENDERED, arg=before)
                page.wait_for_function(_RUN_ENDED)
            for name, key in KEYS.items():
                for _ in range(presses):
                    before = _shown(page)
                    start = time.perf_counter()
                    page.keyboard.press(key)
                    page.wait_for_function(_NEXT_RENDERED, arg=before, polling=10)
                    times.setdefault((name, "rendered"), []).append(time.perf_counter() - start)
                    page.wait_for_function(_RUN_ENDED, polling=10)
                    times.setdefault((name, "run ended"), []).append(time.perf_counter() - start)
                    time.sleep(pause)
            browser.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=str(REPO / "demo_workspace"),
                        help="workspace to copy (default: demo_workspace, built with `python -m cli demo` if absent)")
    parser.add_argument("--presses", type=int, default=20, help="timed presses per key")
    parser.add_argument("--cam", choices=("on", "off"), default="on", help="the page's Grad-CAM panel")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds to wait after a run ends before a press")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace)
    if not (workspace / "taxalens.toml").is_file():
        subprocess.run([sys.executable, "-m", "cli", "demo", "--out", str(workspace)], cwd=REPO, check=True)
    times = measure(workspace, presses=args.presses, cam=args.cam == "on", pause=args.pause)
    print(f"Review queue, key press -> next sample rendered (Chromium, CPU, Grad-CAM {args.cam}, "
          f"pause {args.pause:g} s), workspace {workspace}")
    print(f"{'key':<14}{'until':<11}{'presses':>8}{'median s':>10}{'p90 s':>8}{'max s':>8}  "
          f"target: rendered, median <= {TARGET_MEDIAN_S}")
    for (name, until), values in times.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        median = statistics.median(values)
        verdict = ("ok" if median <= TARGET_MEDIAN_S else "MISSED") if until == "rendered" else ""
        print(f"{name:<14}{until:<11}{len(values):>8}{median:>10.3f}{p90:>8.3f}{max(values):>8.3f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
