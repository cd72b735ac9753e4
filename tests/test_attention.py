"""core.analyses.attention: eager attention maps, attention to e, the baseline and its alignment, caching."""

from __future__ import annotations

import math

import pytest
import torch

from core.analyses.attention import (
    ANALYSIS_KIND,
    AttentionUnavailable,
    ProtoInputs,
    aligned_query_positions,
    attention_key,
    attention_maps,
    attention_to_e,
    baseline_maps,
    run_attention,
    head_map,
    max_over_heads,
    mean_over_heads,
    mean_over_positions,
    sequence_labels,
)
from core.engine.cache import ProtoCache
from core.engine.fit import fit_and_cache, preset
from core.engine.reconstruct import first_scored_position, sequence_length


@pytest.fixture(scope="module")
def fitted(tiny_lm, tmp_path_factory):
    """A short text fitted on the tiny model (convergence does not matter for attention)."""
    cache = ProtoCache(tmp_path_factory.mktemp("attention-fit"))
    [outcome] = fit_and_cache(tiny_lm, ["Hello world"], preset("first-paper", max_steps=100), cache)
    return outcome.entry


def _random_proto(lm, n_tokens: int, layout: str, seed: int = 0) -> ProtoInputs:
    g = torch.Generator().manual_seed(seed)
    return ProtoInputs(torch.randn(lm.hidden_size, generator=g), torch.randn(lm.hidden_size, generator=g),
                       n_tokens, layout)


def _assert_rows_are_distributions(maps: torch.Tensor) -> None:
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-4, rtol=0)
    future = torch.triu(torch.ones(maps.shape[-2:], dtype=torch.bool), diagonal=1)
    assert float(maps[..., future].abs().max()) == 0.0  # the causal mask: no weight on later keys


def test_maps_have_named_shape_and_rows_sum_to_one(tiny_lm, fitted):
    maps = attention_maps(tiny_lm, fitted)
    t = sequence_length(fitted.n_tokens, fitted.layout)
    assert t == fitted.n_tokens + 1
    assert maps.shape == (tiny_lm.num_layers, tiny_lm.num_heads, t, t)
    assert maps.dtype == torch.float32
    _assert_rows_are_distributions(maps)


@pytest.mark.parametrize("layout", ["e+m*N", "e+m*(N-1)"])
def test_tuple_and_proto_inputs_agree_for_both_layouts(tiny_lm, layout):
    proto = _random_proto(tiny_lm, 7, layout)
    maps = attention_maps(tiny_lm, proto)
    assert maps.shape[-1] == sequence_length(7, layout)
    _assert_rows_are_distributions(maps)
    torch.testing.assert_close(attention_maps(tiny_lm, (proto.e, proto.m, 7, layout)), maps)


def test_key_zero_slice_is_attention_to_e(tiny_lm, fitted, tmp_cache):
    maps = attention_maps(tiny_lm, fitted)
    to_e = attention_to_e(maps)
    assert to_e.shape == maps.shape[:3]
    assert torch.equal(to_e, maps[:, :, :, 0])
    result = run_attention(tiny_lm, fitted, tmp_cache)
    torch.testing.assert_close(result.to_e, to_e)
    assert torch.all(result.to_e[:, :, 0] == 1.0)  # e's own query sees only e


def test_baseline_uses_the_same_model_and_token_ids(tiny_lm, fitted, monkeypatch):
    seen = []
    original = tiny_lm.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.model, "forward", spy)
    result = run_attention(tiny_lm, fitted)
    n = fitted.n_tokens
    assert result.baseline_to_first.shape == (tiny_lm.num_layers, tiny_lm.num_heads, n)
    assert len(seen) == 2  # one proto pass, one baseline pass, on the same model object
    assert seen[0]["inputs_embeds"].shape == (1, n + 1, tiny_lm.hidden_size)
    assert seen[1]["input_ids"].tolist() == [fitted.token_ids]
    monkeypatch.setattr(tiny_lm.model, "forward", original)
    base = baseline_maps(tiny_lm, fitted.token_ids)
    assert base.shape == (tiny_lm.num_layers, tiny_lm.num_heads, n, n)
    _assert_rows_are_distributions(base)
    torch.testing.assert_close(result.baseline_to_first, attention_to_e(base))


