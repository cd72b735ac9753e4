"""Fitting proto-tokens e and m so that a frozen LM rebuilds texts in one forward pass.

The default :class:`FitConfig` is the recipe of docs/science.md (A.recipe) exactly as published; :func:`preset`
also offers ``"fast"``, measured in ``bench/fit_speed.py`` to reach the same accuracy sooner.

Several texts fit together in one padded batch. Each text has its own parameters (e_i and m_i, or a
shared m), so a text that has converged simply leaves the forward pass and the optimiser: its
parameters get no gradient, and AdamW skips parameters without one.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from core.engine import cost
from core.engine.cache import CacheEntry, CacheWriteError, ProtoCache, entry_key
from core.engine.models import LoadedModel
from core.engine.reconstruct import bos_target, check_layout, information_content, reconstruct, scored_logits
from core.engine.start import START_KINDS, Start, learned_starts
from core.engine.teacher import RegularizerConfig, regularizer_loss

# "first-paper": the recipe of Mezentsev & Oseledets 2025 (docs/science.md, A.recipe); "seed-paper": the loop of the
# seed paper's own code (Bondarenko et al. 2026; docs/science.md, B.code); "fast": this lab's.
PRESETS = ("first-paper", "seed-paper", "fast")
# Names a preset had before: entries, links and scripts that say "paper" mean the first paper's recipe.
PRESET_ALIASES = {"paper": "first-paper"}
# What the dashboard offers, first the default: the fast preset (bench/fit_speed.py, bench/start.py), then the
# papers' recipes, named for their papers.
UI_PRESETS = ("fast", "first-paper", "seed-paper")
PRESET_LABELS = {"fast": "fast (this lab's)", "first-paper": "first paper (Mezentsev & Oseledets 2025)",
                 "seed-paper": "seed paper's code (Bondarenko et al. 2026)"}
INITS = ("normal", "embedding", "token")
# A draw whose loss is still this share of log(vocab) (the loss of a uniform guess) after
# FitConfig.redraw_after steps is stuck: see preset().
REDRAW_LOSS_SHARE = 0.9
# A draw whose loss is still this share of log(vocab) after FitConfig.redraw_plateau steps sits on a plateau a few
# tokens wide and stays there (seen on texts of 25-35 tokens): see preset().
REDRAW_PLATEAU_SHARE = 0.7
# Fields added after entries were shipped enter the cache key only when set, so the keys of those entries hold.
# (redraw_after entered every key when it was added; the entries made before it were re-keyed: core.shipped.migrate.)
KEY_IF_SET = ("redraw_plateau", "compute", "start", "stop", "score_bos", "vectors", "extra_steps")
# FitConfig.stop: "" each text stops when it reaches the threshold; "batch": the seed paper's code, a batch of texts
# is stepped together until the best-so-far accuracy of every text in it reaches the threshold (a text that got
# there keeps being optimised; its best vectors by accuracy, ties by correct prefix, are kept).
STOPS = ("", "batch")
# FitConfig.vectors: "" the vectors are float32; "model": held in the model's dtype (bf16 on a GPU), as the seed
# paper's code holds them.
VECTORS = ("", "model")
# compute="bfloat16": the steps run with the weights in bf16 (vectors, loss and optimiser in float32); a text counts
# as converged only when its vectors also reach the threshold in the model's own forward pass (the one its cache
# identity names). Vectors that fall short there are polished in that pass, for up to POLISH_STEPS more steps.
COMPUTES = ("", "bfloat16")
POLISH_STEPS = 100
# The bf16 steps run with eager attention (the math path): on this CPU 1.3-1.7x a float32 step, where bf16 sdpa
# gained 1.3-1.5x (bench/results/limits.json).
COMPUTE_MODEL = (torch.bfloat16, "eager")
# The cache key is a promise to every entry already fitted, the shipped pre-fit included. These are the fields
# of FitConfig.key_dict() under core.engine.cache.ENTRY_SCHEMA; a FitConfig field that is in none of KEY_FIELDS,
# KEY_IF_SET and DISPLAY_FIELDS stops the import (below the class), so a new field cannot move the keys
# unnoticed: give it a default that leaves old keys alone (KEY_IF_SET), or bump ENTRY_SCHEMA and migrate.
KEY_FIELDS = frozenset({"layout", "lr", "betas", "weight_decay", "max_steps", "threshold", "init", "init_scale",
                        "schedule", "seed", "shared_m", "restarts", "redraw_after", "regularizer"})
DISPLAY_FIELDS = frozenset({"preset", "snapshot_every"})  # never in the key
MAX_SNAPSHOTS = 200


class FitError(RuntimeError):
    """A fit could not run (bad settings, ...)."""


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a fit. Fields that change the result enter the cache key (:meth:`key_dict`)."""

    preset: str = "first-paper"
    layout: str = "e+m*N"
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.9)
    weight_decay: float = 0.01
    max_steps: int = 5000
    threshold: float = 0.99
    # "normal": N(0, 1) as in the paper; "embedding": N(0, std of the embedding matrix); "token": like a random
    # token embedding, N(mean, std) of the embedding matrix per dimension
    init: str = "normal"
    init_scale: float = 1.0  # multiplies the init std
    schedule: str = "constant"  # "constant" or "cosine" (lr decays to 10% over max_steps)
    seed: int = 0
    shared_m: bool = False
    restarts: int = 1  # independent inits per text, side by side as slots allow; the first to converge wins
    # > 0: a draw still at a uniform guess's loss after this many steps starts over from a new init (texts fitted
    # alone only: coupled texts, with a shared m or a regulariser, keep their draw)
    redraw_after: int = 0
    # > 0: a draw whose loss is still above REDRAW_PLATEAU_SHARE of a uniform guess's after this many steps starts
    # over too (same texts as redraw_after)
    redraw_plateau: int = 0
    regularizer: RegularizerConfig | None = None
    # "": steps in the model's own dtype; "bfloat16": steps with bf16 weights, checked (and polished) in the model's
    # own dtype (COMPUTES, POLISH_STEPS)
    compute: str = ""
    # "": a random draw; "nearest": the vectors of the nearest cached text by teacher embedding, where one is near
    # enough; "mean": the mean of the cached solutions (core.engine.start, which fit_and_cache asks)
    start: str = ""
    stop: str = ""  # STOPS
    # e's own output scored against the tokenizer's BOS token (layout e+m*N; where the tokenizer has one): the loss and
    # the accuracy the fit stops on run over N + 1 positions, as in the seed paper's code
    score_bos: bool = False
    vectors: str = ""  # VECTORS
    # > 0: a text that reached the threshold keeps optimising for this many more steps (the fit's margin; texts fitted
    # alone, stop ""): its best vectors by accuracy, then loss, are kept
    extra_steps: int = 0
    snapshot_every: int = 10  # how often reconstructions are recorded for replay; does not change the result

    def __post_init__(self):
        check_layout(self.layout)
        if self.init not in INITS:
            raise FitError(f"Unknown init {self.init!r}; use one of {', '.join(INITS)}.")
        if self.compute not in COMPUTES:
            raise FitError(f"Unknown compute {self.compute!r}; use bfloat16, or leave it empty for the model's own.")
        if self.schedule not in ("constant", "cosine"):
            raise FitError(f"Unknown schedule {self.schedule!r}; use constant or cosine.")
        for name in ("lr", "weight_decay", "threshold", "init_scale"):
            if not math.isfinite(float(getattr(self, name))):
                raise FitError(f"{name} must be a finite number, not {getattr(self, name)}.")
        if len(self.betas) != 2 or not all(math.isfinite(float(b)) and 0 <= b < 1 for b in self.betas):
            raise FitError(f"betas must be two numbers in [0, 1), not {self.betas}.")
        if not (self.max_steps >= 1 and self.lr > 0 and 0 < self.threshold <= 1 and self.restarts >= 1
                and self.redraw_after >= 0 and self.redraw_plateau >= 0):
            raise FitError("max_steps must be >= 1, lr > 0, restarts >= 1, redraw_after and redraw_plateau >= 0 "
                           "and threshold in (0, 1].")
        if self.restarts > 1 and (self.shared_m or self.has_regularizer):
            raise FitError("Restarts need independently fitted texts: not with a shared m or a regulariser.")
        if self.compute and (self.shared_m or self.has_regularizer):
            raise FitError(f"compute={self.compute} fits texts alone: not with a shared m or a regulariser.")
        if self.start not in START_KINDS:
            raise FitError(f"Unknown start {self.start!r}; use nearest or mean, or leave it empty for a random draw.")
        if self.start and (self.shared_m or self.has_regularizer):
            raise FitError(f"start={self.start} fits texts alone: not with a shared m or a regulariser.")
        if self.preset in PRESET_ALIASES:
            object.__setattr__(self, "preset", PRESET_ALIASES[self.preset])
        if self.stop not in STOPS:
            raise FitError(f"Unknown stop {self.stop!r}; use batch, or leave it empty (each text at its threshold).")
        if self.vectors not in VECTORS:
            raise FitError(f"Unknown vectors {self.vectors!r}; use model, or leave it empty (float32).")
        if self.score_bos and self.layout != "e+m*N":
            raise FitError(f"score_bos scores e's own output, which layout {self.layout} already scores: use e+m*N.")
        if self.extra_steps < 0 or (self.extra_steps and (self.stop or self.shared_m or self.has_regularizer)):
            raise FitError("extra_steps must be >= 0, and is for texts fitted alone that stop at their own threshold.")
        if self.stop and (self.shared_m or self.has_regularizer or self.restarts > 1 or self.compute or self.start):
            raise FitError("stop=batch is the seed paper's plain loop: no shared m, regulariser, restarts, bf16 "
                           "compute or learned start.")

    @property
    def has_regularizer(self) -> bool:
        return self.regularizer is not None and self.regularizer.active

    def key_dict(self) -> dict:
        """Settings that change the fitted vectors (everything but display options)."""
        d = asdict(self)
        for name in DISPLAY_FIELDS:  # a preset is only a name for a set of values, all of which are here
            d.pop(name)
        for name in KEY_IF_SET:
            if not d[name]:
                d.pop(name)
        d["betas"] = list(self.betas)
        d["regularizer"] = self.regularizer.as_dict() if self.has_regularizer else None
        return d

    def as_dict(self) -> dict:
        d = self.key_dict()
        d["preset"] = self.preset
        return d


