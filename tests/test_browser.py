"""End to end in headless Chromium against `streamlit run app.py`: type a text, Fit, see it rebuilt.

Runs on the embedded model with the "fast" preset and an empty cache, so the fit is real.
Skips, with the reason shown, where Debian's chromium and chromium-driver are not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TEXT = "Rain fell softly at dawn."

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="Chromium not installed (apt-get install chromium chromium-driver); browser test skipped"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    cache = tmp_path_factory.mktemp("browser-cache")
    env = dict(os.environ, PROTOTOKENS_CACHE=str(cache), PYTHONUNBUFFERED="1")
    env.pop("PROTOTOKENS_MODEL", None)
    log = open(tmp_path_factory.mktemp("browser-log") / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start within 90 s")
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PROTOTOKENS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_fit_in_the_browser_rebuilds_the_text(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 180)
    text_area = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "textarea[aria-label='Text']")))
    # The model loads on first render; the caption with the token count appears once it is ready.
    wait.until(EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'tokens of at most')]")))

    browser.find_element(By.XPATH, "//label[.//p[text()='fast']]").click()
    text_area.send_keys(Keys.CONTROL, "a")
    text_area.send_keys(Keys.DELETE)
    text_area.send_keys(TEXT)
    text_area.send_keys(Keys.CONTROL, Keys.ENTER)
    time.sleep(2.0)  # let Streamlit rerun with the committed text before pressing Fit

    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Fit']]"))).click()
    # The live view appears while the job runs ...
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'Step ')]")))
    # ... and the finished entry shows the reconstruction, decoded, with full accuracy. A few seconds on
    # an idle machine; the long timeout only allows for a machine busy with other work.
    try:
        WebDriverWait(browser, 900).until(
            EC.presence_of_element_located((By.XPATH, "//h3[contains(., 'Current entry')]")))
        time.sleep(1.0)
    finally:
        browser.save_screenshot(str(_screenshot_dir(tmp_path) / "reconstruct.png"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "1.000" in page, page[:2000]
    assert TEXT in page
