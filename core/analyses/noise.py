"""Noise on proto-tokens (docs/science.md, B.2).

A noisy copy of a vector v [hidden] is v' = v + alpha * ||v|| * n / ||n||, so alpha is the norm of the
added vector relative to ||v||. The raw noise n comes from one of four distributions. Everything is
seeded through a torch.Generator: the same seed gives the same noise, and because the noise direction
does not depend on alpha, a sweep over alphas with one seed moves along the same directions (common
random numbers), which keeps accuracy-vs-alpha curves from jittering between grid points.

`run_noise` runs the paper's experiment over cached entries: for every (entry, type, alpha) it draws
all noisy copies with `noisy_pair` and decodes them in one batched forward pass, and returns a tidy table
(one row per draw) that `summarize_noise` and `flip_rates` turn into what the Noise page plots.

Two protocols (NoiseSettings.protocol): this lab's ("lab": several draws per text, the same directions along alpha)
and the seed paper's code ("authors": one draw per text, type and alpha, fresh directions at each alpha, over
originals fitted to at least 0.9: `authors_entries`). Every row records whether e's own output was the BOS token, so
the table can be counted either way (`counted_table`; core.engine.reconstruct.counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Float32, Int, Shaped
from torch import Tensor

from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.models import LoadedModel
from core.engine.reconstruct import (COUNTS, TokenMetrics, bos_target, counted, predict_with_e, stored_count,
                                     token_metrics)
from core.engine.shapes import checked
from core.texts.numbers import NumberList

if TYPE_CHECKING:
    from core.engine.fit import FitConfig

log = logging.getLogger(__name__)

NOISE_TYPES = ("gaussian", "uniform", "signed_exponential", "sinusoidal")
NOISE_TARGETS = ("e", "m", "both")
# The alpha grid of the paper (docs/science.md, B.2).
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


# alpha is the noise's norm relative to the vector's: at 100 the vector is all noise, and much larger values
# overflow float32 (the noisy input becomes inf and the "reconstruction" measures nothing).
MAX_ALPHA = 100.0


def _check_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or not 0 <= alpha <= MAX_ALPHA:
        raise ValueError(f"alpha must be a number in [0, {MAX_ALPHA:g}], got {alpha}")


@checked
def sample_sinusoid_parameters(rows: int, generator: torch.Generator
                               ) -> tuple[Int[Tensor, "rows"], Float[Tensor, "rows"]]:
    """One integer frequency k in [4, 32] and one phase phi in [0, 2*pi) per row.

    Returns (k [rows] int64, phi [rows] float32), on the generator's device.
    """
    device = generator.device
    frequencies = torch.randint(
        SINUSOID_MIN_FREQUENCY, SINUSOID_MAX_FREQUENCY + 1, (rows,), generator=generator, device=device
    )
    phases = torch.rand(rows, generator=generator, device=device, dtype=torch.float32) * (2 * math.pi)
    return frequencies, phases


@checked
def sinusoid(frequencies: Shaped[Tensor, "rows"], phases: Float[Tensor, "rows"], width: int
             ) -> Float32[Tensor, "rows width"]:
    """sin(2*pi*k*i/d + phi) for i = 0..d-1: frequencies [rows], phases [rows] -> [rows, width] float32."""
    # Float64 for the angle: k*i grows to ~32*width and float32 would lose phase accuracy.
    positions = torch.arange(width, device=frequencies.device, dtype=torch.float64)
    angles = 2 * math.pi * frequencies.to(torch.float64)[:, None] * positions[None, :] / width
    return torch.sin(angles + phases.to(torch.float64)[:, None]).to(torch.float32)


@checked
def sample_noise_direction(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> Float32[Tensor, "..."]:
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


@checked
def add_noise(target: Float[Tensor, "*rows hidden"], kind: str, alpha: float, generator: torch.Generator
              ) -> Float[Tensor, "*rows hidden"]:
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


@checked
def noisy_copies(target: Float[Tensor, "hidden"], kind: str, alpha: float, draws: int, seed: int
                 ) -> Float32[Tensor, "draws hidden"]:
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


@checked
def noisy_pair(e: Float[Tensor, "hidden"], m: Float[Tensor, "hidden"], spec: NoiseSpec
               ) -> tuple[Float[Tensor, "draws hidden"], Float[Tensor, "draws hidden"]]:
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


# ---- sweeps over cached entries ----------------------------------------------------------------

# Seed paper, Llama-3.2-1B, ~130 texts fitted to >= 0.9, noise on e (docs/science.md, B.2).
PAPER_ACCURACY: dict[float, float] = {0.0: 0.92, 0.05: 0.86, 0.1: 0.82, 0.2: 0.73, 0.5: 0.51, 1.0: 0.32}
# Only the two ends of the relative correct-prefix curve are reported there.
PAPER_PREFIX_REL: dict[float, float] = {0.0: 0.64, 1.0: 0.08}
PAPER_MODEL = "Llama-3.2-1B"
# The setting behind those numbers, for every legend and caption that shows them (docs/science.md, B.code).
PAPER_SETTING = ("Llama-3.2-1B-Instruct (bf16), ~130 Dolly-15k texts fitted to >= 0.9, one draw per text, type and "
                 "alpha, counted over N + 1 positions (BOS included)")
PAPER_COUNT = "bos"  # how the paper's numbers count (core.engine.reconstruct.COUNTS)
NOISE_PROTOCOLS = ("lab", "authors")
PROTOCOL_LABELS = {"lab": "this lab's: several draws, the same directions along alpha",
                   "authors": "the seed paper's code: one draw per alpha, fresh directions, originals fitted to >= 0.9"}
AUTHORS_MIN_ACCURACY = 0.9

ANALYSIS_KIND = "noise"
# Part of every cache key: bump it when the table's meaning or columns change.
# v2: the bos_correct column (1: e's own output was the BOS token, 0: it was not, -1: no BOS position) and the
# protocol setting.
NOISE_VERSION = "noise-sweep-v2"
NOISE_COLUMNS = (
    "entry", "type", "alpha", "draw", "accuracy", "c_tokens", "correct_prefix", "correct_prefix_rel",
    "n_tokens", "tokens", "bos_correct",
)
_INT_COLUMNS = ("draw", "c_tokens", "correct_prefix", "n_tokens", "bos_correct")
_FLOAT_COLUMNS = ("alpha", "accuracy", "correct_prefix_rel")
# A grid longer than this is a typo (say a pasted list), not an experiment anyone waits for.
MAX_ALPHAS = 50
MAX_DRAWS = 256

ProgressCallback = Callable[[float], None]


ALPHAS = NumberList(
    low=0.0, high=MAX_ALPHA, max_count=MAX_ALPHAS,
    empty="Enter at least one alpha, e.g. 0, 0.05, 0.1, 0.2, 0.5, 1.0.",
    not_a_number="{item!r} is not a number; separate alphas with commas, e.g. 0, 0.1, 0.5.",
    out_of_range=f"alpha {{item}} is out of range: every alpha must be a finite number from 0 to {MAX_ALPHA:g} "
                 "(the noise's norm relative to the vector's).",
    too_many=f"{{count}} alphas given; at most {MAX_ALPHAS}.")


def parse_alphas(text: str) -> tuple[float, ...]:
    """Alphas typed as a list ("0, 0.05, 0.1" or "0 0.05 0.1") -> sorted unique floats.

    Raises ValueError with a message meant for the user (which item is wrong and why).
    """
    return ALPHAS.parse(text)


@dataclass(frozen=True)
class NoiseSettings:
    """The grid of one noise sweep; normalised (types deduplicated, alphas sorted) so equal grids hash equal.

    as_dict() is JSON-ready and enters the cache key of every entry's table.
    """

    kinds: tuple[str, ...] = NOISE_TYPES
    alphas: tuple[float, ...] = PAPER_ALPHAS
    draws: int = 8
    target: NoiseTarget = "e"
    seed: int = 0
    protocol: str = "lab"  # NOISE_PROTOCOLS; "authors" has one draw per alpha, in a fresh direction at each

    def __post_init__(self) -> None:
        if self.protocol not in NOISE_PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; use one of {', '.join(NOISE_PROTOCOLS)}")
        if self.protocol == "authors":
            object.__setattr__(self, "draws", 1)
        kinds = tuple(dict.fromkeys(self.kinds))
        if not kinds:
            raise ValueError("choose at least one noise type")
        for kind in kinds:
            _check_kind(kind)
        alphas = tuple(sorted({float(a) for a in self.alphas}))
        if not alphas:
            raise ValueError("give at least one alpha")
        for alpha in alphas:
            _check_alpha(alpha)
        if len(alphas) > MAX_ALPHAS:
            raise ValueError(f"{len(alphas)} alphas given; at most {MAX_ALPHAS}")
        if not 1 <= int(self.draws) <= MAX_DRAWS:
            raise ValueError(f"draws must be between 1 and {MAX_DRAWS}, got {self.draws}")
        if self.target not in NOISE_TARGETS:
            raise ValueError(f"unknown noise target {self.target!r}; valid targets: {', '.join(NOISE_TARGETS)}")
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "draws", int(self.draws))
        object.__setattr__(self, "seed", int(self.seed))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"], d["alphas"] = list(self.kinds), list(self.alphas)
        return d

    @property
    def rows_per_entry(self) -> int:
        return len(self.kinds) * len(self.alphas) * self.draws

    @property
    def passes_per_entry(self) -> int:
        """Batched forward passes per entry: one per (type, alpha > 0), plus one clean pass shared by alpha 0."""
        return len(self.kinds) * sum(alpha > 0 for alpha in self.alphas) + (0.0 in self.alphas)


def entry_seed(seed: int, key: str) -> int:
    """The noise seed of one entry: derived from its key so that entries get independent directions (an
    average over texts then averages over directions too) while each stays reproducible and independent
    of which other entries share the sweep."""
    return int(cache_key("noise-seed", int(seed), key)[:8], 16)


def noise_key(lm: LoadedModel, entry: CacheEntry, settings: NoiseSettings) -> str:
    """Cache key of one entry's sweep table: the entry, the model it runs on and every grid setting."""
    # The device type enters because CPU and GPU kernels may round differently and flip a near-tie.
    return cache_key(NOISE_VERSION, lm.identity, lm.device.type, entry.key, settings.as_dict())


