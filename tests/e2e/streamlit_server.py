"""A real `streamlit run app.py` on a free loopback port (optionally run from a folder whose `.streamlit/` holds a
test's secrets), for the browser tests and the browser benchmarks; the Chromium settings every browser test uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f}s")


def sync_playwright_or_skip():
    """playwright.sync_api, or a skip when Playwright or Chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM}")
    return sync_api


@contextmanager
def serve_app(workspace: Path, log_path: Path | None = None, *, env: dict[str, str] | None = None,
              port: int | None = None, cwd: Path | None = None, script_args: Sequence[str] = ()) -> Iterator[str]:
    """Serve app.py on `workspace` (TAXALENS_WORKSPACE) until the block ends; yields the base URL. `cwd`: the folder
    the server runs from (its `.streamlit/secrets.toml` is the deployment's), default the repository."""
    port = port or free_port()
    environment = {**os.environ, "TAXALENS_WORKSPACE": str(workspace), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
                   "OMP_NUM_THREADS": "1", "TAXALENS_NO_UMAP": "1", **(env or {})}  # PCA maps: no numba compile
    with open(log_path or workspace / "streamlit.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--", *script_args],
            cwd=cwd or REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_server(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def choose_option(page, box_label: str, option: str, *, attempts: int = 3, wait_ms: int = 30_000) -> None:
    """Pick `option` in the selectbox labelled `box_label`. A rerun that lands while the list is open closes it
    (two shared cores: reruns take seconds), so the list is opened again, up to `attempts` times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        page.get_by_label(box_label, exact=True).click(timeout=90_000)
        try:
            page.get_by_role("option", name=option).click(timeout=wait_ms)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
