"""UI latency of the dashboard in headless Chromium against `streamlit run app.py` (issue 3's two figures).

    .venv/bin/python bench/ui_latency.py [--repeats 5] [--out bench/results/ui_latency.json]

On the embedded model with an empty cache:
1. Fits a short text with the fast preset (so there is a cached entry to reopen).
2. Starts a long fit (paper preset, a 32-token text) and, while it runs, switches the sidebar's preset
   back and forth: each switch is a full rerun of the page. Reports seconds from the click until the
   sidebar shows the other preset's learning rate, and checks that the fit kept stepping meanwhile.
3. Stops that fit, then reopens the cached short entry, with the model loaded in the server: (a) in the same
   session, by typing its text (a cached fit shows at once), seconds from Ctrl+Enter until the page shows the
   entry's reconstruction and metrics; (b) by its link (`/?entry=KEY`) in a new browser session each time,
   which loads the web app too.
Writes bench/results/ui_latency.json and prints a summary. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.browser import chromium, chromium_available, streamlit_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHORT = "Rain fell softly at dawn."
LONG = ("The lighthouse keeper climbed the spiral stairs each evening, lit the great lamp, and watched the small "
        "fishing boats come slowly home across the grey water.")
POLL = 0.02


def wait_for(predicate, timeout: float, what: str) -> float:
    """Seconds until predicate() is true (polled every 20 ms); raises TimeoutError naming what."""
    start = time.perf_counter()
    while True:
        try:
            if predicate():
                return time.perf_counter() - start
        except Exception:  # the DOM is being replaced under us: try again
            pass
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL)


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def lr_value(driver) -> str | None:
    return driver.execute_script(
        "const i = document.querySelector(\"input[aria-label='Learning rate']\"); return i ? i.value : null;")


def step_shown(driver) -> int | None:
    found = re.search(r"Step (\d+) / \d+", body(driver))
    return int(found.group(1)) if found else None


def type_text(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    area = driver.find_element(By.CSS_SELECTOR, "textarea[aria-label='Text']")
    area.send_keys(Keys.CONTROL, "a")
    area.send_keys(Keys.DELETE)
    area.send_keys(text)
    area.send_keys(Keys.CONTROL, Keys.ENTER)
    wait_for(lambda: f"{text[:20]}" in (area.get_attribute("value") or ""), 10, "the text to be typed")
    time.sleep(1.5)  # the rerun with the committed text


def click_label(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    # By the start of the label: the presets read "fast (this lab's)", "first paper (Mezentsev & Oseledets 2025)" and "seed paper's code (...)".
    driver.find_element(By.XPATH, f"//label[.//p[starts-with(text(), '{label}')]]").click()


def click_button(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//button[.//p[text()='{label}']]").click()


def current_caption(driver) -> str:
    """The caption under "Current entry": the entry's text first."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, "//h3[contains(., 'Current entry')]/following::*[@data-testid='stCaptionContainer'][1]")
    return found[0].text if found else ""


