"""Every page's default view on a fresh install: shipped data only, nothing fitted, charts drawn at once.

A fresh install is an empty user cache (``PROTOTOKENS_CACHE`` pointing at an empty folder), the embedded
default model (the shipped pre-fit in data/prefit is for it) and no session state. Each page must then show
results from the shipped data alone: its charts drawn, with data, no fit job started, no fit run in the
process, and no entry written to the user's cache. Analyses computed from shipped entries (attention
weights, say) may be cached; fitted proto-tokens may not.

What each page's default view is expected to show:

| page         | default view on a fresh install                                   | charts |
|--------------|-------------------------------------------------------------------|--------|
| Reconstruct  | a shipped entry as the current entry: metrics and its fit curves  | 1      |
| Noise        | the default sweep of the default entry: accuracy, prefix, flips   | 3      |
| Attention    | the default entry: layer x position, heads x position, head grid  | 3      |
| Embeddings   | the best-covered built-in set: the 2-D maps and the silhouettes   | 2      |
| Regularisers | the shipped sweep: trade-off, silhouettes, maps with and without  | 3      |
| Capacity     | the shipped ladder, C_tokens against H_LM, the layouts, the timing | 4      |
| Geometry     | the default entry: the path, its training, the trajectory, shares | 4      |
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.engine.cache import ENTRY_DIR, SHIPPED_ROOT
from core.engine.models import DEFAULT_MODEL
from tests.conftest import REPO

pytestmark = pytest.mark.embedded

# The first run of a process imports torch and transformers and loads the embedded model: generous.
TIMEOUT = 600
JOB_PREFIX = "job::"  # ui.jobs keeps every background job under "job::<name>" (the Regularisers page too)

# page -> how many plotly charts its default view draws, and text that its view must show
DEFAULT_VIEWS = {
    "pages/reconstruct.py": 1,
    "pages/noise.py": 3,
    "pages/attention.py": 3,
    "pages/embeddings.py": 2,
    "pages/regularisers.py": 3,
    "pages/capacity.py": 4,
    "pages/geometry.py": 4,
}


@pytest.fixture
def fresh_install(tmp_path, monkeypatch):
    """An empty user cache, the embedded default model, the shipped pre-fit; records every fit attempted."""
    import core.engine.fit
    import core.engine.jobs
    import ui.sidebar
    import ui.state

    user_cache = tmp_path / "user-cache"
    user_cache.mkdir()
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(user_cache))
    monkeypatch.delenv("PROTOTOKENS_MODEL", raising=False)
    monkeypatch.delenv("PROTOTOKENS_SHIPPED", raising=False)
    # ui.state reads PROTOTOKENS_MODEL once at import; a test run started with it set must not leak in here.
    monkeypatch.setattr(ui.state, "DEFAULT_MODEL_NAME", DEFAULT_MODEL)
    monkeypatch.setattr(ui.sidebar, "DEFAULT_MODEL_NAME", DEFAULT_MODEL)
    assert Path(SHIPPED_ROOT) == REPO / "data" / "prefit"

    started: list[str] = []
    real_start = core.engine.jobs.BackgroundJob.start

    def spy_start(job):
        started.append(type(job).__name__)
        return real_start(job)

    def no_fit(*args, **kwargs):
        started.append("fit_texts")
        raise AssertionError("a fit ran on a fresh install")

    monkeypatch.setattr(core.engine.jobs.BackgroundJob, "start", spy_start)
    monkeypatch.setattr(core.engine.fit, "fit_texts", no_fit)
    return user_cache, started


def _open(page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    if page != "pages/reconstruct.py":
        at.switch_page(page)
        at.run()
    return at


def _has_values(value) -> bool:
    """A trace's x / y / z holds something: a non-empty list, or plotly's binary-encoded array."""
    if isinstance(value, dict):  # {"dtype": ..., "bdata": ..., "shape": ...}
        return bool(value.get("bdata"))
    if isinstance(value, (list, tuple)):
        return any(_has_values(v) if isinstance(v, (list, tuple, dict)) else v is not None for v in value)
    return False


def _charts(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _drawn(figure: dict) -> bool:
    return any(_has_values(trace.get(axis)) for trace in figure.get("data", []) for axis in ("x", "y", "z"))


def _shown(at) -> str:
    """What the page says besides its charts, for the failure message."""
    parts = [f"{kind}: {element.value}" for kind in ("error", "warning", "info")
             for element in getattr(at, kind)]
    return "; ".join(parts) or "(no message)"


@pytest.mark.parametrize("page", list(DEFAULT_VIEWS))
def test_default_view_draws_shipped_results_without_fitting(page, fresh_install):
    user_cache, started = fresh_install
    at = _open(page)

    assert not at.exception, at.exception
    assert not at.error, _shown(at)
    figures = _charts(at)
    expected = DEFAULT_VIEWS[page]
    assert len(figures) >= expected, (
        f"{page} drew {len(figures)} of its {expected} charts on a fresh install; it says: {_shown(at)}")
    empty = [fig.get("layout", {}).get("title", {}).get("text", f"chart {i}")
             for i, fig in enumerate(figures) if not _drawn(fig)]
    assert not empty, f"charts without data: {empty}"
    if page == "pages/reconstruct.py":
        assert any("Current entry" in header.value for header in at.subheader), _shown(at)

    jobs = [key for key in at.session_state.keys() if str(key).startswith(JOB_PREFIX)]
    assert not jobs, f"fit jobs in the session: {jobs}"
    assert not started, f"started on a fresh install: {started}"
    written = sorted(p.name for p in (user_cache / ENTRY_DIR).glob("*")) if (user_cache / ENTRY_DIR).exists() else []
    assert not written, f"entries written to the user cache: {written}"