def check_key_fields(config_class: type = FitConfig) -> None:
    """Raise ImportError naming the fields of ``config_class`` that nobody decided about (see KEY_FIELDS)."""
    undeclared = {f.name for f in fields(config_class)} - KEY_FIELDS - DISPLAY_FIELDS - set(KEY_IF_SET)
    if undeclared:
        raise ImportError(f"FitConfig fields {sorted(undeclared)} are not declared in KEY_FIELDS, KEY_IF_SET or "
                          "DISPLAY_FIELDS: decide whether they change the cache key (see core.engine.fit.KEY_FIELDS).")


check_key_fields()


def config_from_dict(d: Mapping) -> FitConfig:
    """The FitConfig of FitConfig.as_dict() (unknown keys ignored; a stored regulariser is not rebuilt)."""
    names = {f.name for f in fields(FitConfig)}
    values = {k: v for k, v in d.items() if k in names and k != "regularizer"}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    if d.get("regularizer"):
        values["regularizer"] = RegularizerConfig(**d["regularizer"])
    return FitConfig(**values)


def preset(name: str = "first-paper", **overrides) -> FitConfig:
    """The named preset with any field overridden.

    ``first-paper`` (formerly ``paper``): docs/science.md, A.recipe, verbatim. ``seed-paper``: the loop of the seed
    paper's own code (docs/science.md, B.code): N(0, 1) init, AdamW 0.01 / (0.9, 0.9) / 0.01, up to 2000 steps, a
    batch stopping when the best-so-far accuracy of every text in it reaches 0.9 (FitConfig.stop), e's own output
    scored against BOS where the tokenizer has one (score_bos), the vectors in the model's dtype. ``fast``: each vector starts like a random token embedding (per
    dimension, the mean and std of the model's embedding matrix) instead of N(0, 1); a 5x larger learning
    rate decayed by a cosine schedule, faster-adapting second moments, no weight decay; and a draw whose
    loss is still near a uniform guess's after 20 steps starts over from a new init. About a third of all
    draws get stuck there (the output collapses to one token; accuracy about 1/N for hundreds of steps),
    and 20 steps tell them apart: the draws that converge are well below by then. On 4 texts of 10-21
    tokens x 3 seeds, one draw each, 250 steps: 11/12 converged (median 107 steps) against 7/12 for the
    same recipe with an N(0, embedding std) init and no redraw. A draw still above 0.7 of that loss after
    100 steps starts over too: on the shipped pre-fit (texts of 3-36 tokens, made without this rule) all
    56 draws that converged after step 100 were at or below 0.60 of it at step 100, and 13 of the 14 that
    stalled for 600 steps at 0.77 or above (accuracy about 0.05). bench/fit_speed.py measures the preset
    against the paper loop. Its first draw is the mean of the cached solutions (FitConfig.start = "mean",
    core.engine.start; a draw where the cache holds none; redraws are random): on new texts of 20-28 tokens it
    reached 0.99 in less than half the median wall time of a random draw (2.2x, bench/start.py), where the
    nearest cached text's vectors were no better on paraphrases and typo variants (1.7x per text, one 0.6x).
    """
    name = PRESET_ALIASES.get(name, name)
    if name == "first-paper":
        base = FitConfig()
    elif name == "seed-paper":
        base = FitConfig(preset="seed-paper", max_steps=2000, threshold=0.9, stop="batch", score_bos=True,
                         vectors="model")
    elif name == "fast":
        base = FitConfig(preset="fast", init="token", lr=0.05, betas=(0.9, 0.95), weight_decay=0.0,
                         schedule="cosine", max_steps=2000, redraw_after=20, redraw_plateau=100, start="mean")
    else:
        raise FitError(f"Unknown preset {name!r}; use one of {', '.join(PRESETS)}.")
    return replace(base, **overrides) if overrides else base


