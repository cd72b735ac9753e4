"""core.engine.reconstruct: layouts, the proto-token inputs, the scored positions of one forward pass, token metrics.

Batch shapes of build_inputs, a fit reconstructing its text in both layouts and the metrics of one middle error
are in tests/test_fit.py; here each piece is checked against a forward pass built by hand on the tiny model.
"""

from __future__ import annotations

import pytest
import torch

from core.engine.reconstruct import (LAYOUTS, TokenMetrics, build_inputs, check_layout, first_scored_position,
                                     predict_tokens, reconstruct, scored_logits, sequence_length, token_metrics)

# The first scored input position of each layout (docs/science.md, A.layouts).
FIRST = {"e+m*N": 1, "e+m*(N-1)": 0}


def _pair(lm, seed: int = 0, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random proto-tokens at the scale of the model's token embeddings: [hidden] each, or [rows, hidden]."""
    g = torch.Generator().manual_seed(seed)
    shape = (lm.hidden_size,) if rows is None else (rows, lm.hidden_size)
    scale = lm.embedding_std
    return torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g) * scale


def _manual_logits(lm, e: torch.Tensor, m: torch.Tensor, n_tokens: int, layout: str) -> torch.Tensor:
    """Logits [seq, vocab] of the sequence [e, m, ..., m] written out by hand, no mask, no padding."""
    seq = n_tokens + FIRST[layout]
    inputs = torch.stack([e] + [m] * (seq - 1))[None]
    with torch.no_grad():
        return lm.model(inputs_embeds=inputs.to(lm.device, lm.dtype)).logits[0].float().cpu()


def test_the_layouts_are_the_two_of_the_docs():
    assert set(LAYOUTS) == set(FIRST)
    for layout in LAYOUTS:
        assert check_layout(layout) == layout


@pytest.mark.parametrize("bad", ["m+e", "", "e+m*n", "E+M*N"])
def test_an_unknown_layout_is_rejected_everywhere_with_the_valid_ones_named(bad):
    with pytest.raises(ValueError, match="Unknown layout") as info:
        check_layout(bad)
    assert all(layout in str(info.value) for layout in LAYOUTS)
    for use in (lambda: first_scored_position(bad), lambda: sequence_length(3, bad),
                lambda: build_inputs(torch.zeros(1, 4), torch.zeros(1, 4), [3], bad)):
        with pytest.raises(ValueError, match="Unknown layout"):
            use()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sequence_length_is_the_text_plus_e_s_unscored_output(layout):
    assert first_scored_position(layout) == FIRST[layout]
    for n in (1, 2, 7):
        assert sequence_length(n, layout) == n + FIRST[layout]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_text_s_inputs_are_e_then_m_repeated_and_all_real(layout):
    e, m = torch.arange(6.0)[None], -torch.arange(6.0)[None] - 1  # [1, hidden 6]
    m_before = m.clone()
    inputs, mask = build_inputs(e, m, [4], layout)
    seq = 4 + FIRST[layout]
    assert inputs.shape == (1, seq, 6) and mask.shape == (1, seq)
    assert torch.equal(inputs[0, 0], e[0])
    assert all(torch.equal(inputs[0, k], m[0]) for k in range(1, seq))
    assert mask.tolist() == [[1] * seq] and mask.dtype == torch.long
    inputs[0, 1] += 100.0  # the inputs are a copy: writing them leaves m as it was
    assert torch.equal(m, m_before)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scored_logits_are_the_forward_pass_at_the_scored_positions(tiny_lm, layout):
    e, m = _pair(tiny_lm)
    n = 5
    logits = scored_logits(tiny_lm, e[None], m[None], [n], layout)
    assert logits.shape == (1, n, tiny_lm.model.config.vocab_size) and logits.dtype == torch.float32
    full = _manual_logits(tiny_lm, e, m, n, layout)
    start = FIRST[layout]
    assert torch.allclose(logits[0].detach().cpu(), full[start:start + n], atol=1e-5)
    if start:  # e's own output is not scored in "e+m*N": the columns are shifted by one
        assert not torch.allclose(logits[0].detach().cpu(), full[:n], atol=1e-3)


def test_a_shorter_text_in_a_batch_is_scored_as_if_it_were_alone(tiny_lm):
    # Right padding under a causal mask: the pads after a short text change nothing of its logits.
    e, m = _pair(tiny_lm, seed=1, rows=2)
    batch = scored_logits(tiny_lm, e, m, [2, 6], "e+m*N").detach()
    assert batch.shape[:2] == (2, 6)
    alone = scored_logits(tiny_lm, e[:1], m[:1], [2], "e+m*N").detach()
    assert torch.allclose(batch[0, :2], alone[0], atol=1e-4)
    assert torch.allclose(batch[1], scored_logits(tiny_lm, e[1:], m[1:], [6], "e+m*N").detach()[0], atol=1e-4)


