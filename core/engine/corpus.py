"""Fitting a corpus across processes: one worker per GPU (or per share of the CPU), each with its own copy of the
frozen model and its own shard of the texts.

The texts of a corpus are independent optimisation problems, so the workers never talk while they fit:
torchrun (``torchrun --nproc-per-node K -m core fit --file corpus.jsonl``, or under SLURM / a rendezvous across
nodes) starts them and sets RANK, WORLD_SIZE and LOCAL_RANK; torch.distributed only gathers their summaries at
the end. ``python -m core fit --file ...`` is the same job as one worker.

- A text's shard is a stable hash of its token ids, so a rerun makes the same shards and, with the cache,
  fits only what is missing: a worker that died loses only the texts it was fitting.
- Every finished text is written to the cache at once and atomically (core.engine.fit.fit_and_cache), so the
  workers can share one cache folder on a shared filesystem; each writes only its own texts' files.
- Within a worker, rows are batched continuously: a text that converges leaves its row and the next waiting
  text takes it at the next step (core.engine.fit._FitRun.fill_slots).
- At the end the main worker writes a manifest of the corpus (its texts and keys, core.engine.sets), so the
  dashboard can open the corpus as a set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from core.engine.models import LoadedModel


@dataclass(frozen=True)
class Worker:
    """Where this process stands among the corpus's workers (torchrun's environment; one worker without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def name(self) -> str:
        return f"worker {self.rank}/{self.world_size}"


def worker_from_env(environ: dict | None = None) -> Worker:
    """The Worker torchrun describes in RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (absent: one worker)."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        value = env.get(name, "")
        try:
            return int(value) if value != "" else default
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a whole number (set by torchrun)") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_world = number("LOCAL_WORLD_SIZE", world)
    local_rank = number("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ValueError(f"inconsistent worker environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}")
    return Worker(rank=rank, world_size=world, local_rank=local_rank, local_world_size=max(local_world, 1))


def shard_of(token_ids: Sequence[int], world_size: int) -> int:
    """The worker (rank) that fits a text: a stable hash of its token ids, the same in every process and rerun."""
    digest = hashlib.sha256(json.dumps([int(t) for t in token_ids]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % world_size


def worker_device(worker: Worker, requested: str | None = "auto") -> str:
    """This worker's device: cuda:LOCAL_RANK when CUDA is there (and "auto" or "cuda" was asked), else the CPU."""
    if requested in (None, "auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{worker.local_rank % torch.cuda.device_count()}"
    if requested == "cuda":
        raise ValueError("--device cuda asked, but this machine has no CUDA device")
    return "cpu" if requested in (None, "auto") else str(requested)


def worker_threads(worker: Worker, cpus: int | None = None) -> int:
    """torch threads of a CPU worker: its share of the machine's cores (the workers on one node split them)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // worker.local_world_size)


def start_group(worker: Worker) -> str | None:
    """Join the workers' process group when there are several: NCCL on CUDA, gloo otherwise (and when NCCL is
    missing). Returns the backend, or None for one worker."""
    import torch.distributed as dist

    if worker.world_size == 1:
        return None
    if not dist.is_initialized():
        nccl = torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group(backend="nccl" if nccl else "gloo")
    return dist.get_backend()


def end_group(finished: bool = False) -> None:
    """Leave the workers' group. finished: every worker got here normally, so they first wait for each other: a
    worker that tore its gloo connections down while rank 0 (which hosts the rendezvous store) was still writing
    the manifest was seen to abort (SIGABRT) now and then, failing a run whose work was all done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


@dataclass
class CorpusPlan:
    """The corpus after validation: unique texts (first occurrence kept), their token ids, and what was dropped."""

    texts: list[str]
    targets: list[list[int]]
    duplicates: int  # texts that tokenise like an earlier one: fitted once

    def shard(self, worker: Worker) -> list[int]:
        """Indices of the texts this worker fits."""
        return [i for i, t in enumerate(self.targets) if shard_of(t, worker.world_size) == worker.rank]