@dataclass
class FitProgress:
    """What a callback sees every few steps; lists are per text, in input order."""

    step: int
    max_steps: int
    loss: list[float]
    accuracy: list[float]
    best_accuracy: list[float]
    predictions: list[list[int]]  # current argmax tokens, [n_tokens] per text
    done: list[bool]
    elapsed: float


@dataclass
class FitResult:
    """The fitted vectors of one text and how they were reached."""

    text: str
    token_ids: list[int]
    e: torch.Tensor  # [hidden] float32, CPU
    m: torch.Tensor  # [hidden] float32, CPU
    accuracy: float  # best token accuracy reached (of the returned vectors)
    loss: float  # loss of the returned vectors
    steps: int  # optimisation steps taken for this text
    converged: bool  # accuracy >= threshold
    status: str  # "converged", "max_steps", "cancelled", "diverged" (or "superseded": a restart not needed)
    message: str = ""
    wall_time: float = 0.0
    redraws: int = 0  # times the vectors started over from a new init (FitConfig.redraw_after)
    history: dict = field(default_factory=lambda: {"step": [], "loss": [], "accuracy": []})
    snapshots: list = field(default_factory=list)  # [{"step": int, "tokens": [int]}]
    # fit_texts(record_every=k): (step, e, m) every k steps, float32 [hidden] each, not stored in the cache
    trajectory: list = field(default_factory=list)


def text_seed(seed: int, token_ids: Sequence[int]) -> int:
    """Per-text init seed: the same text gets the same init whether it is fitted alone or in a batch."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, token_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _init_distribution(lm: LoadedModel, config: FitConfig) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(mean, std) the initial vectors are drawn from: numbers, or per-dimension [hidden] tensors."""
    if config.init == "token":
        weight = lm.model.get_input_embeddings().weight.detach().float().cpu()
        return weight.mean(0), weight.std(0) * config.init_scale
    return 0.0, (lm.embedding_std if config.init == "embedding" else 1.0) * config.init_scale


def _init_vector(hidden: int, distribution: tuple, seed: int) -> torch.Tensor:
    mean, std = distribution
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, generator=g, dtype=torch.float32) * std + mean


def _thin(snapshots: list) -> list:
    """Halve the replay snapshots once too many pile up, always keeping the latest."""
    return snapshots[::2] + ([snapshots[-1]] if len(snapshots) % 2 == 0 else [])


# ---- the fitting loop --------------------------------------------------------------------------------
# _fit_items fits one row per item (a text, or one restart of a text). Each item's fit state is a _Row: its target,
# its vectors and optimiser group, the best vectors so far, its steps, redraws, history, snapshots and status.
# A _FitRun holds what the rows share (model, config, optimiser, the rows waiting for a slot, the active rows of
# the batch) and runs the loop, one iteration per step:
#   fill_slots  finished rows leave the batch; waiting rows take the free slots (shortest first: _admission_order);
#   forward     one padded forward pass of the active rows: each row's loss (plus the regulariser);
#   decide      each row is measured (_Row.record), then decide_row (a text fitted alone) or decide_group (coupled
#               texts, kept and stopped together) finishes it (converged, which supersedes the other restarts of
#               its text; step cap; diverged) or marks its draw stuck; a finished row keeps its best vectors and
#               leaves the batch at the next fill_slots;
#   announce, report  on_done for every newly finished row; the progress callback every callback_every steps;
#   update      backward and one AdamW step for the rows still fitting; a stuck draw starts over (redraw).
# result builds a row's FitResult.


@dataclass(eq=False)  # rows are compared by identity ("row in redrawn"), never by their tensors
class _Row:
    """The fit state of one item (a text, or one restart of a text): a row of the batch while it is active."""

    index: int  # position among the items: in the per-item lists of FitProgress and in on_done
    text: str
    target: list[int]
    device_target: torch.Tensor
    seed: int  # init seed; a redraw's seed derives from it
    owner: int | None  # the text this item is a restart of (None without restarts)
    e: torch.nn.Parameter
    m: torch.nn.Parameter  # with a shared m, the same Parameter in every row
    best_e: torch.Tensor
    best_m: torch.Tensor
    group: dict | None = None  # this row's optimiser param group (None with a shared m: one group for all e)
    best_acc: float = -1.0
    best_loss: float = math.inf
    last_loss: float = math.nan
    last_acc: float = 0.0
    last_pred: list[int] = field(default_factory=list)
    steps: int = 0  # updates applied to this row's vectors
    redraws: int = 0  # times the vectors started over from a new init (FitConfig.redraw_after)
    drawn_at: int = 0  # steps when the current draw started
    status: str = "max_steps"
    message: str = ""
    done: bool = False
    announced: bool = False  # handed to on_done
    polishing: bool = False  # steps in the model's own dtype after its bf16 fit fell short there (FitConfig.compute)
    step_cap: int = 0  # max_steps, or more while polishing
    best_prefix: int = -1  # correct prefix of the best vectors (FitConfig.stop "batch": ties by it)
    margin_until: int = 0  # FitConfig.extra_steps: the step at which a text that reached the threshold stops
    started: float = 0.0  # perf_counter when the row took a slot (0: never did)
    wall: float = 0.0
    history: dict = field(default_factory=lambda: {"step": [], "loss": [], "accuracy": []})
    snapshots: list = field(default_factory=list)
    trajectory: list = field(default_factory=list)  # (step, e, m) every record_every steps (fit_texts)

    def record(self, loss: float, acc: float, pred: list[int], snapshot_every: int) -> None:
        """Note the measurement of this step (history, and a replay snapshot every snapshot_every steps)."""
        self.last_loss, self.last_acc, self.last_pred = loss, acc, pred
        self.history["step"].append(self.steps)
        self.history["loss"].append(loss)
        self.history["accuracy"].append(acc)
        if self.steps % snapshot_every == 0:
            self.snapshots.append({"step": self.steps, "tokens": pred})
            if len(self.snapshots) > MAX_SNAPSHOTS:
                self.snapshots = _thin(self.snapshots)

    def keep(self, acc: float, loss: float) -> None:
        """Make the current vectors the best ones."""
        self.best_acc, self.best_loss = acc, loss
        self.best_e, self.best_m = self.e.detach().clone(), self.m.detach().clone()


def _init_row(lm: LoadedModel, index: int, text: str, target: list[int], seed: int, owner: int | None,
              distribution: tuple, shared_m: torch.nn.Parameter | None = None,
              start: tuple[torch.Tensor, torch.Tensor] | None = None, *, bos: int | None = None,
              dtype: torch.dtype = torch.float32) -> _Row:
    """A row's initial state: e (and m, unless it is shared) drawn from the init distribution with its seed, or the
    given start (e, m) (a learned start: core.engine.start). A redraw draws from the distribution either way.
    bos: scored first, against e's own output (FitConfig.score_bos). dtype: the vectors' (FitConfig.vectors)."""
    if start is not None:
        e = torch.nn.Parameter(start[0].detach().to("cpu", dtype).clone())
        m = torch.nn.Parameter(start[1].detach().to("cpu", dtype).clone())
    else:
        e = torch.nn.Parameter(_init_vector(lm.hidden_size, distribution, seed).to(dtype))
        m = (shared_m if shared_m is not None
             else torch.nn.Parameter(_init_vector(lm.hidden_size, distribution, seed + 1).to(dtype)))
    scored = ([bos] if bos is not None else []) + list(target)
    return _Row(index=index, text=text, target=target, device_target=torch.tensor(scored, device=lm.device),
                seed=seed, owner=owner, e=e, m=m, best_e=e.detach().clone(), best_m=m.detach().clone())