def _check_entry(lm: LoadedModel, entry: CacheEntry) -> None:
    if entry.model != lm.identity:
        raise ValueError(
            f"entry {entry.key[:8]} was fitted on {entry.model_name or entry.model!r}, not on {lm.name!r}; "
            "proto-tokens only mean something to the model they were fitted for")
    if entry.e.shape != (lm.hidden_size,) or entry.m.shape != (lm.hidden_size,):
        raise ValueError(f"entry {entry.key[:8]} has width {tuple(entry.e.shape)}, the model {lm.hidden_size}")


def _decode_draws(lm: LoadedModel, entry: CacheEntry, noisy_e: torch.Tensor, noisy_m: torch.Tensor,
                  batched: bool) -> torch.Tensor:
    """noisy_e, noisy_m [draws, hidden] -> argmax tokens [draws, n_tokens] (CPU), e's own prediction first
    ([draws, 1 + n_tokens]) where there is a BOS position (bos_target).

    batched=False is the reference (one forward pass per draw) that the tests and the benchmark compare with.
    """
    with_e = bos_target(lm, entry.layout) is not None
    if batched:
        return predict_with_e(lm, noisy_e, noisy_m, entry.n_tokens, entry.layout, with_e)
    rows = [predict_with_e(lm, noisy_e[i], noisy_m[i], entry.n_tokens, entry.layout, with_e)
            for i in range(noisy_e.shape[0])]
    return torch.cat(rows)


