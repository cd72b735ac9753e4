"""The Streamlit settings the dashboard depends on (.streamlit/config.toml, read by `streamlit run app.py`)."""

import tomllib
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def test_no_gc_after_each_rerun_and_no_file_watcher():
    # With either on, a fit in the background ran 10-18x slower while its live view was open
    # (bench/ui_latency.py measured 0.27 steps/s against 4.0 without them).
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    assert config["runner"]["postScriptGC"] is False
    assert config["server"]["fileWatcherType"] == "none"


def test_streamlit_reads_them():
    from streamlit import config

    config.get_config_options(force_reparse=True, options_from_flags={})
    assert config.get_option("runner.postScriptGC") is False
    assert config.get_option("server.fileWatcherType") == "none"
