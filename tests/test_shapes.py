"""core.engine.shapes: the annotated shapes are checked in tests, so a call with mismatched shapes fails loudly."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from core.engine import shapes
from core.engine.cache import CacheEntry
from core.engine.reconstruct import build_inputs


def test_the_suite_checks_shapes():
    assert shapes.checking(), "tests/conftest.py sets PROTOTOKENS_CHECK_SHAPES=1 for every test"


def test_e_and_m_must_share_batch_and_width():
    inputs, mask = build_inputs(torch.zeros(2, 8), torch.ones(2, 8), [3, 1], "e+m*N")
    assert inputs.shape == (2, 4, 8) and mask.shape == (2, 4)
    with pytest.raises(TypeCheckError):
        build_inputs(torch.zeros(2, 8), torch.ones(3, 8), [3, 1, 2], "e+m*N")  # batch 2 vs 3
    with pytest.raises(TypeCheckError):
        build_inputs(torch.zeros(2, 8), torch.ones(2, 6), [3, 1], "e+m*N")  # width 8 vs 6


def test_an_entry_holds_one_float32_vector_each():
    fields = dict(key="0" * 64, model="m", text="t", token_ids=[1], config={}, metrics={}, history={})
    CacheEntry(e=torch.zeros(4), m=torch.zeros(4), **fields)
    with pytest.raises(TypeCheckError):
        CacheEntry(e=torch.zeros(4, dtype=torch.float64), m=torch.zeros(4), **fields)
    with pytest.raises(TypeCheckError):
        CacheEntry(e=torch.zeros(1, 4), m=torch.zeros(1, 4), **fields)


def test_unchecked_outside_tests(monkeypatch):
    monkeypatch.delenv(shapes.ENV)
    function = lambda x: x  # noqa: E731
    assert shapes.checked(function) is function