def alpha_seed(seed: int, alpha: float) -> int:
    """The authors' protocol draws a fresh direction at every alpha: the entry's seed and the alpha."""
    return int(cache_key("noise-alpha", int(seed), float(alpha))[:8], 16)


def _entry_rows(lm: LoadedModel, entry: CacheEntry, settings: NoiseSettings, batched: bool,
                tick: Callable[[], None]) -> list[dict[str, Any]]:
    """All rows of one entry's sweep; tick() after every (type, alpha)."""
    seed = entry_seed(settings.seed, entry.key)
    target = torch.tensor(entry.token_ids)
    bos = bos_target(lm, entry.layout)
    clean: torch.Tensor | None = None  # [1, n_tokens], decoded once: alpha 0 is the same for every type and draw
    rows: list[dict[str, Any]] = []
    for kind in settings.kinds:
        for alpha in settings.alphas:
            if alpha == 0:
                if clean is None:
                    clean = _decode_draws(lm, entry, entry.e[None], entry.m[None], batched=True)
                predicted = clean.expand(settings.draws, -1)
            else:
                draw_seed = alpha_seed(seed, alpha) if settings.protocol == "authors" else seed
                spec = NoiseSpec(kind=kind, alpha=alpha, draws=settings.draws, seed=draw_seed, target=settings.target)
                predicted = _decode_draws(lm, entry, *noisy_pair(entry.e, entry.m, spec), batched=batched)
            for draw, decoded in enumerate(predicted):
                bos_correct = -1 if bos is None else int(decoded[0] == bos)
                tokens = decoded if bos is None else decoded[1:]
                metrics = token_metrics(tokens, target)
                rows.append({
                    "entry": entry.key, "type": kind, "alpha": float(alpha), "draw": draw,
                    "accuracy": metrics.accuracy, "c_tokens": metrics.c_tokens,
                    "correct_prefix": metrics.correct_prefix, "correct_prefix_rel": metrics.correct_prefix_rel,
                    "n_tokens": metrics.n_tokens, "tokens": [int(t) for t in tokens], "bos_correct": bos_correct,
                })
            tick()
    return rows


