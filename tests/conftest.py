"""Shared fixtures: a tiny random model for logic, the embedded model fitted once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Check the jaxtyping shapes of core.engine.shapes.checked functions in every test and every server a test starts.
os.environ["PROTOTOKENS_CHECK_SHAPES"] = "1"

import numpy as np
import pytest
import torch

from core.engine.cache import CacheEntry, ProtoCache
from core.engine.models import TINY_MODEL, load_model

# Short texts the embedded model fits in a few hundred steps; used by every integration test.
EMBEDDED_TEXTS = ["The cat sat quietly on the warm mat by the door.", "Rain fell on the old bridge."]
EMBEDDED_CONFIG_OVERRIDES = dict(max_steps=1500)


@pytest.fixture(scope="session")
def tiny_lm():
    return load_model(TINY_MODEL)


@pytest.fixture(scope="session")
def bos_lm(tiny_lm):
    """The tiny model with a tokenizer that has a BOS token (its byte '$', id 3): e's own output has a BOS to be
    scored against (the seed paper's count)."""
    import copy
    import dataclasses

    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(3)
    return dataclasses.replace(tiny_lm, tokenizer=tokenizer)


@pytest.fixture
def tmp_cache(tmp_path):
    return ProtoCache(tmp_path / "cache")


@pytest.fixture(scope="session")
def embedded_lm():
    return load_model()


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    return ProtoCache(tmp_path_factory.mktemp("embedded-cache"))


@pytest.fixture(scope="session")
def embedded_fitted(embedded_lm, embedded_cache):
    """EMBEDDED_TEXTS fitted once per test session (fast preset), with the cache that holds them."""
    from core.engine.fit import fit_and_cache, preset

    return fit_and_cache(embedded_lm, EMBEDDED_TEXTS, preset("fast", **EMBEDDED_CONFIG_OVERRIDES), embedded_cache)


# ---- Streamlit AppTest -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
APP_TIMEOUT = 120  # seconds; importing torch and transformers alone takes several


@pytest.fixture
def app_cache(tmp_path, monkeypatch):
    """An empty cache the app uses, with the tiny random model as the app's default model."""
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path / "app-cache"))
    monkeypatch.setenv("PROTOTOKENS_MODEL", TINY_MODEL)
    import ui.state

    monkeypatch.setattr(ui.state, "DEFAULT_MODEL_NAME", TINY_MODEL)
    import ui.sidebar

    monkeypatch.setattr(ui.sidebar, "DEFAULT_MODEL_NAME", TINY_MODEL)
    return ProtoCache(tmp_path / "app-cache")


@pytest.fixture
def tiny_entry(tiny_lm, app_cache):
    """A converged entry of the tiny model in the app's cache."""
    from core.engine.fit import fit_and_cache, preset

    [outcome] = fit_and_cache(tiny_lm, ["Hello world"], preset("first-paper", max_steps=600), app_cache)
    return outcome.entry


def open_page(page: str, entry_key: str | None = None, session_state: dict | None = None, query: dict | None = None):
    """An AppTest of app.py switched to ``page`` (e.g. "pages/noise.py"), run once; ``query``: the link's other
    query parameters (a page's controls, presentation mode)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=APP_TIMEOUT)
    if entry_key:
        at.query_params["entry"] = entry_key
    at.query_params.update(query or {})
    for name, value in (session_state or {}).items():
        at.session_state[name] = value
    at.run()
    if page != "pages/reconstruct.py":
        at.switch_page(page)
        at.run()
    return at


def fake_entry(key: str, text: str, e: np.ndarray, m: np.ndarray, accuracy: float = 1.0, steps: int = 50) -> CacheEntry:
    """A CacheEntry built by hand (model "fake"), for tests of what reads entries."""
    history = {"step": list(range(steps)), "loss": [1.0 / (s + 1) for s in range(steps)],
               "accuracy": [min(1.0, s / steps) for s in range(steps)]}
    return CacheEntry(key=key, model="fake", text=text, token_ids=[1, 2, 3], config={"layout": "e+m*N"},
                      metrics={"accuracy": accuracy, "converged": accuracy >= 0.99, "steps": steps},
                      history=history, e=torch.tensor(e, dtype=torch.float32),
                      m=torch.tensor(m, dtype=torch.float32), snapshots=[{"step": 0, "tokens": [1]}] * 5)
