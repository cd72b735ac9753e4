"""Benchmark: what the semantic regularisers cost (docs/science.md, B.4, the Regularisers page).

    .venv/bin/python bench/regularisers.py [--steps 4] [--repeats 8] [--threads N]

1. Step time: the same batch (the default sweep's texts) fitted for --steps steps with no regulariser, the
   anchor loss and the relational loss (lambda 0.1, on e), the three alternating within each repeat so that
   load from other processes hits all alike; the median and the minimum per step are reported (on a shared
   machine the load swings within a minute, and the minimum is the least disturbed measurement), and the
   CPU time of the process per step, which other processes hardly change. The threshold is 1.0 and the
   step count small, so no text stops early and every run does the same forward passes. The teacher
   embeddings are computed once beforehand (their cost is reported on its own): what is measured is the
   fitting step.
2. The default sweep: the per-setting wall times recorded in the shipped sweep's manifest (data/prefit), as
   measured by the pre-fit run (core.analyses.regularisers.prefit_default_sweep).

Writes bench/results/regularisers.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.fit import fit_texts  # noqa: E402
from core.engine.models import describe, load_model  # noqa: E402
from core.shipped.default_sweep import default_base_config, default_sweep_set, load_default_sweep_manifest  # noqa: E402
from core.engine.teacher import RegularizerConfig, embed_texts, load_teacher  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("none", "anchor", "relational")


def time_steps(lm, texts, kind: str, steps: int, teacher_emb: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per optimisation step of fit_texts with the regulariser."""
    from dataclasses import replace

    regularizer = RegularizerConfig(kind, 0.1) if kind != "none" else None
    config = replace(default_base_config(), max_steps=steps, threshold=1.0, regularizer=regularizer)
    start, start_cpu = time.perf_counter(), time.process_time()
    results = fit_texts(lm, texts, config, teacher_embeddings=teacher_emb if regularizer else None)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    # The loop measures once more after the last update (the final state is scored too): steps + 1 passes.
    passes = max(r.steps for r in results) + 1
    return seconds / passes, cpu / passes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default=str(RESULTS / "regularisers.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    frame = default_sweep_set()
    texts = frame["text"].tolist()
    n_tokens = [len(lm.encode(t)) for t in texts]
    start = time.perf_counter()
    teacher = load_teacher()
    teacher_load = time.perf_counter() - start
    start = time.perf_counter()
    teacher_emb = embed_texts(teacher, texts)
    teacher_embed = time.perf_counter() - start

    time_steps(lm, texts, "relational", 1, teacher_emb)  # warm-up: lazy initialisation in torch
    per_step: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu_per_step: dict[str, list[float]] = {kind: [] for kind in KINDS}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        # Rotate the order, so no kind always runs next to the same neighbour in time.
        order = KINDS[repeat % 3:] + KINDS[:repeat % 3]
        for kind in order:
            seconds, cpu = time_steps(lm, texts, kind, args.steps, teacher_emb)
            per_step[kind].append(seconds)
            cpu_per_step[kind].append(cpu)
            print(f"repeat {repeat + 1}/{args.repeats} {kind:10s} {seconds:6.2f} s/step wall, {cpu:6.2f} s CPU",
                  file=sys.stderr)
    load_after = os.getloadavg()
    medians = {kind: statistics.median(values) for kind, values in per_step.items()}
    minima = {kind: min(values) for kind, values in per_step.items()}
    # CPU time of this process barely depends on what else runs: the steadiest measure on a shared machine.
    cpu_medians = {kind: statistics.median(values) for kind, values in cpu_per_step.items()}

    manifest = load_default_sweep_manifest(ProtoCache(SHIPPED_ROOT, shipped=""))
    sweep = None
    if manifest is not None:
        sweep = {"set": manifest.set_name, "n_texts": len(manifest.texts), "model": manifest.model,
                 "config": manifest.config, "wall_time_s_per_setting": manifest.wall_time_s,
                 "total_wall_time_s": manifest.total_wall_time_s, "torch_threads": manifest.torch_threads,
                 "note": "measured by the pre-fit run (core.analyses.regularisers.prefit_default_sweep), under the machine's load then"}

    result = {
        "benchmark": "regularisers",
        "model": describe(lm),
        "batch": {"n_texts": len(texts), "tokens_per_text": n_tokens, "total_tokens": sum(n_tokens)},
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "seconds_per_step": per_step,
        "median_seconds_per_step": medians,
        "min_seconds_per_step": minima,
        "cpu_seconds_per_step": cpu_per_step,
        "median_cpu_seconds_per_step": cpu_medians,
        "cpu_slowdown_vs_none": {kind: cpu_medians[kind] / cpu_medians["none"] for kind in KINDS},
        "slowdown_vs_none": {kind: medians[kind] / medians["none"] for kind in KINDS},
        "slowdown_vs_none_of_minima": {kind: minima[kind] / minima["none"] for kind in KINDS},
        "teacher": {"load_s": teacher_load, "embed_batch_s": teacher_embed},
        "default_sweep": sweep,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "loadavg_before": load_before, "loadavg_after": load_after},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    print(f"Regularisers, {lm.name} on {lm.device.type} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
          f"threads, load {load_before[0]:.1f}), batch of {len(texts)} texts ({sum(n_tokens)} tokens)")
    for kind in KINDS:
        print(f"  {kind:10s}: median {medians[kind]:.3f} s/step ({result['slowdown_vs_none'][kind]:.2f}x of none), "
              f"min {minima[kind]:.3f} s/step ({result['slowdown_vs_none_of_minima'][kind]:.2f}x), "
              f"CPU {cpu_medians[kind]:.3f} s/step ({result['cpu_slowdown_vs_none'][kind]:.2f}x)")
    print(f"  teacher: loaded in {teacher_load:.1f} s, embedded the batch in {teacher_embed:.2f} s (once per set)")
    if sweep:
        print(f"  default sweep ({sweep['n_texts']} texts): " + ", ".join(
            f"{label} {'?' if s is None else f'{s:.0f} s'}" for label, s in sweep["wall_time_s_per_setting"].items())
              + f"; total {sweep['total_wall_time_s'] / 60:.1f} min")
    else:
        print("  default sweep: no manifest in data/prefit yet (run the pre-fit first)")
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