def _table(rows: list[dict[str, Any]] | dict[str, list]) -> pd.DataFrame:
    """The sweep table with fixed column order and dtypes, so a table read back from JSON equals the original."""
    df = pd.DataFrame(rows, columns=list(NOISE_COLUMNS))
    for column in _INT_COLUMNS:
        df[column] = df[column].astype("int64")
    for column in _FLOAT_COLUMNS:
        df[column] = df[column].astype("float64")
    for column in ("entry", "type"):
        df[column] = df[column].astype(object)
    return df


def _table_from_meta(meta: dict) -> pd.DataFrame | None:
    columns = meta.get("columns")
    if not isinstance(columns, dict) or set(columns) != set(NOISE_COLUMNS):
        return None
    try:
        return _table(columns)
    except (TypeError, ValueError):
        return None


def _load_entry_table(cache: ProtoCache, key: str) -> pd.DataFrame | None:
    stored = cache.get_analysis(ANALYSIS_KIND, key)
    if stored is None:
        return None
    table = _table_from_meta(stored[0])
    if table is None:
        log.warning("Ignoring malformed noise sweep %s in the cache", key[:8])
    return table


def _store_entry_table(cache: ProtoCache, key: str, entry: CacheEntry, settings: NoiseSettings,
                       table: pd.DataFrame) -> None:
    meta = {"version": NOISE_VERSION, "entry": entry.key, "settings": settings.as_dict(),
            "columns": {column: table[column].tolist() for column in NOISE_COLUMNS}}
    cache.keep_analysis(ANALYSIS_KIND, key, meta)