def test_gradients_reach_e_and_m_through_the_scored_logits(tiny_lm):
    e, m = (v[None].clone().requires_grad_(True) for v in _pair(tiny_lm, seed=2))
    scored_logits(tiny_lm, e, m, [3], "e+m*N").logsumexp(-1).sum().backward()
    assert e.grad is not None and m.grad is not None
    assert e.grad.abs().sum() > 0 and m.grad.abs().sum() > 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predicted_tokens_are_the_argmax_of_the_scored_logits(tiny_lm, layout):
    e, m = _pair(tiny_lm, seed=3)
    tokens = predict_tokens(tiny_lm, e, m, 4, layout)  # one pair as [hidden]: a batch of one comes back
    assert tokens.shape == (1, 4) and tokens.device.type == "cpu"
    assert tokens.tolist() == scored_logits(tiny_lm, e[None], m[None], [4], layout).argmax(-1).cpu().tolist()
    start = FIRST[layout]
    assert tokens[0].tolist() == _manual_logits(tiny_lm, e, m, 4, layout)[start:start + 4].argmax(-1).tolist()


def test_token_metrics_of_an_exact_reconstruction():
    metrics = token_metrics([5, 6, 7], [5, 6, 7])
    assert metrics == TokenMetrics(accuracy=1.0, c_tokens=3, correct_prefix=3, correct_prefix_rel=1.0, n_tokens=3)
    assert metrics.as_dict() == {"accuracy": 1.0, "c_tokens": 3, "correct_prefix": 3, "correct_prefix_rel": 1.0,
                                 "n_tokens": 3}


def test_a_wrong_first_token_leaves_no_correct_prefix_but_counts_the_rest():
    metrics = token_metrics([0, 6, 7, 8], [5, 6, 7, 8])
    assert (metrics.accuracy, metrics.c_tokens, metrics.correct_prefix, metrics.correct_prefix_rel) == (0.75, 3, 0, 0.0)
    last = token_metrics([5, 6, 7, 0], [5, 6, 7, 8])
    assert (last.c_tokens, last.correct_prefix, last.correct_prefix_rel) == (3, 3, 0.75)
    none = token_metrics([1, 1], [2, 2])
    assert (none.accuracy, none.c_tokens, none.correct_prefix) == (0.0, 0, 0)


def test_token_metrics_compare_a_tensor_with_a_list_token_by_token():
    # A row of predict_tokens is a tensor, an entry's target a list.
    metrics = token_metrics(torch.tensor([5, 6, 0]), [5, 6, 7])
    assert (metrics.c_tokens, metrics.correct_prefix, metrics.n_tokens) == (2, 2, 3)


def test_token_metrics_of_different_lengths_is_an_error_and_of_nothing_is_zero():
    with pytest.raises(ValueError, match="3 tokens, target 2"):
        token_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="2 tokens, target 3"):
        token_metrics(torch.tensor([1, 2]), [1, 2, 3])
    empty = token_metrics([], [])
    assert (empty.accuracy, empty.correct_prefix_rel, empty.n_tokens) == (0.0, 0.0, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reconstruct_decodes_its_own_prediction_and_scores_it_against_the_target(tiny_lm, layout):
    e, m = _pair(tiny_lm, seed=4)
    predicted = predict_tokens(tiny_lm, e, m, 4, layout)[0].tolist()
    # Against its own prediction as the target: everything is right and the text is the prediction's.
    rec = reconstruct(tiny_lm, e, m, predicted, layout)
    assert rec.token_ids == predicted and rec.text == tiny_lm.decode(predicted)
    assert rec.metrics.accuracy == 1.0 and rec.metrics.correct_prefix == 4
    # Against another target: the text is still what the vectors say, not the target.
    target = list(predicted)
    target[1] = (target[1] + 1) % tiny_lm.model.config.vocab_size
    wrong = reconstruct(tiny_lm, e, m, target, layout)
    assert wrong.token_ids == predicted and wrong.text == rec.text
    assert (wrong.metrics.c_tokens, wrong.metrics.correct_prefix, wrong.metrics.n_tokens) == (3, 1, 4)


def test_reconstruct_reads_the_vectors_in_the_layout_it_is_given(tiny_lm):
    # The same (e, m) read in the two layouts are two different forward passes: the layout is not ignored.
    e, m = _pair(tiny_lm, seed=5)
    by_layout = {layout: reconstruct(tiny_lm, e, m, [0] * 6, layout).token_ids for layout in LAYOUTS}
    assert by_layout["e+m*N"] == predict_tokens(tiny_lm, e, m, 6, "e+m*N")[0].tolist()
    assert by_layout["e+m*(N-1)"] == predict_tokens(tiny_lm, e, m, 6, "e+m*(N-1)")[0].tolist()
    assert by_layout["e+m*N"] != by_layout["e+m*(N-1)"]


def test_float32_proto_tokens_reconstruct_on_a_bfloat16_model():
    """e and m are float32 (fitted, cached); a model loaded in bf16 (a GPU's default) takes them cast to its
    dtype, and gives the same tokens for the same vectors as long as bf16 keeps the argmax."""
    import torch

    from core.engine.models import TINY_MODEL, load_model
    from core.engine.reconstruct import reconstruct

    lm = load_model(TINY_MODEL, device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    e = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    result = reconstruct(lm, e, e.clone(), [1, 2, 3], "e+m*N")
    assert len(result.token_ids) == 3