def entry_shown(driver) -> bool:
    page = body(driver)
    return "Current entry" in page and "Token accuracy" in page and "one-pass reconstruction" in page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ui_latency.json"))
    args = parser.parse_args(argv)
    if not chromium_available():
        print("Chromium not installed (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    result: dict = {"benchmark": "ui_latency", "short_text": SHORT, "long_text": LONG}
    with streamlit_server(work / "cache", work / "streamlit.log") as url:
        driver = chromium(1400, 1800)
        try:
            start = time.perf_counter()
            driver.get(url)
            wait_for(lambda: "tokens of at most" in body(driver), 300, "the model to load")
            result["first_page_with_model_load_s"] = round(time.perf_counter() - start, 2)

            # 1. A cached entry to reopen later.
            click_label(driver, "fast")
            wait_for(lambda: lr_value(driver) == "0.0500", 30, "the fast preset")
            type_text(driver, SHORT)
            start = time.perf_counter()
            click_button(driver, "Fit")
            wait_for(lambda: entry_shown(driver) and "1.000" in body(driver), 900, "the short fit to finish")
            result["short_fit_s"] = round(time.perf_counter() - start, 1)
            key = re.search(r"[?&]entry=([0-9a-f]+)", driver.current_url).group(1)

            # 2. Widgets during a long fit.
            click_label(driver, "first paper")
            wait_for(lambda: lr_value(driver) == "0.0100", 30, "the first paper preset")
            type_text(driver, LONG)
            click_button(driver, "Fit")
            wait_for(lambda: (step_shown(driver) or 0) >= 1, 120, "the long fit to start")
            first_step = step_shown(driver)
            switches = []
            for i in range(2 * args.repeats):
                name, lr = ("fast", "0.0500") if i % 2 == 0 else ("first paper", "0.0100")
                start = time.perf_counter()
                click_label(driver, name)
                switches.append(wait_for(lambda lr=lr: lr_value(driver) == lr, 60, f"the {name} preset"))
                time.sleep(1.0)
            click_label(driver, "first paper")  # the running fit's own preset, so its live view stays
            wait_for(lambda: (step_shown(driver) or 0) > first_step, 120, "the fit to keep stepping")
            last_step = step_shown(driver)
            result["during_fit"] = {
                "widget": "sidebar preset radio (a full rerun of the page)",
                "seconds": [round(s, 3) for s in switches], "median_s": round(statistics.median(switches), 3),
                "max_s": round(max(switches), 3), "fit_steps_seen": [first_step, last_step],
            }
            click_button(driver, "Stop")
            wait_for(lambda: step_shown(driver) is None, 120, "the fit to stop")

            # 3a. Reopen the cached entry in the same session: type its text (the stopped fit is current now).
            from selenium.webdriver.common.by import By
            from selenium.webdriver.common.keys import Keys

            in_session = []
            for i in range(2 * args.repeats):
                # Alternate: the stopped long fit (paper preset), then the short one (fast preset), timed.
                text, name, lr = (LONG, "first paper", "0.0100") if i % 2 == 0 else (SHORT, "fast", "0.0500")
                click_label(driver, name)
                wait_for(lambda lr=lr: lr_value(driver) == lr, 30, f"the {name} preset")
                area = driver.find_element(By.CSS_SELECTOR, "textarea[aria-label='Text']")
                area.send_keys(Keys.CONTROL, "a")
                area.send_keys(Keys.DELETE)
                area.send_keys(text)
                start = time.perf_counter()
                area.send_keys(Keys.CONTROL, Keys.ENTER)
                seconds = wait_for(lambda text=text: entry_shown(driver) and current_caption(driver).startswith(text[:40]),
                                   60, "the typed text's cached entry")
                if text == SHORT:
                    in_session.append(seconds)
                time.sleep(1.0)
            # 3b. Reopen it by its link, a new browser session each time: the web app itself loads too.
            reopen, shell = [], []
            for _ in range(args.repeats):
                driver.get("about:blank")
                start = time.perf_counter()
                driver.get(f"{url}/?entry={key}")
                shell.append(wait_for(lambda: "Reconstruct" in body(driver), 60, "the app"))
                reopen.append(shell[-1] + wait_for(lambda: entry_shown(driver), 60, "the cached entry"))
            driver.save_screenshot(str(work / "reopened.png"))
            result["reopen_cached_entry"] = {
                "in_session": {"how": "type the text of a cached fit while another entry is current, Ctrl+Enter",
                               "seconds": [round(s, 3) for s in in_session],
                               "median_s": round(statistics.median(in_session), 3), "max_s": round(max(in_session), 3)},
                "by_link": {"how": "new browser session at /?entry=KEY, model loaded in the server",
                            "seconds": [round(s, 3) for s in reopen], "median_s": round(statistics.median(reopen), 3),
                            "max_s": round(max(reopen), 3),
                            "of_which_web_app_load_s": [round(s, 3) for s in shell]},
            }
        finally:
            driver.quit()

    import torch

    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "loadavg_after": os.getloadavg()}
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    print(f"written to {out}; screenshot of the reopened entry in {work / 'reopened.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