@pytest.mark.parametrize("layout", ["e+m*N", "e+m*(N-1)"])
def test_views_are_aligned_on_the_predicted_token(tiny_lm, fitted, layout):
    entry = fitted
    entry.config = {**fitted.config, "layout": layout}  # same vectors, read in the other arrangement
    try:
        result = run_attention(tiny_lm, entry)
    finally:
        entry.config = {**fitted.config, "layout": "e+m*N"}
    n, first = fitted.n_tokens, first_scored_position(layout)
    proto, baseline, diff = result.view("proto"), result.view("baseline"), result.view("difference")
    assert proto.shape == baseline.shape == diff.shape == (tiny_lm.num_layers, tiny_lm.num_heads, n)
    for k in range(n):
        assert torch.equal(proto[..., k], result.to_e[..., first + k])
        if k == 0:
            assert torch.isnan(baseline[..., 0]).all()  # no ordinary query predicts the first token
        else:
            assert torch.equal(baseline[..., k], result.baseline_to_first[..., k - 1])
    torch.testing.assert_close(diff, proto - baseline, equal_nan=True)
    assert aligned_query_positions(n, layout) == ([first + k for k in range(n)], [k - 1 for k in range(n)])
    # The queries that see only key 0 are flagged: the baseline's position 0, and e itself if it is scored.
    assert result.trivial("baseline").nonzero().flatten().tolist() == [1]
    assert result.trivial("proto").nonzero().flatten().tolist() == ([] if first == 1 else [0])
    assert result.labels()[0].startswith("0:") and len(result.labels()) == n


def test_aggregations_ignore_nan_and_excluded_positions():
    values = torch.tensor([[[0.2, math.nan, 1.0], [0.4, math.nan, 0.0]]])  # [layer 1, head 2, query 3]
    torch.testing.assert_close(mean_over_heads(values), torch.tensor([[0.3, math.nan, 0.5]]), equal_nan=True)
    torch.testing.assert_close(max_over_heads(values), torch.tensor([[0.4, math.nan, 1.0]]), equal_nan=True)
    exclude = torch.tensor([False, False, True])
    torch.testing.assert_close(mean_over_positions(values, exclude), torch.tensor([[0.2, 0.4]]))


def test_aggregates_of_result_have_named_shapes(tiny_lm, fitted):
    result = run_attention(tiny_lm, fitted)
    layers, heads, n = tiny_lm.num_layers, tiny_lm.num_heads, fitted.n_tokens
    for view in ("proto", "baseline", "difference"):
        assert result.over_heads(view, "mean").shape == (layers, n)
        assert result.over_heads(view, "max").shape == (layers, n)
        grid = result.over_positions(view)
        assert grid.shape == (layers, heads) and not torch.isnan(grid).any()
    torch.testing.assert_close(result.over_heads("difference", "max"),
                               result.over_heads("proto", "max") - result.over_heads("baseline", "max"),
                               equal_nan=True)
    table = result.long_table("baseline")
    assert list(table.columns) == ["layer", "head", "query", "query_position", "token", "value", "trivial"]
    assert len(table) == layers * heads * (n - 1)  # column 0 has no baseline query
    row = table[(table["layer"] == 1) & (table["head"] == 2) & (table["query"] == 3)].iloc[0]
    assert row.token == result.tokens[3] and row.query_position == 2
    assert row.value == pytest.approx(float(result.baseline_to_first[1, 2, 2])) and not row.trivial
    assert set(table[table["trivial"]]["query"]) == {1}


