"""core.analyses.noise: the four noise generators and the alpha scaling of docs/science.md, B.2."""

from __future__ import annotations

import inspect

import pytest
import torch

from core.analyses.noise import (
    NOISE_TYPES,
    SINUSOID_MAX_FREQUENCY,
    SINUSOID_MIN_FREQUENCY,
    NoiseSpec,
    add_noise,
    make_generator,
    noisy_copies,
    noisy_pair,
    sample_noise_direction,
    sample_sinusoid_parameters,
)

HIDDEN = 256


@pytest.fixture
def target() -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(123)) * 3.0


@pytest.mark.parametrize("kind", NOISE_TYPES)
@pytest.mark.parametrize("alpha", [0.05, 0.5, 1.0, 2.0])
def test_added_noise_norm_is_alpha_times_target_norm(kind: str, alpha: float, target: torch.Tensor) -> None:
    noisy = noisy_copies(target, kind, alpha, draws=16, seed=0)
    added_norms = (noisy - target).norm(dim=-1)
    expected = alpha * target.norm()
    torch.testing.assert_close(added_norms, expected.expand(16), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_alpha_zero_changes_nothing(kind: str, target: torch.Tensor) -> None:
    noisy = noisy_copies(target, kind, 0.0, draws=4, seed=0)
    assert torch.equal(noisy, target.expand(4, -1))
    batch = torch.randn(3, HIDDEN)
    assert torch.equal(add_noise(batch, kind, 0.0, make_generator(0)), batch)


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_same_seed_same_noise_different_seed_different(kind: str, target: torch.Tensor) -> None:
    first = noisy_copies(target, kind, 0.3, draws=5, seed=7)
    assert torch.equal(first, noisy_copies(target, kind, 0.3, draws=5, seed=7))
    assert not torch.allclose(first, noisy_copies(target, kind, 0.3, draws=5, seed=8))
    # Draws are independent of each other.
    assert not torch.allclose(first[0], first[1])


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_noise_direction_does_not_depend_on_alpha(kind: str, target: torch.Tensor) -> None:
    small = noisy_copies(target, kind, 0.1, draws=3, seed=2) - target
    large = noisy_copies(target, kind, 1.0, draws=3, seed=2) - target
    torch.testing.assert_close(large, small * 10, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", NOISE_TYPES)
@pytest.mark.parametrize("shape", [(HIDDEN,), (4, HIDDEN), (2, 3, HIDDEN)])
def test_shapes_and_dtype(kind: str, shape: tuple[int, ...]) -> None:
    noise = sample_noise_direction(kind, shape, make_generator(0))
    assert noise.shape == shape and noise.dtype == torch.float32
    noisy = add_noise(torch.randn(shape, dtype=torch.float64), kind, 0.2, make_generator(0))
    assert noisy.shape == shape and noisy.dtype == torch.float32


def test_distribution_ranges_and_moments() -> None:
    gaussian = sample_noise_direction("gaussian", (200_000,), make_generator(0))
    assert abs(gaussian.mean().item()) < 0.01 and abs(gaussian.std().item() - 1) < 0.01

    uniform = sample_noise_direction("uniform", (200_000,), make_generator(0))
    assert uniform.min() >= -1 and uniform.max() <= 1
    assert abs(uniform.mean().item()) < 0.01 and abs(uniform.var().item() - 1 / 3) < 0.01

    exponential = sample_noise_direction("signed_exponential", (200_000,), make_generator(0))
    assert abs(exponential.mean().item()) < 0.02
    assert abs(exponential.abs().mean().item() - 1) < 0.02
    assert 0.48 < (exponential > 0).float().mean().item() < 0.52

    sinusoidal = sample_noise_direction("sinusoidal", (64, HIDDEN), make_generator(0))
    assert sinusoidal.abs().max() <= 1


def test_sinusoid_frequencies_recovered_by_fft_lie_in_range() -> None:
    draws = 200
    noise = sample_noise_direction("sinusoidal", (draws, HIDDEN), make_generator(5))
    # An integer frequency k over the full width puts all the energy in FFT bin k.
    recovered = torch.fft.rfft(noise.double(), dim=-1).abs().argmax(dim=-1)
    assert recovered.min() >= SINUSOID_MIN_FREQUENCY and recovered.max() <= SINUSOID_MAX_FREQUENCY
    # Same generator stream, so the exposed parameters are the ones that were used.
    frequencies, phases = sample_sinusoid_parameters(draws, make_generator(5))
    assert torch.equal(recovered, frequencies)
    assert phases.min() >= 0 and phases.max() < 2 * torch.pi
    # Over 200 rows both ends of the inclusive range should appear.
    assert set(frequencies.tolist()) >= {SINUSOID_MIN_FREQUENCY, SINUSOID_MAX_FREQUENCY}


def test_sinusoid_matches_formula() -> None:
    noise = sample_noise_direction("sinusoidal", (3, 50), make_generator(1))
    frequencies, phases = sample_sinusoid_parameters(3, make_generator(1))
    i = torch.arange(50, dtype=torch.float64)
    expected = torch.sin(2 * torch.pi * frequencies.double()[:, None] * i / 50 + phases.double()[:, None])
    torch.testing.assert_close(noise.double(), expected, rtol=0, atol=1e-6)


def test_unknown_kind_lists_valid_kinds(target: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="gaussian.*uniform.*signed_exponential.*sinusoidal"):
        noisy_copies(target, "pink", 0.1, draws=1, seed=0)
    with pytest.raises(ValueError, match="gaussian"):
        NoiseSpec(kind="brown")
    with pytest.raises(ValueError, match="alpha"):
        noisy_copies(target, "gaussian", -0.1, draws=1, seed=0)


def test_noisy_pair_touches_only_the_target(target: torch.Tensor) -> None:
    m = torch.randn(HIDDEN)
    spec = NoiseSpec(kind="uniform", alpha=0.5, draws=3, seed=4, target="e")
    noisy_e, noisy_m = noisy_pair(target, m, spec)
    assert noisy_e.shape == noisy_m.shape == (3, HIDDEN)
    assert torch.equal(noisy_m, m.expand(3, -1))
    assert not torch.allclose(noisy_e, target.expand(3, -1))

    both_e, both_m = noisy_pair(target, m, NoiseSpec(kind="uniform", alpha=0.5, draws=3, seed=4, target="both"))
    assert torch.equal(both_e, noisy_e)
    assert not torch.allclose(both_m, m.expand(3, -1))
    only_m_e, _ = noisy_pair(target, m, NoiseSpec(kind="uniform", alpha=0.5, draws=3, seed=4, target="m"))
    assert torch.equal(only_m_e, target.expand(3, -1))
    assert spec.as_dict() == {"kind": "uniform", "alpha": 0.5, "draws": 3, "seed": 4, "target": "e"}


def test_sinusoid_phases_cover_the_whole_turn() -> None:
    _, phases = sample_sinusoid_parameters(400, make_generator(2))
    assert phases.dtype == torch.float32
    assert phases.min() < 0.1 and phases.max() > 2 * torch.pi - 0.1  # all of [0, 2 pi), not a sliver of it


def test_noise_on_m_is_its_own_reproducible_stream(target: torch.Tensor) -> None:
    """Target "m" noises m alone, with the stream seed + 1_000_003 (so a stored sweep on m reproduces, and m's
    noise is not e's); "both" gives m that same noise."""
    m = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(9))
    spec = NoiseSpec(kind="gaussian", alpha=0.3, draws=2, seed=7, target="m")
    noisy_e, noisy_m = noisy_pair(target, m, spec)
    assert torch.equal(noisy_e, target.expand(2, -1))
    assert torch.equal(noisy_m, noisy_copies(m, "gaussian", 0.3, 2, 7 + 1_000_003))
    _, both_m = noisy_pair(target, m, NoiseSpec(kind="gaussian", alpha=0.3, draws=2, seed=7, target="both"))
    assert torch.equal(both_m, noisy_m)


def test_noisy_pair_gives_float32_and_refuses_anything_but_two_vectors_of_one_width() -> None:
    e, m = torch.randn(HIDDEN, dtype=torch.float64), torch.randn(HIDDEN, dtype=torch.float64)
    for target_name in ("e", "m", "both"):
        noisy_e, noisy_m = noisy_pair(e, m, NoiseSpec(alpha=0.1, draws=2, target=target_name))
        assert noisy_e.dtype == noisy_m.dtype == torch.float32, target_name
    # The function's own check, the one the dashboard and the CLI run (the suite's shape checker would answer first).
    unchecked = inspect.unwrap(noisy_pair)
    for bad_e, bad_m in ((torch.zeros(2, HIDDEN), torch.zeros(2, HIDDEN)), (torch.zeros(HIDDEN), torch.zeros(8))):
        with pytest.raises(ValueError, match=r"e and m must be vectors of the same width, got \(\d+,( \d+)?\) and \("):
            unchecked(bad_e, bad_m, NoiseSpec())


def test_a_spec_takes_one_draw_and_names_what_is_wrong() -> None:
    assert NoiseSpec(draws=1).draws == 1
    with pytest.raises(ValueError, match=r"^draws must be >= 1, got 0$"):
        NoiseSpec(draws=0)
    with pytest.raises(ValueError, match=r"^unknown noise target 'x'; valid targets: e, m, both$"):
        NoiseSpec(target="x")


def test_add_noise_adds_the_scaled_unit_direction_and_names_a_shapeless_target(target: torch.Tensor) -> None:
    direction = sample_noise_direction("uniform", (2, HIDDEN), make_generator(3))
    rows = target.expand(2, -1)
    expected = rows + 0.4 * rows.norm(dim=-1, keepdim=True) * direction / direction.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(add_noise(rows, "uniform", 0.4, make_generator(3)), expected, rtol=0, atol=1e-5)
    unchecked_add, unchecked_direction, unchecked_copies = (inspect.unwrap(f) for f in
                                                             (add_noise, sample_noise_direction, noisy_copies))
    with pytest.raises(ValueError, match=r"^target needs at least one dimension \[\.\.\., hidden\]$"):
        unchecked_add(torch.tensor(1.0), "uniform", 0.1, make_generator(0))
    with pytest.raises(ValueError, match=r"^shape needs at least one dimension \(the width\)$"):
        unchecked_direction("uniform", (), make_generator(0))
    with pytest.raises(ValueError, match=r"^target must be one vector \[hidden\], got shape \(2, 3\)$"):
        unchecked_copies(torch.zeros(2, 3), "uniform", 0.1, draws=1, seed=0)
    with pytest.raises(ValueError, match=r"^draws must be >= 1, got 0$"):
        unchecked_copies(target, "uniform", 0.1, draws=0, seed=0)
    assert noisy_copies(target.double(), "uniform", 0.1, draws=2, seed=0).dtype == torch.float32
