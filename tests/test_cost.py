"""core.engine.cost (a fitting step's FLOPs from the architecture) and LoadedModel.in_dtype, on the tiny model."""

from __future__ import annotations

import torch

from core.engine.cost import linear_weights, step_cost
from core.engine.reconstruct import scored_logits


def test_linear_weights_are_every_projection_and_the_head(tiny_lm):
    c = tiny_lm.model.config
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    head_dim = c.hidden_size // heads
    per_layer = (c.hidden_size * heads * head_dim * 2 + c.hidden_size * kv * head_dim * 2  # q, o; k, v
                 + 3 * c.hidden_size * c.intermediate_size)  # gate, up, down
    assert linear_weights(tiny_lm.model) == c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size


def test_step_cost_is_linear_in_rows_and_quadratic_in_attention(tiny_lm):
    one, eight = step_cost(tiny_lm.model, 1, 10), step_cost(tiny_lm.model, 8, 10)
    assert eight.linear_flops == 8 * one.linear_flops and eight.attention_flops == 8 * one.attention_flops
    longer = step_cost(tiny_lm.model, 1, 20)
    assert longer.linear_flops == 2 * one.linear_flops and longer.attention_flops == 4 * one.attention_flops
    # forward and backward to the inputs: 4 FLOPs a weight a position
    assert one.linear_flops == 4 * linear_weights(tiny_lm.model) * 10
    assert one.weight_bytes == sum(p.numel() * 4 for p in tiny_lm.model.parameters())


def test_in_dtype_is_a_kept_copy_that_computes_the_same_logits_roughly(tiny_lm):
    bf16 = tiny_lm.in_dtype(torch.bfloat16)
    assert bf16 is tiny_lm.in_dtype(torch.bfloat16) and tiny_lm.in_dtype(tiny_lm.dtype) is tiny_lm
    assert bf16.identity == tiny_lm.identity and bf16.dtype == torch.bfloat16
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(tiny_lm.model.parameters()).dtype == torch.float32  # the original is untouched
    assert not any(p.requires_grad for p in bf16.model.parameters())
    e, m = torch.randn(2, tiny_lm.hidden_size), torch.randn(2, tiny_lm.hidden_size)
    full = scored_logits(tiny_lm, e, m, [5, 5], "e+m*N")
    half = scored_logits(bf16, e, m, [5, 5], "e+m*N")
    assert half.dtype == torch.float32 and torch.allclose(full, half, atol=0.1 * float(full.abs().max()))
