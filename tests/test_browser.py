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


def test_a_report_opens_offline_draws_its_figures_and_requests_nothing(browser, tiny_lm, tmp_path):
    """The report of an entry, opened from a file with the network cut off: every figure is drawn by the plotly.js
    inside the file, and the page asks the network for nothing (not even a font)."""
    from selenium.webdriver.support.ui import WebDriverWait

    from core.analyses.attention import run_attention
    from core.engine.cache import ProtoCache
    from core.engine.fit import fit_and_cache, preset
    from core.report import entry_report

    cache = ProtoCache(tmp_path / "cache")
    [outcome] = fit_and_cache(tiny_lm, ["Rain <i>fell</i> softly"], preset("fast", max_steps=60), cache)
    run_attention(tiny_lm, outcome.entry, cache)
    path = tmp_path / "report.html"
    path.write_text(entry_report(tiny_lm, outcome.entry, cache), encoding="utf-8")

    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    try:
        browser.get(path.as_uri())
        WebDriverWait(browser, 60).until(
            lambda d: d.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length") >= 4)
        drawn = browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
        requested = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => !n.startsWith('data:') && !n.startsWith('blob:'))")
        heading = browser.execute_script("return document.querySelector('.text').textContent")
        browser.save_screenshot(str(_screenshot_dir(tmp_path) / "report.png"))
    finally:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    assert drawn == 2, drawn  # the fit curves and the attention heatmap (no noise sweep was run)
    assert requested == [], requested
    assert heading == "Rain <i>fell</i> softly"  # the user's text as text, not markup


def test_clicking_a_point_on_the_embeddings_map_selects_its_text(server, browser):
    """On the shipped pre-fitted set, a click on a point of another group than the selected text's makes that
    point's text the selected one: the Text box below the maps shows it (the neighbour tables follow it)."""
    import html
    import re

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/embeddings")
    # The maps are the one plotly chart that selects points on a click.
    the_map = "const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.layout.clickmode === 'event+select');"
    groups = WebDriverWait(browser, 300).until(lambda d: d.execute_script(the_map + """
        return gd && gd.data[0].customdata ? gd.data.filter(t => t.showlegend !== false && t.customdata).length : 0;"""))
    assert groups >= 2, "the map shows one group only"

    def selected() -> str:
        return browser.find_element(By.CSS_SELECTOR, "input[role='combobox'][aria-label='Text']").get_attribute("value")

    before = selected()
    # The last group's first point in the first subplot: its hover text (escaped, wrapped), its group, and its SVG
    # marker (the subplot's trace elements are in the order of its traces in the figure's data).
    hover, group, point = browser.execute_script(the_map + """
        const traces = gd.data.filter(t => (t.xaxis || 'x') === 'x');
        const t = traces.map(t => Boolean(t.customdata && t.customdata.length)).lastIndexOf(true);
        const layer = gd.querySelector('.cartesianlayer .subplot.xy .scatterlayer');
        return [traces[t].customdata[0][1], traces[t].customdata[0][4],
                layer.querySelectorAll('.trace')[t].querySelector('path.point')];""")
    expected = " ".join(html.unescape(re.sub(r"<br>", " ", hover)).split())
    assert not before.endswith(expected), "the point to click is already the selected text"
    ActionChains(browser).move_to_element(point).click().perform()
    WebDriverWait(browser, 60).until(lambda d: " ".join(selected().split()).endswith(expected))
    assert " ".join(selected().split()) == f"[{html.unescape(group)}] {expected}"
