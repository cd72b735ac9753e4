"""What a fitting step costs, counted from the model's architecture (bench/limits.py, bench/gpu.py).

A fitting step is one forward pass of the frozen model over the input sequence ([e, m, ..., m]: n_tokens + 1
positions for the default layout) and a backward pass to the inputs only: the weights are frozen, so no
weight gradient is computed. Per position, a linear layer of W (out x in) costs 2 * in * out FLOPs forward and
the same again backward (dx = dy W); the attention products (Q K^T and P V, per layer and head) cost
2 * 2 * T^2 * head_dim per sequence forward, counted in full (the math path computes the whole square) and
twice that backward (dQ, dK, dP, dV). Embedding lookups and element-wise work are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepCost:
    """FLOPs and weight bytes of one fitting step of a batch (forward + backward to the inputs)."""

    linear_flops: float
    attention_flops: float
    weight_bytes: int  # the weights one pass reads; a step reads them twice (forward, backward)

    @property
    def flops(self) -> float:
        return self.linear_flops + self.attention_flops


def linear_weights(model: torch.nn.Module) -> int:
    """Multiply-accumulates per position: the elements of every linear layer's weight (the tied LM head counted
    once, as the layer that uses it)."""
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


def step_cost(model: torch.nn.Module, batch: int, seq_len: int) -> StepCost:
    """The cost of one fitting step of `batch` rows of `seq_len` input positions each."""
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    layers = int(config.num_hidden_layers)
    positions = batch * seq_len
    linear = 2 * linear_weights(model) * positions * 2  # forward + backward to the inputs
    attention = 2 * 2 * batch * seq_len**2 * heads * head_dim * layers * 3  # forward + twice that backward
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return StepCost(linear_flops=float(linear), attention_flops=float(attention), weight_bytes=weight_bytes)
