"""Screenshot a page of a running dashboard in headless Chromium, once the page shows a given text.

Usage: python scripts/screenshot.py URL OUT.png [--wait-for TEXT] [--timeout 300] [--height 2000]
Used to look at pages while developing and to make the README's pictures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.browser import chromium  # noqa: E402


def settle(driver, timeout: float) -> None:
    """Wait until Streamlit's "running" indicator is gone (the script run is over)."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline and driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"):
        time.sleep(0.5)


def _clickable(driver, label: str):
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.XPATH, "//*[@role='tab' or self::button or self::summary]"):
        lines = element.text.strip().splitlines()  # an expander's text starts with its icon's name
        if lines and label in (lines[0], lines[-1]) and element.is_displayed():
            return element
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--wait-for", default=None, help="text that must be on the page first")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the text appears")
    parser.add_argument("--click", action="append", default=[],
                        help="then click the tab, button or expander with this text (repeat for several, in order)")
    args = parser.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(args.width, args.height)
    try:
        driver.get(args.url)
        if args.wait_for:
            WebDriverWait(driver, args.timeout).until(
                lambda d: args.wait_for in d.find_element(By.TAG_NAME, "body").text)
        settle(driver, args.timeout)
        for label in args.click:
            WebDriverWait(driver, args.timeout).until(lambda d: _clickable(d, label)).click()
            time.sleep(1.0)
            settle(driver, args.timeout)
        time.sleep(args.settle)
        driver.save_screenshot(args.out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