def plan_corpus(lm: LoadedModel, texts: Sequence[str], layout: str, where: Sequence[str] | None = None
                ) -> CorpusPlan:
    """Validate every text before any fitting (core.engine.sets.validate_set: a TextSetError names the first text
    the model cannot fit by where[i], e.g. "corpus.txt line 7") and drop duplicates."""
    from core.engine.sets import validate_set

    unique, targets, seen = [], [], set()
    for text, ids in zip(texts, validate_set(lm, texts, layout, where)):
        if tuple(ids) in seen:
            continue
        seen.add(tuple(ids))
        unique.append(text)
        targets.append(ids)
    return CorpusPlan(texts=unique, targets=targets, duplicates=len(texts) - len(unique))


@dataclass
class WorkerSummary:
    """What one worker did: its texts, how many it fitted now or found cached, converged, steps, time."""

    rank: int
    device: str
    texts: int
    fitted: int
    cached: int
    converged: int
    steps: int  # summed over the texts fitted now
    seconds: float

    @property
    def texts_per_minute(self) -> float:
        return 60.0 * self.fitted / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "texts_per_minute": round(self.texts_per_minute, 2)}


def summarize_outcomes(worker: Worker, device: str, outcomes: Sequence, seconds: float) -> WorkerSummary:
    """A worker's summary from fit_and_cache's outcomes (None: a text a stop kept from starting)."""
    done = [o for o in outcomes if o is not None]
    fitted = [o for o in done if not o.cached]
    return WorkerSummary(
        rank=worker.rank, device=device, texts=len(outcomes), fitted=len(fitted), cached=len(done) - len(fitted),
        converged=sum(bool(o.entry.metrics.get("converged")) for o in done),
        steps=sum(int(o.entry.metrics.get("steps", 0)) for o in fitted), seconds=round(seconds, 3))


def gather_summaries(worker: Worker, summary: WorkerSummary) -> list[WorkerSummary]:
    """Every worker's summary, in rank order, on every worker (one worker: its own)."""
    if worker.world_size == 1:
        return [summary]
    import torch.distributed as dist

    everyone: list = [None] * worker.world_size
    dist.all_gather_object(everyone, summary.as_dict())
    fields = set(WorkerSummary.__dataclass_fields__)
    return [WorkerSummary(**{k: v for k, v in s.items() if k in fields}) for s in everyone]


def total_line(summaries: Sequence[WorkerSummary], wall_seconds: float) -> dict:
    """The corpus's totals: texts, fitted, cached, converged, steps, and texts per minute over the wall time."""
    fitted = sum(s.fitted for s in summaries)
    return {
        "workers": len(summaries), "texts": sum(s.texts for s in summaries), "fitted": fitted,
        "cached": sum(s.cached for s in summaries), "converged": sum(s.converged for s in summaries),
        "steps": sum(s.steps for s in summaries), "seconds": round(wall_seconds, 3),
        "texts_per_minute": round(60.0 * fitted / wall_seconds, 2) if wall_seconds > 0 else 0.0,
    }


def write_corpus_manifest(root: str | os.PathLike, name: str, lm: LoadedModel, config, plan: CorpusPlan,
                          keys: Sequence[str], summaries: Sequence[WorkerSummary], wall_seconds: float,
                          batch_size: int):
    """List the corpus in the cache's manifest (core.engine.sets) as a set the dashboard can open."""
    from core.engine.sets import PrefitSet, write_manifest

    total = total_line(summaries, wall_seconds)
    record = PrefitSet(
        name=name, model=lm.identity, model_name=lm.name, config=config.as_dict(), texts=list(plan.texts),
        keys=list(keys), wall_time_s=round(wall_seconds, 1), n_timed=total["fitted"],
        n_fitted=total["fitted"] + total["cached"], n_converged=total["converged"], total_steps=total["steps"],
        batch_size=batch_size, updated=time.time())
    write_manifest(Path(root), record)
    return record
