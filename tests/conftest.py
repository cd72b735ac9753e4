"""Shared fixtures: a tiny random model for logic, the embedded model fitted once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from core.cache import ProtoCache
from core.models import TINY_MODEL, load_model

# Short texts the embedded model fits in a few hundred steps; used by every integration test.
EMBEDDED_TEXTS = ["The cat sat quietly on the warm mat.", "Rain fell on the old bridge."]


@pytest.fixture(scope="session")
def tiny_lm():
    return load_model(TINY_MODEL)


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
    from core.fit import fit_and_cache, preset

    outcomes = fit_and_cache(embedded_lm, EMBEDDED_TEXTS, preset("fast", max_steps=1500), embedded_cache)
    return outcomes
