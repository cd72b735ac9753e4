"""Noise on proto-tokens (PAPERS.md B item 2).

A noisy copy of a vector v [hidden] is v' = v + alpha * ||v|| * n / ||n||, so alpha is the norm of the
added vector relative to ||v||. The raw noise n comes from one of four distributions. Everything is
seeded through a torch.Generator: the same seed gives the same noise, and because the noise direction
does not depend on alpha, a sweep over alphas with one seed moves along the same directions (common
random numbers), which keeps accuracy-vs-alpha curves from jittering between grid points.

The sweep over cached entries lives elsewhere; it is expected to call `noisy_pair(e, m, spec)` for every
NoiseSpec of its grid and reconstruct from each row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

NOISE_TYPES = ("gaussian", "uniform", "signed_exponential", "sinusoidal")
NOISE_TARGETS = ("e", "m", "both")
# The alpha grid of the paper (PAPERS.md B item 2).
PAPER_ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
# Integer frequencies of the sinusoidal noise, inclusive on both ends.
SINUSOID_MIN_FREQUENCY = 4
SINUSOID_MAX_FREQUENCY = 32

NoiseTarget = Literal["e", "m", "both"]

# Guards the division by ||n|| against an all-zero draw (possible only in theory, e.g. width 1).
_NORM_EPS = 1e-12


def _check_kind(kind: str) -> None:
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; valid types: {', '.join(NOISE_TYPES)}")


def _check_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")


def sample_sinusoid_parameters(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One integer frequency k in [4, 32] and one phase phi in [0, 2*pi) per row.

    Returns (k [rows] int64, phi [rows] float32), on the generator's device.
    """
    device = generator.device
    frequencies = torch.randint(
        SINUSOID_MIN_FREQUENCY, SINUSOID_MAX_FREQUENCY + 1, (rows,), generator=generator, device=device
    )
    phases = torch.rand(rows, generator=generator, device=device, dtype=torch.float32) * (2 * math.pi)
    return frequencies, phases


def sinusoid(frequencies: torch.Tensor, phases: torch.Tensor, width: int) -> torch.Tensor:
    """sin(2*pi*k*i/d + phi) for i = 0..d-1: frequencies [rows], phases [rows] -> [rows, width] float32."""
    # Float64 for the angle: k*i grows to ~32*width and float32 would lose phase accuracy.
    positions = torch.arange(width, device=frequencies.device, dtype=torch.float64)
    angles = 2 * math.pi * frequencies.to(torch.float64)[:, None] * positions[None, :] / width
    return torch.sin(angles + phases.to(torch.float64)[:, None]).to(torch.float32)


def sample_noise_direction(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Raw (unscaled) noise of the given shape, e.g. [draws, hidden], float32 on the generator's device.

    gaussian: N(0, 1). uniform: U(-1, 1). signed_exponential: Exp(1) times a random sign.
    sinusoidal: sin(2*pi*k*i/d + phi) along the last dimension (d its size, i the coordinate index), with
    one integer k ~ U{4..32} and one phi ~ U(0, 2*pi) per row.
    """
    _check_kind(kind)
    shape = tuple(int(size) for size in shape)
    if len(shape) == 0:
        raise ValueError("shape needs at least one dimension (the width)")
    device = generator.device
    options: dict[str, Any] = {"generator": generator, "device": device, "dtype": torch.float32}
    if kind == "gaussian":
        return torch.randn(shape, **options)
    if kind == "uniform":
        return torch.rand(shape, **options) * 2 - 1
    if kind == "signed_exponential":
        magnitudes = torch.empty(shape, device=device, dtype=torch.float32).exponential_(1.0, generator=generator)
        signs = torch.randint(0, 2, shape, generator=generator, device=device).to(torch.float32) * 2 - 1
        return magnitudes * signs
    width = shape[-1]
    rows = math.prod(shape[:-1])
    frequencies, phases = sample_sinusoid_parameters(rows, generator)
    return sinusoid(frequencies, phases, width).reshape(shape)


def add_noise(target: torch.Tensor, kind: str, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """target [..., hidden] + alpha * ||target|| * n / ||n||, norms per row over the last dimension.

    The added vector has norm alpha * ||target|| exactly (up to float32 rounding). Returns a new float32
    tensor on the generator's device; alpha = 0 returns an exact copy. The noise is drawn even for
    alpha = 0 so that the generator advances the same way at every alpha.
    """
    _check_kind(kind)
    _check_alpha(alpha)
    clean = target.detach().to(device=generator.device, dtype=torch.float32)
    if clean.ndim == 0:
        raise ValueError("target needs at least one dimension [..., hidden]")
    noise = sample_noise_direction(kind, tuple(clean.shape), generator)
    if alpha == 0:
        return clean.clone()
    unit_noise = noise / noise.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return clean + alpha * clean.norm(dim=-1, keepdim=True) * unit_noise


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed`, the only source of randomness in this module."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def noisy_copies(target: torch.Tensor, kind: str, alpha: float, draws: int, seed: int) -> torch.Tensor:
    """`draws` independent noisy copies of target [hidden] -> [draws, hidden] float32, on target's device.

    The same seed gives the same noise; the noise is drawn on the CPU so the result does not depend on
    the device either.
    """
    if target.ndim != 1:
        raise ValueError(f"target must be one vector [hidden], got shape {tuple(target.shape)}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    generator = make_generator(seed)
    repeated = target.detach().to("cpu", torch.float32).expand(draws, -1)
    return add_noise(repeated, kind, alpha, generator).to(target.device)


@dataclass(frozen=True)
class NoiseSpec:
    """One point of a noise sweep: which noise, how strong, how many draws, on which proto-token.

    target "e" follows the paper (noise on e only); "m" and "both" are extensions. as_dict() is JSON-ready
    for cache keys and result tables.
    """

    kind: str = "gaussian"
    alpha: float = 0.1
    draws: int = 8
    seed: int = 0
    target: NoiseTarget = "e"

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        _check_alpha(self.alpha)
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if self.target not in NOISE_TARGETS:
            raise ValueError(f"unknown noise target {self.target!r}; valid targets: {', '.join(NOISE_TARGETS)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def noisy_pair(e: torch.Tensor, m: torch.Tensor, spec: NoiseSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply spec to a fitted pair e [hidden], m [hidden] -> (e' [draws, hidden], m' [draws, hidden]).

    The proto-token that spec.target leaves alone is repeated unchanged. With target "both", e and m get
    independent noise, and e's noise is the same as with target "e" and the same seed.
    """
    if e.shape != m.shape or e.ndim != 1:
        raise ValueError(f"e and m must be vectors of the same width, got {tuple(e.shape)} and {tuple(m.shape)}")
    clean_e = e.detach().to(torch.float32).expand(spec.draws, -1).clone()
    clean_m = m.detach().to(torch.float32).expand(spec.draws, -1).clone()
    noisy_e = clean_e
    noisy_m = clean_m
    if spec.target in ("e", "both"):
        noisy_e = noisy_copies(e, spec.kind, spec.alpha, spec.draws, spec.seed)
    if spec.target in ("m", "both"):
        # A derived seed keeps m's noise independent of e's while staying reproducible.
        noisy_m = noisy_copies(m, spec.kind, spec.alpha, spec.draws, spec.seed + 1_000_003)
    return noisy_e, noisy_m