def _new_optimizer(config: FitConfig, rows: Sequence[_Row], shared_m: torch.nn.Parameter | None) -> torch.optim.AdamW:
    """AdamW over every row's vectors: one param group per row (its own lr schedule), or [all e, the shared m]."""
    if shared_m is not None:
        groups = [{"params": [row.e for row in rows]}, {"params": [shared_m]}]
    else:
        groups = [{"params": [row.e, row.m]} for row in rows]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if shared_m is None:
        for row, group in zip(rows, optimizer.param_groups):
            row.group = group
    return optimizer


def _lr_factor(config: FitConfig, step: int) -> float:
    if config.schedule == "cosine":
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.max_steps))
    return 1.0


def _admission_order(rows: list[_Row]) -> list[_Row]:
    """The order in which waiting rows take free slots in continuous batching: restart-major (every text's first
    draw before any second one), and shortest text first within a draw.

    A pass is padded to its longest row, and on a CPU its time grows with the padded tokens (about 0.07 s a pass
    plus 2.7 ms a row-token for the embedded model here), so rows of similar length share passes: in corpus order
    a long text pads every short one beside it. bench/corpus.py measures it."""
    seen: dict[int, int] = {}
    rank = []
    for row in rows:
        key = row.owner if row.owner is not None else -1 - row.index
        rank.append(seen.get(key, 0))
        seen[key] = rank[-1] + 1
    order = sorted(range(len(rows)), key=lambda k: (rank[k], len(rows[k].target)))  # stable: ties keep item order
    return [rows[k] for k in order]


def _accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Token accuracy of a row's argmax predictions, as the fit loop stops on it."""
    return float((pred == target).float().mean())


def _prefix(pred: torch.Tensor, target: torch.Tensor) -> int:
    """The length of the leading run of correct predictions."""
    wrong = (pred != target).nonzero()
    return int(wrong[0, 0]) if wrong.numel() else int(target.numel())


