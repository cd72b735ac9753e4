"""Benchmark: fitting steps per second with the Reconstruct page's live view open, with the project's
.streamlit/config.toml and with Streamlit's defaults for the two settings it changes.

    .venv/bin/python bench/live_view.py [--seconds 40] [--repeats 2] [--out bench/results/live_view.json]

The config turns off the file watcher (server.fileWatcherType = "none") and the gc.collect() after every
script run (runner.postScriptGC = false); "streamlit defaults" puts both back through Streamlit's environment
variables, which override the config file. For each setting, alternating, a new `streamlit run app.py` on an
empty cache: headless Chromium opens the page, starts a fit of a 32-token text with the paper preset (it does
not converge within the window), and reads the step counter the live view shows, from step 3 for --seconds.
Reports steps per second per run and their median. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ui_latency import LONG, body, click_button, click_label, lr_value, step_shown, type_text, wait_for  # noqa: E402
from scripts.browser import chromium, chromium_available, streamlit_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "project config": {},
    "streamlit defaults": {"STREAMLIT_SERVER_FILE_WATCHER_TYPE": "auto", "STREAMLIT_RUNNER_POST_SCRIPT_GC": "true"},
}


def one_run(env: dict, seconds: float, work: Path) -> dict:
    with streamlit_server(work / "cache", work / "streamlit.log", env=env) as url:
        driver = chromium(1400, 1800)
        try:
            driver.get(url)
            wait_for(lambda: "tokens of at most" in body(driver), 300, "the model to load")
            click_label(driver, "paper")
            wait_for(lambda: lr_value(driver) == "0.0100", 30, "the paper preset")
            type_text(driver, LONG)
            click_button(driver, "Fit")
            wait_for(lambda: (step_shown(driver) or 0) >= 3, 300, "the fit to reach step 3")
            first, start = step_shown(driver), time.perf_counter()
            time.sleep(seconds)
            last, elapsed = step_shown(driver), time.perf_counter() - start
            click_button(driver, "Stop")
        finally:
            driver.quit()
    return {"steps": [first, last], "seconds": round(elapsed, 2), "steps_per_s": round((last - first) / elapsed, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "live_view.json"))
    args = parser.parse_args(argv)
    if not chromium_available():
        print("Chromium not installed (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, env in SETTINGS.items():  # alternating, so that load from elsewhere hits both alike
            work = Path(tempfile.mkdtemp(prefix="bench-live-"))
            runs[name].append(one_run(env, args.seconds, work))
            print(name, runs[name][-1], flush=True)
    medians = {name: statistics.median(r["steps_per_s"] for r in rs) for name, rs in runs.items()}
    result = {"benchmark": "live_view", "text": LONG, "preset": "paper", "window_s": args.seconds,
              "settings": {name: env or "the repository's .streamlit/config.toml" for name, env in SETTINGS.items()},
              "runs": runs, "median_steps_per_s": medians,
              "ratio_config_over_defaults": round(medians["project config"] / max(medians["streamlit defaults"], 1e-9), 2),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": "torch's default (all cores)", "loadavg_after": list(os.getloadavg())},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median_steps_per_s"]), "ratio", result["ratio_config_over_defaults"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