def load_noise(lm: LoadedModel, entries: Sequence[CacheEntry], settings: NoiseSettings,
                 cache: ProtoCache) -> pd.DataFrame | None:
    """The sweep table when every entry's part is already cached (no forward pass), else None."""
    if not entries:
        return None
    tables = []
    for entry in entries:
        table = _load_entry_table(cache, noise_key(lm, entry, settings))
        if table is None:
            return None
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def run_noise(
    lm: LoadedModel,
    entries: Sequence[CacheEntry],
    settings: NoiseSettings | None = None,
    progress: ProgressCallback | None = None,
    cache: ProtoCache | None = None,
    *,
    batched: bool = True,
) -> pd.DataFrame:
    """Noisy reconstructions of every entry for every noise type x alpha x draw: one row per draw.

    settings: the sweep (default NoiseSettings(): the paper's four types and alphas, 8 draws, noise on e).
    Returns the analysis's result, a table with the columns NOISE_COLUMNS: entry (key), type, alpha, draw,
    accuracy, c_tokens, correct_prefix, correct_prefix_rel, n_tokens, tokens (list of [n_tokens] ids).
    Rows: len(entries) x len(kinds) x len(alphas) x draws, in that order.
    All draws of one (entry, type, alpha) are decoded in one forward pass of batch `draws` (batched=False:
    one pass per draw, the reference for tests and benchmarks). Alpha 0 rows are the entry's own
    reconstruction. The same seed gives the same table. progress(fraction in [0, 1]) is called after
    every (entry, type, alpha). With a cache, each entry's part is read from it when there and stored after;
    load_noise reads it without computing.
    """
    settings = NoiseSettings() if settings is None else settings
    if not entries:
        raise ValueError("no entries to sweep: choose at least one fitted entry")
    for entry in entries:
        _check_entry(lm, entry)
    units_per_entry = len(settings.kinds) * len(settings.alphas)
    total = len(entries) * units_per_entry
    done = 0

    def tick(units: int = 1) -> None:
        nonlocal done
        done += units
        if progress is not None:
            progress(min(done / total, 1.0))

    tables = []
    for entry in entries:
        key = noise_key(lm, entry, settings)
        table = _load_entry_table(cache, key) if cache is not None else None
        if table is not None:
            tick(units_per_entry)
        else:
            table = _table(_entry_rows(lm, entry, settings, batched, tick))
            if cache is not None:
                _store_entry_table(cache, key, entry, settings, table)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def authors_entries(entries: Sequence[CacheEntry]) -> list[CacheEntry]:
    """The entries the seed paper's noise protocol sweeps: those fitted to at least AUTHORS_MIN_ACCURACY in its
    count (over N + 1 where e's BOS prediction is recorded; core.engine.reconstruct.stored_count), its originals (a
    page offers a set's originals for it)."""
    return [e for e in entries if stored_count(e.metrics, e.n_tokens, PAPER_COUNT).accuracy >= AUTHORS_MIN_ACCURACY]


def counted_table(df: pd.DataFrame, count: str = "text") -> pd.DataFrame:
    """The sweep table with accuracy, c_tokens, correct_prefix, correct_prefix_rel and n_tokens in one of
    core.engine.reconstruct.COUNTS ("bos": over N + 1 with e's BOS prediction, where a row has a BOS position)."""
    if count not in COUNTS:
        raise ValueError(f"Unknown count {count!r}; use one of {', '.join(COUNTS)}.")
    if count == "text" or df.empty:
        return df
    columns = ["accuracy", "c_tokens", "correct_prefix", "correct_prefix_rel", "n_tokens"]

    def row_counted(row) -> list:
        metrics = TokenMetrics(**{c: row[c] for c in columns})
        bos = None if row["bos_correct"] < 0 else bool(row["bos_correct"])
        return list(counted(metrics, bos, count).as_dict().values())

    values = pd.DataFrame([row_counted(row) for _, row in df[columns + ["bos_correct"]].iterrows()],
                          columns=list(TokenMetrics.__dataclass_fields__), index=df.index)
    out = df.copy()
    for column in columns:
        out[column] = values[column].astype(df[column].dtype)
    return out


