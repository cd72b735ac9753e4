"""What a fitting step costs, counted from the model's architecture (bench/limits.py, bench/gpu.py), and what this
device's matrix products reach (matmul_rate; bf16_slowdown guards FitConfig.compute).

A fitting step is one forward pass of the frozen model over the input sequence ([e, m, ..., m]: n_tokens + 1
positions for the default layout) and a backward pass to the inputs only: the weights are frozen, so no
weight gradient is computed. Per position, a linear layer of W (out x in) costs 2 * in * out FLOPs forward and
the same again backward (dx = dy W); the attention products (Q K^T and P V, per layer and head) cost
2 * 2 * T^2 * head_dim per sequence forward, counted in full (the math path computes the whole square) and
twice that backward (dQ, dK, dP, dV). Embedding lookups and element-wise work are not counted.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

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


def best_time(fn: Callable[[], object], reps: int) -> float:
    """The fastest of `reps` calls of fn, after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_rate(dtype: torch.dtype, n: int = 4096, reps: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of an n x n matrix product in dtype on this device (the best of reps)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def product():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    return 2 * n**3 / best_time(product, reps) / 1e9


# A bf16 product must reach this share of the float32 rate for bf16 steps to pay (FitConfig.compute). On a CPU with
# AMX it is several times faster; without a bf16 unit (AVX2 only, e.g. an AMD EPYC of 2021) torch falls back to a
# path about 300x slower than float32 (0.28 against 83 GFLOP/s measured on one).
BF16_MIN_SHARE = 0.8


@functools.cache
def bf16_rates(device: str = "cpu") -> tuple[float, float]:
    """(bf16, float32) GFLOP/s of a 256 x 256 product on this device: a probe of a few tenths of a second at most,
    once per process."""
    return matmul_rate(torch.bfloat16, 256, 2, device), matmul_rate(torch.float32, 256, 2, device)


def bf16_slowdown(device: str = "cpu") -> str | None:
    """None when bf16 matrix products are fast on this device; otherwise one line saying why bf16 steps would be
    slower than float32 ones."""
    if device.startswith("cuda"):
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
    bf16, fp32 = bf16_rates(device)
    if bf16 >= BF16_MIN_SHARE * fp32:
        return None
    return (f"this {device.upper()} multiplies bf16 matrices at {bf16:.1f} GFLOP/s against {fp32:.0f} in float32 "
            f"(no AMX or AVX512-BF16 unit), so bf16 steps would be slower")


def cpu_name() -> str:
    """This machine's CPU model as /proc/cpuinfo names it (the processor string elsewhere), for benchmark records:
    figures measured on different CPUs are not comparable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