class _FitRun:
    """The rows of one _fit_items call, what they share, and the steps of its loop (see the comment above _Row)."""

    def __init__(self, lm: LoadedModel, config: FitConfig, rows: list[_Row], optimizer: torch.optim.AdamW, *,
                 distribution: tuple, slots: int, teacher_embeddings: torch.Tensor | None, on_done: Callable[[int, FitResult], None] | None,
                 callback: Callable[[FitProgress], None] | None, callback_every: int, batching: str = "continuous",
                 record_every: int = 0):
        self.lm, self.config, self.rows, self.optimizer, self.slots = lm, config, rows, optimizer, slots
        self.record_every = record_every
        # the model the steps run in (FitConfig.compute); self.lm is the one results are measured in
        self.step_lm = lm.in_dtype(*COMPUTE_MODEL) if config.compute == "bfloat16" else lm
        self.batching = batching
        self.distribution = distribution  # redraws draw from it too
        self.teacher_embeddings, self.on_done = teacher_embeddings, on_done
        self.callback, self.callback_every = callback, callback_every
        self.group_mode = config.shared_m or config.has_regularizer
        self.with_e = config.score_bos and bos_target(lm, config.layout) is not None  # rows score e's output first
        self.stuck_loss = REDRAW_LOSS_SHARE * math.log(lm.model.config.vocab_size)
        self.plateau_loss = REDRAW_PLATEAU_SHARE * math.log(lm.model.config.vocab_size)
        self.group_best = (-1.0, math.inf)  # coupled texts: best mean accuracy, and the total loss there
        self.waiting = list(rows) if batching == "fixed" else _admission_order(rows)
        self.active: list[_Row] = []
        self.t0 = time.perf_counter()
        self.iteration = 0

    def run(self, cancel: threading.Event | None) -> list[FitResult]:
        """Step until every row is finished (or cancelled); every row's FitResult, in item order."""
        while True:
            if cancel is not None and cancel.is_set():
                for row in self.rows:
                    if not row.done:
                        self.finish(row, "cancelled", f"Stopped by the user after {row.steps} steps.")
                break
            active = self.fill_slots()
            if not active:
                break
            self.iterate(active)
        results = [self.result(row) for row in self.rows]
        self.announce()
        self.report()
        return results

    def fill_slots(self) -> list[_Row]:
        """Drop the finished rows from the batch and give the free slots to the next waiting rows.

        With fixed batches (the baseline bench/corpus.py measures: a plain batched loop, as the authors' code
        runs it) a batch keeps every row, finished ones included, in its forward pass until all are finished;
        only then do the next rows take it."""
        if self.batching == "fixed" and any(not row.done for row in self.active):
            return self.active
        self.active = [row for row in self.active if not row.done]
        while self.waiting and len(self.active) < self.slots:
            row = self.waiting.pop(0)
            if row.done:  # a restart whose text converged before it got a slot
                continue
            row.started = time.perf_counter()
            self.active.append(row)
        return self.active

    def iterate(self, active: list[_Row]) -> None:
        """One step of the active rows: forward, decide, hand over and report, then the update."""
        self.iteration += 1
        row_logits, row_losses, loss = self.forward(active)
        with torch.no_grad():
            redrawn = self.decide(active, row_logits, row_losses)
        self.announce()
        every = self.callback_every
        if self.iteration % every == 1 or every == 1 or all(row.done for row in self.rows):
            self.report()
        self.update(active, loss, redrawn)

    def passes(self, active: list[_Row]) -> list[tuple[LoadedModel, list[int]]]:
        """The forward passes of a step: (model, the active rows' positions) - one, or with FitConfig.compute the
        rows still fitting in bf16 and the rows polishing in the model's own dtype."""
        if self.step_lm is self.lm:
            return [(self.lm, list(range(len(active))))]
        reduced = [k for k, row in enumerate(active) if not row.polishing]
        full = [k for k, row in enumerate(active) if row.polishing]
        return [(lm, members) for lm, members in ((self.step_lm, reduced), (self.lm, full)) if members]

    def forward(self, active: list[_Row]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The padded forward passes (passes()): each row's logits [N_i, V] and loss, and the loss to minimise."""
        lm, config = self.lm, self.config
        row_logits: list[torch.Tensor] = [torch.empty(0)] * len(active)
        for step_lm, members in self.passes(active):
            rows = [active[k] for k in members]
            e_batch = torch.stack([row.e for row in rows]).to(lm.device)
            m_batch = torch.stack([row.m for row in rows]).to(lm.device)
            logits = scored_logits(step_lm, e_batch, m_batch, [len(row.target) for row in rows], config.layout,
                                   self.with_e)
            for j, k in enumerate(members):
                row_logits[k] = logits[j, : len(active[k].device_target)]
        row_losses = [F.cross_entropy(row_logits[k], row.device_target) for k, row in enumerate(active)]
        # Sum, not mean: each text's gradient is what it would be if fitted alone.
        loss = torch.stack(row_losses).sum()
        if config.has_regularizer:
            e_batch = torch.stack([row.e for row in active]).to(lm.device)
            m_batch = torch.stack([row.m for row in active]).to(lm.device)
            vectors = e_batch if config.regularizer.target == "e" else m_batch
            teacher = self.teacher_embeddings[[row.index for row in active]]
            loss = loss + regularizer_loss(config.regularizer, vectors, teacher) * len(active)
        return row_logits, row_losses, loss

    def decide(self, active: list[_Row], row_logits: list[torch.Tensor], row_losses: list[torch.Tensor]) -> list[_Row]:
        """Measure every active row and decide its fate; returns the rows whose draw starts over after this step."""
        diverged = False
        redrawn = []  # rows that start over: this step's gradient belongs to their old vectors
        for k, row in enumerate(active):
            if row.done:  # a finished row in a fixed batch: computed, no longer measured
                continue
            pred = row_logits[k].argmax(-1)
            acc = _accuracy(pred, row.device_target)
            loss = float(row_losses[k])
            row.record(loss, acc, pred.tolist(), self.config.snapshot_every)
            if self.record_every and row.steps % self.record_every == 0:
                row.trajectory.append((row.steps, row.e.detach().float().cpu().clone(),
                                       row.m.detach().float().cpu().clone()))
            if not math.isfinite(loss):
                self.finish(row, "diverged",
                            f"The loss became {loss} at step {row.steps}; kept the best vectors before it.")
                diverged = True
            elif self.config.stop == "batch":
                self.decide_batch_row(row, acc, loss, pred)
            elif not self.group_mode and self.decide_row(row, acc, loss):
                redrawn.append(row)
        if self.group_mode and not diverged:
            self.decide_group(active)
        if self.config.stop == "batch":
            fitting = [row for row in active if not row.done]
            if fitting and all(row.best_acc >= self.config.threshold for row in fitting):
                for row in fitting:
                    self.finish(row, "converged")
        return redrawn

    def decide_batch_row(self, row: _Row, acc: float, loss: float, pred: torch.Tensor) -> None:
        """The seed paper's loop (FitConfig.stop "batch"): keep the best vectors by accuracy, ties by correct prefix;
        a row only finishes alone at the step cap (decide() stops the batch when every row's best reached the
        threshold)."""
        prefix = _prefix(pred, row.device_target)
        if acc > row.best_acc or (acc == row.best_acc and prefix > row.best_prefix):
            row.keep(acc, loss)
            row.best_prefix = prefix
        if row.steps >= self.config.max_steps:
            self.finish(row, "max_steps", f"Reached max steps ({self.config.max_steps}) at accuracy {row.best_acc:.3f}.")

    def decide_row(self, row: _Row, acc: float, loss: float) -> bool:
        """A text fitted alone: keep its best vectors, finish it (converged, step cap); True when its draw is stuck."""
        config = self.config
        if acc > row.best_acc or (acc == row.best_acc and loss < row.best_loss):
            row.keep(acc, loss)
        cap = row.step_cap or config.max_steps
        if acc >= config.threshold and config.extra_steps and not row.margin_until and self.holds(row):
            row.margin_until = row.steps + config.extra_steps  # reached: keep optimising for the margin
            row.step_cap = max(cap, row.margin_until)
        if row.margin_until:
            if row.steps >= row.margin_until:
                self.finish(row, "converged", f"Reached the threshold at step {row.margin_until - config.extra_steps}, "
                                              f"then {config.extra_steps} more steps.")
                return False
        elif acc >= config.threshold and self.holds(row):
            self.finish(row, "converged")
        elif row.steps >= cap:
            self.finish(row, "max_steps", f"Reached max steps ({cap}) at accuracy {row.best_acc:.3f}.")
        else:
            return self.stuck(row.steps - row.drawn_at, loss)
        return False

    def measure(self, row: _Row, e: torch.Tensor, m: torch.Tensor) -> tuple[float, float]:
        """Accuracy and loss of (e, m) for the row's text in the model's own forward pass."""
        with torch.no_grad():
            logits = scored_logits(self.lm, e[None].to(self.lm.device), m[None].to(self.lm.device),
                                   [len(row.target)], self.config.layout, self.with_e)[0]
            return _accuracy(logits.argmax(-1), row.device_target), float(F.cross_entropy(logits, row.device_target))

    def holds(self, row: _Row) -> bool:
        """Whether a row that reached the threshold reaches it in the model's own forward pass too (always, unless
        its steps ran in bf16: FitConfig.compute). One that falls short polishes there from now on."""
        if self.step_lm is self.lm or row.polishing:
            return True
        acc, loss = self.measure(row, row.e.detach(), row.m.detach())
        row.keep(acc, loss)  # best so far, now as the model's own pass measures it
        if acc >= self.config.threshold:
            return True
        row.polishing = True
        row.step_cap = max(self.config.max_steps, row.steps + POLISH_STEPS)
        return False

    def decide_group(self, active: list[_Row]) -> None:
        """Coupled texts are kept and stopped together: the best state is the one with the best mean accuracy,
        so every text returns the same m (and the batch relation the regulariser saw)."""
        config = self.config
        mean_acc = sum(row.last_acc for row in active) / len(active)
        total_loss = sum(row.last_loss for row in active)
        if mean_acc > self.group_best[0] or (mean_acc == self.group_best[0] and total_loss < self.group_best[1]):
            self.group_best = (mean_acc, total_loss)
            for row in active:
                row.keep(row.last_acc, row.last_loss)
        if all(row.last_acc >= config.threshold for row in active):
            for row in active:
                self.finish(row, "converged")
        elif max(row.steps for row in active) >= config.max_steps:
            for row in active:
                self.finish(row, "max_steps", f"Reached max steps ({config.max_steps}) at accuracy {row.best_acc:.3f}.")

    def stuck(self, age: int, loss: float) -> bool:
        """Whether a draw this many steps old at this loss should start over (redraw_after, redraw_plateau)."""
        config = self.config
        return ((0 < config.redraw_after <= age and loss >= self.stuck_loss)
                or (0 < config.redraw_plateau <= age and loss >= self.plateau_loss))

    def finish(self, row: _Row, how: str, message: str = "") -> None:
        """End a row (it leaves the batch at the next fill_slots); a converged restart supersedes its siblings.

        A row whose best vectors were measured in bf16 (FitConfig.compute) is measured again in the model's own
        pass, so its result says what the cache's identity promises."""
        if self.step_lm is not self.lm and not row.polishing and how != "converged" and row.best_acc >= 0:
            row.best_acc, row.best_loss = self.measure(row, row.best_e, row.best_m)
        row.status, row.done, row.message = how, True, message
        row.wall = time.perf_counter() - row.started if row.started else 0.0
        if how == "converged" and row.owner is not None:  # the other restarts of this text are not needed
            for other in self.rows:
                if other.owner == row.owner and not other.done:
                    self.finish(other, "superseded")

    def update(self, active: list[_Row], loss: torch.Tensor, redrawn: list[_Row]) -> None:
        """Backward and one optimiser step for the active rows still fitting; redraw the stuck ones."""
        updating = [row for row in active if not row.done]
        if not updating:
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for row in active:  # a finished row keeps its vectors: no gradient, so AdamW leaves it alone
            if row.done or row in redrawn:
                row.e.grad = None
                if not self.config.shared_m:
                    row.m.grad = None
        for row in redrawn:
            self.redraw(row)
        self.set_lr(updating)
        self.optimizer.step()
        for row in updating:
            row.steps += 1

    def set_lr(self, updating: list[_Row]) -> None:
        config = self.config
        if not config.shared_m:
            for row in updating:
                row.group["lr"] = config.lr * _lr_factor(config, row.steps - row.drawn_at)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(config, updating[0].steps)

    def redraw(self, row: _Row) -> None:
        """Start a row over from a new init: its loss says this draw is stuck (stuck(), preset())."""
        row.redraws += 1
        row.drawn_at = row.steps + 1  # this step is spent measuring the old draw
        seed = text_seed(row.seed, [row.redraws])  # the same text and redraw count always get the same init
        with torch.no_grad():
            row.e.copy_(_init_vector(self.lm.hidden_size, self.distribution, seed))
            row.m.copy_(_init_vector(self.lm.hidden_size, self.distribution, seed + 1))
        self.optimizer.state.pop(row.e, None)
        self.optimizer.state.pop(row.m, None)

    def announce(self) -> None:
        """Hand each finished row to on_done as soon as it finishes, so a caller can store it at once."""
        if self.on_done is None:
            return
        for row in self.rows:
            if row.done and not row.announced:
                row.announced = True
                self.on_done(row.index, self.result(row))

    def report(self) -> None:
        if self.callback is not None:
            rows = self.rows
            self.callback(FitProgress(
                step=max(row.steps for row in rows), max_steps=self.config.max_steps,
                loss=[row.last_loss for row in rows], accuracy=[row.last_acc for row in rows],
                best_accuracy=[max(row.best_acc, 0.0) for row in rows],
                predictions=[list(row.last_pred) for row in rows], done=[row.done for row in rows],
                elapsed=time.perf_counter() - self.t0,
            ))

    def result(self, row: _Row) -> FitResult:
        """The row's FitResult: its best vectors, with a last snapshot of where it ended."""
        snaps = row.snapshots
        if row.last_pred and (not snaps or snaps[-1]["step"] != row.steps):
            snaps.append({"step": row.steps, "tokens": row.last_pred})
        return FitResult(
            text=row.text, token_ids=row.target, e=row.best_e.detach().float().cpu(),
            m=row.best_m.detach().float().cpu(), accuracy=max(row.best_acc, 0.0), loss=row.best_loss,
            steps=row.steps, converged=row.best_acc >= self.config.threshold, status=row.status,
            message=row.message, wall_time=row.wall, history=row.history, snapshots=snaps, redraws=row.redraws,
            trajectory=row.trajectory,
        )


BATCHING = ("continuous", "fixed")


def _fit_items(
    lm: LoadedModel,
    texts: Sequence[str],
    config: FitConfig | None = None,
    *,
    token_ids: Sequence[Sequence[int]] | None = None,
    owners: Sequence[int] | None = None,
    batch_size: int | None = None,
    on_done: Callable[[int, FitResult], None] | None = None,
    callback: Callable[[FitProgress], None] | None = None,
    callback_every: int = 10,
    cancel: threading.Event | None = None,
    teacher_embeddings: torch.Tensor | None = None,
    init_seeds: Sequence[int] | None = None,
    batching: str = "continuous",
    starts: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    record_every: int = 0,
) -> list[FitResult]:
    """The loop behind :func:`fit_texts`: one row per item (a text, or one restart of a text).

    owners: the text each item belongs to; when an item converges, the other items of its text stop.
    starts: per item, the (e, m) it starts from instead of a draw (None: a draw).
    """
    config = config or FitConfig()
    if not texts:
        raise FitError("No texts to fit.")
    if batching not in BATCHING:
        raise FitError(f"Unknown batching {batching!r}; use one of {', '.join(BATCHING)}.")
    targets = [list(t) for t in token_ids] if token_ids is not None else [lm.validate_text(t, config.layout) for t in texts]
    if config.compute == "bfloat16" and (why := cost.bf16_slowdown(torch.device(lm.device).type)):
        raise FitError(f"Steps in bfloat16 are refused: {why}. Leave compute empty (the model's own dtype).")
    distribution = _init_distribution(lm, config)
    seeds = list(init_seeds) if init_seeds is not None else [text_seed(config.seed, t) for t in targets]
    group_mode = config.shared_m or config.has_regularizer
    slots = len(texts) if (group_mode or not batch_size) else max(1, batch_size)
    if config.stop == "batch":
        batching = "fixed"  # the seed paper's plain loop: a batch steps together until all of it is done

    dtype = lm.dtype if config.vectors == "model" else torch.float32
    shared_m = None
    if config.shared_m:
        shared_m = torch.nn.Parameter(_init_vector(lm.hidden_size, distribution,
                                                   text_seed(config.seed + 1, sum(targets, []))).to(dtype))
    if starts is not None and (len(starts) != len(texts) or (shared_m is not None and any(starts))):
        raise FitError("starts: one (e, m) or None per text, and none with a shared m.")
    bos = bos_target(lm, config.layout) if config.score_bos else None
    rows = [_init_row(lm, i, texts[i], targets[i], seeds[i], owners[i] if owners is not None else None, distribution,
                      shared_m, starts[i] if starts is not None else None, bos=bos, dtype=dtype)
            for i in range(len(texts))]
    optimizer = _new_optimizer(config, rows, shared_m)
    if config.has_regularizer:
        from core.engine import teacher as teacher_mod

        if teacher_embeddings is None:
            teacher_embeddings = teacher_mod.embed_texts(teacher_mod.load_teacher(config.regularizer.teacher), list(texts))
        teacher_embeddings = teacher_embeddings.float().to(lm.device)
    run = _FitRun(lm, config, rows, optimizer, distribution=distribution, slots=slots, teacher_embeddings=teacher_embeddings, on_done=on_done,
                  callback=callback, callback_every=callback_every, batching=batching, record_every=record_every)
    return run.run(cancel)


def fit_texts(
    lm: LoadedModel,
    texts: Sequence[str],
    config: FitConfig | None = None,
    *,
    token_ids: Sequence[Sequence[int]] | None = None,
    batch_size: int | None = None,
    callback: Callable[[FitProgress], None] | None = None,
    callback_every: int = 10,
    cancel: threading.Event | None = None,
    teacher_embeddings: torch.Tensor | None = None,
    init_seeds: Sequence[int] | None = None,
    on_done: Callable[[int, FitResult], None] | None = None,
    batching: str = "continuous",
    starts: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    record_every: int = 0,
) -> list[FitResult]:
    """Fit one (e, m) pair per text; texts share padded forward passes.

    texts: the texts (validated against the model's context). token_ids: their targets when already known.
    batch_size: how many rows share a forward pass (None: all). A text that finishes frees its slot for
    the next waiting one at once (continuous batching), so a slow text never holds the others back; waiting
    texts take slots shortest first, so texts of similar length share the padded passes.
    batching="fixed" is the plain batched loop instead (the baseline of bench/corpus.py): batch_size rows stay
    in every forward pass until all of them are finished, then the next batch_size rows start. Coupled texts (shared m, a regulariser) always fit all together and stop together.
    With ``config.restarts`` = R > 1 every text is fitted from R inits (R rows); the first restart to
    converge stops the others and its vectors are returned. The first inits of all texts take the slots
    first; the other restarts wait for slots that converged texts free (all side by side when the batch
    has room for every row), so they keep a batch full while its slow texts finish.
    teacher_embeddings: [n_texts, d_teacher] for a regulariser (computed with the config's teacher if None).
    init_seeds: per-text init seeds (default: derived from the config seed and the text's tokens).
    starts: per text, the (e, m) its first draw starts from instead of a random one (None: a random draw), e.g. a
    learned start (core.engine.start); further restarts and redraws are random draws.
    record_every: > 0 records each text's vectors (step, e, m) every this many steps in FitResult.trajectory (the
    Geometry page's trajectory); the cache never stores them.
    on_done(index, result): called as soon as a text is finished, before the others are.
    Returns one :class:`FitResult` per text, in input order. Cancel returns the best vectors so far.
    """
    config = config or FitConfig()
    restarts = config.restarts
    if restarts == 1 or not texts:
        return _fit_items(lm, texts, config, token_ids=token_ids, batch_size=batch_size, callback=callback,
                          callback_every=callback_every, cancel=cancel, teacher_embeddings=teacher_embeddings,
                          init_seeds=init_seeds, on_done=on_done, batching=batching, starts=starts,
                          record_every=record_every)
    targets = [list(t) for t in token_ids] if token_ids is not None else [lm.validate_text(t, config.layout) for t in texts]
    base_seeds = list(init_seeds) if init_seeds is not None else [text_seed(config.seed, t) for t in targets]
    # Restart-major order: every text's first draw comes before any second one, so with fewer slots than rows
    # the further restarts wait and take the slots of texts that have converged (a batch stays full while its
    # slow texts finish, instead of thinning out to one row).
    owners = [i for _ in range(restarts) for i in range(len(texts))]
    # Restart 0 is the single-run init, so restarts only ever add chances.
    seeds = [base_seeds[i] if r == 0 else text_seed(base_seeds[i] + r, targets[i]) for r in range(restarts)
             for i in range(len(texts))]

    def winner(values: Sequence, i: int, accuracy: Sequence[float], loss: Sequence[float]):
        rows = [j for j, o in enumerate(owners) if o == i]
        best = max(rows, key=lambda j: (accuracy[j], -(loss[j] if math.isfinite(loss[j]) else math.inf)))
        return values[best]

    def per_text(progress: FitProgress) -> None:
        n = len(texts)
        pick = [winner(range(len(owners)), i, progress.best_accuracy, progress.loss) for i in range(n)]
        callback(FitProgress(
            step=progress.step, max_steps=progress.max_steps, loss=[progress.loss[j] for j in pick],
            accuracy=[progress.accuracy[j] for j in pick], best_accuracy=[progress.best_accuracy[j] for j in pick],
            predictions=[progress.predictions[j] for j in pick],
            done=[all(progress.done[j] for j, o in enumerate(owners) if o == i) for i in range(n)],
            elapsed=progress.elapsed,
        ))

    def pick(results: Sequence[FitResult], i: int) -> FitResult:
        accuracy = [r.accuracy + (1.0 if r.converged else 0.0) if r else -1.0 for r in results]  # converged wins
        return winner(results, i, accuracy, [r.loss if r else math.inf for r in results])

    finished: list[FitResult | None] = [None] * len(owners)

    def item_done(j: int, result: FitResult) -> None:
        finished[j] = result
        i = owners[j]
        if on_done is not None and all(finished[k] is not None for k, o in enumerate(owners) if o == i):
            on_done(i, pick(finished, i))

    items = _fit_items(lm, [texts[o] for o in owners], config, token_ids=[targets[o] for o in owners], owners=owners,
                       batch_size=batch_size, callback=per_text if callback else None, callback_every=callback_every,
                       cancel=cancel, init_seeds=seeds, on_done=item_done, batching=batching, record_every=record_every,
                       starts=[starts[o] if r == 0 else None for r in range(restarts) for o in range(len(texts))]
                       if starts is not None else None)
    return [pick(items, i) for i in range(len(texts))]


# ---- fitting through the cache ---------------------------------------------------------------------

@dataclass
class CachedFit:
    """One text's outcome of :func:`fit_and_cache`."""

    entry: CacheEntry
    cached: bool  # True when it came from the cache without optimising
    # Why the entry is not in the cache although it was fitted (the write failed): it exists only here, for the
    # caller to offer as a download. None when it was stored (or came from the cache).
    unsaved: str | None = None


# The seed paper's code fits its texts in batches of 8 (FitConfig.stop "batch").
SEED_BATCH = 8


def coupling_group(config: FitConfig, targets: Sequence[Sequence[int]]) -> str | None:
    """Texts fitted with shared m or a batch regulariser, or stopped as a batch (FitConfig.stop), depend on each other:
    name their batch."""
    if not (config.shared_m or config.has_regularizer or config.stop == "batch"):
        return None
    return hashlib.sha256(repr([list(t) for t in targets]).encode()).hexdigest()[:16]


def batches(config: FitConfig, n: int) -> list[range]:
    """The batches n texts fitted together with ``config`` form: one, or with FitConfig.stop "batch" consecutive runs
    of SEED_BATCH (each its own coupling group: a text's vectors depend on the batch it waited for)."""
    size = SEED_BATCH if config.stop == "batch" else max(n, 1)
    return [range(i, min(i + size, n)) for i in range(0, n, size)] or [range(0)]


def entry_keys(lm: LoadedModel, targets: Sequence[Sequence[int]], config: FitConfig) -> tuple[list[str], str | None]:
    """Cache keys of texts (as token ids) fitted together with ``config``, and their coupling group (of the first
    batch, with FitConfig.stop "batch": batches())."""
    keys, groups = [], []
    for batch in batches(config, len(targets)):
        group = coupling_group(config, [targets[i] for i in batch])
        keys += [entry_key(lm.identity, targets[i], config.key_dict(), group) for i in batch]
        groups.append(group)
    return keys, groups[0]


def _cached(lm: LoadedModel, targets: Sequence[Sequence[int]], config: FitConfig, cache: ProtoCache
            ) -> tuple[list[str], str | None, list[CacheEntry | None]]:
    """The keys and coupling group of texts fitted together with ``config``, and their cached entries (None where
    missing). A learned start only changes where the search begins: a text fitted from a random draw with otherwise
    the same settings is that text's entry too (so the entries fitted before the fast preset had a start count)."""
    keys, group = entry_keys(lm, targets, config)
    entries = [cache.get(k, lm.hidden_size) for k in keys]
    if config.start and not all(entries):
        drawn = entry_keys(lm, targets, replace(config, start=""))[0]
        entries = [entry or cache.get(k, lm.hidden_size) for entry, k in zip(entries, drawn)]
    return keys, group, entries


def lookup(lm: LoadedModel, texts: Sequence[str], config: FitConfig, cache: ProtoCache) -> list[CacheEntry | None]:
    """The cached entries these texts would have if fitted together with ``config`` (None where missing)."""
    return _cached(lm, [lm.validate_text(t, config.layout) for t in texts], config, cache)[2]


def entry_from_result(lm: LoadedModel, result: FitResult, config: FitConfig, key: str, group: str | None,
                      start: Start | None = None) -> CacheEntry:
    """The cache entry of a fit's result; start: where its vectors started, when not from a draw (metrics["start"]).

    metrics["accuracy"] counts the N text positions whatever the fit stopped on (with FitConfig.score_bos the fit's
    own count, N + 1, is metrics["fit_accuracy"]); metrics["bos_correct"] says whether e's own output is the BOS token,
    for the seed paper's count (core.engine.reconstruct.counted; absent where there is no BOS position)."""
    accuracy, extra = result.accuracy, {}
    if bos_target(lm, config.layout) is not None:
        rebuilt = reconstruct(lm, result.e, result.m, list(result.token_ids), config.layout)
        extra["bos_correct"] = bool(rebuilt.bos_correct)
        if config.score_bos:
            accuracy, extra["fit_accuracy"] = rebuilt.metrics.accuracy, result.accuracy
    metrics = {
        "accuracy": accuracy, **extra, "loss": result.loss if math.isfinite(result.loss) else None,
        "steps": result.steps, "converged": result.converged, "status": result.status, "redraws": result.redraws,
        "message": result.message, "wall_time": result.wall_time, "n_tokens": len(result.token_ids),
        "norm_e": float(result.e.norm()), "norm_m": float(result.m.norm()),
        "h_lm": information_content(lm, list(result.token_ids)),  # nats (core.engine.reconstruct)
    }
    if start is not None:
        metrics["start"] = start.as_dict()
    return CacheEntry(
        key=key, model=lm.identity, model_name=lm.name, text=result.text, token_ids=list(result.token_ids),
        config=config.as_dict(), metrics=metrics, history=result.history, e=result.e, m=result.m,
        snapshots=result.snapshots, group=group, created=time.time(),
    )


def recorded_metrics(lm: LoadedModel, entry: CacheEntry) -> dict:
    """The metrics entry_from_result records that this entry lacks (it was fitted by an older version of the lab):
    "bos_correct" (where there is a BOS position) and "h_lm". Empty when it lacks none; one forward pass each."""
    added: dict = {}
    if "bos_correct" not in entry.metrics and bos_target(lm, entry.layout) is not None:
        rebuilt = reconstruct(lm, entry.e, entry.m, list(entry.token_ids), entry.layout)
        added["bos_correct"] = bool(rebuilt.bos_correct)
    if entry.metrics.get("h_lm") is None:
        added["h_lm"] = information_content(lm, list(entry.token_ids))
    return added


def complete_metrics(lm: LoadedModel, cache: ProtoCache) -> int:
    """Record in every entry of this model in the cache what recorded_metrics says it lacks (metrics are not part of
    an entry's key, so nothing is refitted or re-keyed); returns how many entries changed. The shipped pre-fit a
    cache reads is read-only: its entries are left as they are."""
    changed = 0
    for listing in cache.list(lm.identity):
        if listing.shipped:
            continue
        entry = cache.get(listing.key, lm.hidden_size)
        if entry is not None and (added := recorded_metrics(lm, entry)):
            cache.put(replace(entry, metrics={**entry.metrics, **added}))
            changed += 1
    return changed


def fit_and_cache(
    lm: LoadedModel,
    texts: Sequence[str],
    config: FitConfig,
    cache: ProtoCache,
    *,
    refit: bool = False,
    batch_size: int = 8,
    callback: Callable[[FitProgress, list[int]], None] | None = None,
    callback_every: int = 10,
    cancel: threading.Event | None = None,
    teacher_embeddings: torch.Tensor | None = None,
) -> list[CachedFit | None]:
    """Fit the texts that are not cached yet, store each result, return every text's entry in input order.

    Misses share forward passes, ``batch_size`` at a time (coupled texts all together). The callback
    receives the fit's progress and the input indices of its rows. A cancelled text is stored too (so
    nothing fitted is lost) but counts as a miss next time, so a later fit finishes it. Texts a cancel kept
    from starting are None.

    Raises CacheWriteError before the first step when the cache cannot be written. When a write fails later
    all the same, the fit goes on and the text's outcome carries the entry with ``unsaved`` saying why.
    """
    if config.stop == "batch" and len(texts) > SEED_BATCH:  # each batch of the seed paper's loop on its own
        outcomes: list[CachedFit | None] = []
        for batch in batches(config, len(texts)):
            offset = batch.start
            outcomes += fit_and_cache(
                lm, list(texts[batch.start:batch.stop]), config, cache, refit=refit, batch_size=batch_size,
                callback=(lambda p, rows, o=offset: callback(p, [o + r for r in rows])) if callback else None,
                callback_every=callback_every, cancel=cancel)
        return outcomes
    targets = [lm.validate_text(t, config.layout) for t in texts]
    if refit:
        keys, group = entry_keys(lm, targets, config)
        found: list[CacheEntry | None] = [None] * len(texts)
    else:
        keys, group, found = _cached(lm, targets, config, cache)
    outcomes: list[CachedFit | None] = [None] * len(texts)
    misses = []
    for i, entry in enumerate(found):
        if entry is not None and entry.metrics.get("status") != "cancelled":
            outcomes[i] = CachedFit(entry=entry, cached=True)
        else:
            misses.append(i)
    if group is not None and misses:
        misses = list(range(len(texts)))  # coupled texts are only meaningful fitted together
    starts: list[Start | None] = [None] * len(misses)
    if config.start and misses and not (cancel is not None and cancel.is_set()):
        starts = learned_starts(cache, lm.identity, lm.hidden_size, [texts[i] for i in misses], config.start,
                                config.layout)

    def store(row: int, result: FitResult) -> None:
        i = misses[row]
        if result.status == "cancelled" and not result.history["step"]:
            return  # never started: nothing to keep
        # a start that was redrawn from is still where the fit began (the history shows the redraw)
        entry = entry_from_result(lm, result, config, keys[i], group, starts[row])
        try:
            cache.put(entry)
        except CacheWriteError as exc:
            outcomes[i] = CachedFit(entry=entry, cached=False, unsaved=str(exc))
            return
        outcomes[i] = CachedFit(entry=entry, cached=False)

    if misses and not (cancel is not None and cancel.is_set()):
        cache.check_writable()  # before the first step, so a long fit never ends in a write that fails
        # Each text is stored the moment it finishes, so a stop or a crash keeps everything finished so far.
        fit_texts(
            lm, [texts[i] for i in misses], config, token_ids=[targets[i] for i in misses], batch_size=batch_size,
            callback=(lambda p: callback(p, misses)) if callback else None, callback_every=callback_every,
            cancel=cancel, teacher_embeddings=teacher_embeddings[misses] if teacher_embeddings is not None else None,
            on_done=store, starts=[(s.e, s.m) if s is not None else None for s in starts] if any(starts) else None,
        )
    return outcomes