def entry_curves(df: pd.DataFrame, entries: Sequence[CacheEntry]) -> pd.DataFrame:
    """One accuracy curve per entry (mean over types and draws at each alpha), with what the entry's fit ended at:
    columns entry, alpha, accuracy_mean, correct_prefix_rel_mean, rows, n_tokens, final_loss, fit_accuracy, steps."""
    grouped = df.groupby(["entry", "alpha"], sort=True)
    out = grouped[["accuracy", "correct_prefix_rel"]].mean().add_suffix("_mean")
    out["rows"] = grouped.size()
    out = out.reset_index()
    facts = {e.key: (e.n_tokens, e.metrics.get("loss"), float(e.metrics.get("accuracy", 0.0)),
                     int(e.metrics.get("steps", 0))) for e in entries}
    for i, column in enumerate(("n_tokens", "final_loss", "fit_accuracy", "steps")):
        out[column] = out["entry"].map(lambda key, i=i: facts.get(key, (None,) * 4)[i])
    return out


def summarize_noise(df: pd.DataFrame, by: Sequence[str] = ("type", "alpha")) -> pd.DataFrame:
    """Mean, std, min and max of accuracy and correct_prefix_rel per group (default type x alpha).

    The statistics run over every row of a group, i.e. over draws and entries together; std is the
    population std (ddof 0), so a single draw gives 0 rather than NaN. Columns: the `by` columns, then
    accuracy_mean, accuracy_std, accuracy_min, accuracy_max, the same for correct_prefix_rel, and rows.
    """
    by = list(by)
    stats = ("mean", "std", "min", "max")
    grouped = df.groupby(by, sort=True)
    out = grouped[["accuracy", "correct_prefix_rel"]].agg(["mean", lambda s: s.std(ddof=0), "min", "max"])
    out.columns = [f"{metric}_{stat}" for metric in ("accuracy", "correct_prefix_rel") for stat in stats]
    out["rows"] = grouped.size()
    return out.reset_index()


def flip_rates(df: pd.DataFrame, entry: CacheEntry, kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """How often each token of one entry is wrong, per alpha: [position x alpha], values in [0, 1].

    A token "flips" when the noisy reconstruction differs from the entry's target token at that position;
    the share runs over the draws (and the noise types in `kinds`, all by default). The alpha-0 column shows
    the entry's own errors, the baseline the other columns start from. Index: position 0..n_tokens-1.
    """
    rows = df[df["entry"] == entry.key]
    if kinds is not None:
        rows = rows[rows["type"].isin(list(kinds))]
    target = torch.tensor(entry.token_ids)
    columns: dict[float, list[float]] = {}
    for alpha, group in rows.groupby("alpha", sort=True):
        predicted = torch.tensor(group["tokens"].tolist())  # [rows, n_tokens]
        columns[float(alpha)] = (predicted != target).float().mean(0).tolist()
    rates = pd.DataFrame(columns, index=pd.RangeIndex(entry.n_tokens, name="position"), dtype="float64")
    rates.columns.name = "alpha"
    return rates


def set_originals(lm: LoadedModel, set_name: str, sidebar: "FitConfig", cache: ProtoCache) -> list[CacheEntry]:
    """The fitted originals of a built-in text set (kind "original"; its variants left out), looked up with its
    shipped pre-fit's settings where it ships for this model, else the sidebar's: what the seed paper's noise
    protocol sweeps, and a spread across texts for this lab's."""
    from core.analyses.embeddings import config_choices
    from core.engine.sets import set_entries
    from core.texts.textsets import builtin_set

    frame = builtin_set(set_name)
    texts = frame[frame["kind"] == "original"]["text"].tolist()
    choice = config_choices(lm, set_name, sidebar, False)[0]
    return [entry for entry in set_entries(lm, texts, choice, cache) if entry is not None]
