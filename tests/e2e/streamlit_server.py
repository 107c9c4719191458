"""Real-browser test plumbing: a `streamlit run app.py` on a free loopback port (optionally from a folder holding a
`.streamlit/secrets.toml`) and the Chromium settings every browser test uses."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def serve_app(workspace: Path, *, port: int | None = None, cwd: Path | None = None, script_args: Sequence[str] = (),
              env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[str]:
    """`streamlit run app.py` on 127.0.0.1 with `workspace` open; yields its URL. `cwd`: the folder it runs from (its
    `.streamlit/` holds the test's secrets), default the repository."""
    port = port or free_port()
    log_path = log or workspace / "streamlit.log"
    environ = {**os.environ, "TAXALENS_WORKSPACE": str(workspace), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
               **(env or {})}
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--", *script_args],
            cwd=cwd or REPO, env=environ, stdout=log_file, stderr=subprocess.STDOUT,
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