def test_second_call_comes_from_the_cache_without_the_model(tiny_lm, fitted, tmp_cache, monkeypatch):
    first = run_attention(tiny_lm, fitted, tmp_cache)
    assert not first.from_cache
    meta, tensors = tmp_cache.get_analysis(ANALYSIS_KIND, attention_key(tiny_lm, fitted), with_tensors=True)
    assert set(tensors) == {"to_e", "baseline_to_first"}  # the full [L, H, T, T] is not stored

    def no_model(*args, **kwargs):
        raise AssertionError("a cached analysis must not run the model")

    monkeypatch.setattr(tiny_lm.model, "forward", no_model)
    second = run_attention(tiny_lm, fitted, tmp_cache)
    assert second.from_cache
    torch.testing.assert_close(second.to_e, first.to_e)
    torch.testing.assert_close(second.baseline_to_first, first.baseline_to_first)
    assert second.tokens == first.tokens


def test_head_map_matches_full_maps_and_caches_the_layer(tiny_lm, fitted, tmp_cache, monkeypatch):
    maps = attention_maps(tiny_lm, fitted)
    base = baseline_maps(tiny_lm, fitted.token_ids)
    assert head_map(tiny_lm, fitted, 2, 1, "proto", tmp_cache, compute=False) is None
    proto = head_map(tiny_lm, fitted, 2, 1, "proto", tmp_cache)
    torch.testing.assert_close(proto.weights, maps[2, 1])
    assert proto.labels == sequence_labels(tiny_lm.token_strings(fitted.token_ids), fitted.layout, "proto")
    assert proto.labels[:2] == ["0:e", "1:m→H"]
    baseline = head_map(tiny_lm, fitted, 0, 3, "baseline", tmp_cache)
    torch.testing.assert_close(baseline.weights, base[0, 3])
    assert baseline.labels[0] == "0:H"

    def no_model(*args, **kwargs):
        raise AssertionError("another head of a cached layer must not run the model")

    monkeypatch.setattr(tiny_lm.model, "forward", no_model)
    other = head_map(tiny_lm, fitted, 2, 3, "proto", tmp_cache)
    assert other.from_cache
    torch.testing.assert_close(other.weights, maps[2, 3])
    with pytest.raises(ValueError):
        head_map(tiny_lm, fitted, tiny_lm.num_layers, 0, "proto", tmp_cache)


def test_no_attentions_raises_and_sdpa_is_restored(tiny_lm, fitted, monkeypatch):
    assert tiny_lm.model.config._attn_implementation == "sdpa"
    original = tiny_lm.model.forward

    def without_attentions(*args, **kwargs):
        out = original(*args, **kwargs)
        out.attentions = ()  # what transformers returns when the kernel cannot give weights
        return out

    monkeypatch.setattr(tiny_lm.model, "forward", without_attentions)
    with pytest.raises(AttentionUnavailable, match="no attention weights"):
        attention_maps(tiny_lm, fitted)
    with pytest.raises(AttentionUnavailable):
        run_attention(tiny_lm, fitted)
    assert tiny_lm.model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(tiny_lm.model, "forward", original)
    attention_maps(tiny_lm, fitted)
    assert tiny_lm.model.config._attn_implementation == "sdpa"


def test_vectors_of_another_width_are_refused(tiny_lm):
    wrong = ProtoInputs(torch.zeros(tiny_lm.hidden_size + 1), torch.zeros(tiny_lm.hidden_size + 1), 3, "e+m*N")
    with pytest.raises(ValueError, match="another model"):
        attention_maps(tiny_lm, wrong)


@pytest.mark.embedded
def test_embedded_model_maps(embedded_lm, embedded_fitted):
    entry = embedded_fitted[0].entry
    maps = attention_maps(embedded_lm, entry)
    t = entry.n_tokens + 1
    assert maps.shape == (30, 9, t, t)
    _assert_rows_are_distributions(maps)
    result = run_attention(embedded_lm, entry)
    assert result.baseline_to_first.shape == (30, 9, entry.n_tokens)
    torch.testing.assert_close(result.to_e, attention_to_e(maps))
    assert embedded_lm.model.config._attn_implementation == "sdpa"
