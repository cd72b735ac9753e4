"""End to end in headless Chromium against `streamlit run app.py`: type a text, Fit, see it rebuilt.

Runs on the embedded model with the "fast" preset and an empty cache, so the fit is real.
Skips, with the reason shown, where Debian's chromium and chromium-driver are not installed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scripts.browser import chromium, chromium_available, streamlit_server

TEXT = "Rain fell softly at dawn."

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(),
                       reason="Chromium not installed (apt-get install chromium chromium-driver); browser test skipped"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("browser-cache"),
                          tmp_path_factory.mktemp("browser-log") / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1400, 1800)
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

    browser.find_element(By.XPATH, "//label[.//p[starts-with(text(), 'fast')]]").click()  # the default; said anyway
    text_area.send_keys(Keys.CONTROL, "a")
    text_area.send_keys(Keys.DELETE)
    text_area.send_keys(TEXT)
    text_area.send_keys(Keys.CONTROL, Keys.ENTER)
    time.sleep(2.0)  # let Streamlit rerun with the committed text before pressing Fit

    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Fit']]"))).click()
    # The live view appears while the job runs ...
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'Step ')]")))
    # ... and the finished entry shows the reconstruction, decoded, with full accuracy. A few seconds on
    # an idle machine; the long timeout only allows for a machine busy with other work. The page opens on the
    # shipped demo entry, so wait for the entry this session fitted, not for any "Current entry".
    try:
        WebDriverWait(browser, 900).until(
            EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'fitted in this session')]")))
        time.sleep(1.0)
    finally:
        browser.save_screenshot(str(_screenshot_dir(tmp_path) / "reconstruct.png"))
    caption = browser.find_element(By.XPATH, "//*[contains(text(), 'fitted in this session')]").text
    assert caption.startswith(TEXT[:40]) and "[1.00," in caption, caption
    decoded = browser.find_element(By.XPATH, "//p[.//strong[text()='Decoded']]/following::code[1]").text
    assert decoded == TEXT, f"decoded {decoded!r}, want {TEXT!r}"
    accuracy = browser.find_element(By.XPATH, "//*[@data-testid='stMetric'][.//*[text()='Token accuracy']]").text
    assert "1.000" in accuracy, accuracy
