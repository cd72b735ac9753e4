"""Headless Chromium and a `streamlit run app.py` server on localhost: shared by the browser test, the
screenshot script and the UI latency benchmark.

Uses Debian's chromium and chromium-driver (never a downloaded driver). Import with the repository root on
sys.path: ``from scripts.browser import chromium, streamlit_server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage")


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def chromium(width: int = 1400, height: int = 1800):
    """A headless Chromium driven through Debian's chromedriver. The caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f"--window-size={width},{height}",):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(cache_dir: str | os.PathLike, log_path: str | os.PathLike, start_timeout: float = 90,
                     env: dict | None = None) -> Iterator[str]:
    """`streamlit run app.py` headless on a free localhost port with its own cache folder; yields the URL."""
    port = free_port()
    full_env = dict(os.environ, PROTOTOKENS_CACHE=str(cache_dir), PYTHONUNBUFFERED="1", **(env or {}))
    if not env or "PROTOTOKENS_MODEL" not in env:
        full_env.pop("PROTOTOKENS_MODEL", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"streamlit did not start within {start_timeout:.0f} s; see {log_path}")
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
