"""This machine's limits, and how close a fitting step of the embedded model comes to them, side by side in one run.

(a) The limits: the float32 and bf16 matrix-multiply peak (GFLOP/s, the best of a few 4096 x 4096 products) and
    the memory bandwidth (GB/s: a sum over 1 GiB, which only reads; a copy of 1 GiB, counted as the bytes it
    copies, as the issue's "copies memory at about 9 GB/s" counts it).
(b) A fitting step of the embedded model as core.engine.fit runs it (core.engine.reconstruct.scored_logits, each
    row's cross-entropy, their sum, backward to e and m), at batch 1 and 8 and texts of 16, 32 and 64 tokens:
    its FLOPs counted from the architecture (core.engine.cost), its time (the fastest of --reps after a warm-up),
    the share of the matching peak it reaches, and at batch 1 the time its weight reads take at the measured
    read bandwidth (twice the weights: forward and backward). For each way of computing the step:
      float32         today's path: float32 weights, sdpa attention;
      bf16            the weights in bf16 (LoadedModel.in_dtype), vectors and loss in float32, sdpa attention;
      bf16 eager      the same with eager attention (the math path: matmuls in bf16 forward and backward);
      bf16 autocast   float32 weights under torch.autocast(bfloat16) (casts the weights at every pass);
      compiled        --compile: torch.compile of the float32 model (compile time reported apart: warmup_seconds);
      compiled bf16 eager  torch.compile of the bf16 eager copy.

Writes bench/results/limits.json (or --out). Usage: python bench/limits.py [--reps 5] [--threads 2] [--compile]
[--ways float32,bf16,...] [--shapes 1x24,8x24] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.engine.cost import best_time, cpu_name, matmul_rate, step_cost  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.reconstruct import scored_logits  # noqa: E402

OUT = REPO / "bench" / "results" / "limits.json"
WAYS = ("float32", "bf16", "bf16 eager", "bf16 autocast", "compiled", "compiled bf16 eager")
SHAPES = [(1, 16), (1, 32), (1, 64), (8, 16), (8, 32), (8, 64)]  # (rows, text tokens)


def bandwidth(reps: int = 5) -> dict:
    x = torch.empty(2**28, dtype=torch.float32).fill_(1.0)  # 1 GiB
    y = torch.empty_like(x)
    size = x.numel() * x.element_size()
    read = size / best_time(lambda: x.sum(), reps) / 1e9
    copy = size / best_time(lambda: y.copy_(x), reps) / 1e9
    return {"read_gb_s": round(read, 1), "copy_gb_s": round(copy, 1)}


def step_fn(lm, rows: int, n_tokens: int, context):
    """One fitting step of `rows` texts of n_tokens tokens each, as core.engine.fit takes it."""
    hidden = lm.hidden_size
    e = torch.randn(rows, hidden, requires_grad=True)
    m = torch.randn(rows, hidden, requires_grad=True)
    target = torch.randint(0, lm.model.config.vocab_size, (rows, n_tokens))

    def step():
        with context():
            logits = scored_logits(lm, e, m, [n_tokens] * rows, "e+m*N")
            loss = torch.stack([F.cross_entropy(logits[k], target[k]) for k in range(rows)]).sum()
        loss.backward()
        e.grad = m.grad = None
        return float(loss.detach())

    return step


def way_model(lm, way: str):
    """The LoadedModel and the context a way of computing runs its step with; (None, reason) when it cannot."""
    plain = contextlib.nullcontext
    if way == "float32":
        return lm, plain
    if way == "bf16":
        return lm.in_dtype(torch.bfloat16), plain
    if way == "bf16 eager":
        return lm.in_dtype(torch.bfloat16, "eager"), plain
    if way == "bf16 autocast":
        return lm, lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    if way in ("compiled", "compiled bf16 eager"):
        import dataclasses

        base = lm if way == "compiled" else lm.in_dtype(torch.bfloat16, "eager")
        compiled = dataclasses.replace(base, model=torch.compile(base.model), _copies={})
        return compiled, plain
    raise ValueError(way)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the float32 model")
    parser.add_argument("--ways", default=",".join(w for w in WAYS if not w.startswith("compiled")))
    parser.add_argument("--shapes", default=",".join(f"{r}x{n}" for r, n in SHAPES), help="rows x text tokens")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    except ValueError:
        parser.error(f"--shapes: give rows x tokens, e.g. 1x24,8x24, not {args.shapes!r}")
    ways = [w for w in args.ways.split(",") if w]
    if args.compile and "compiled" not in ways:
        ways.append("compiled")
    if args.compile and "bf16 eager" in ways and "compiled bf16 eager" not in ways:
        ways.append("compiled bf16 eager")
    if unknown := set(ways) - set(WAYS):
        parser.error(f"unknown ways {sorted(unknown)}; use {', '.join(WAYS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report: dict = {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu": cpu_name(), "created": time.time()}
    report["peak_gflops"] = {"float32": round(matmul_rate(torch.float32), 0),
                             "bf16": round(matmul_rate(torch.bfloat16), 0)}
    report["bandwidth"] = bandwidth()
    print(f"peak {report['peak_gflops']} GFLOP/s, bandwidth {report['bandwidth']} GB/s", file=sys.stderr, flush=True)
    lm = load_model()
    report["model"] = lm.name
    report["steps"] = {}
    for way in ways:
        started = time.perf_counter()
        model, context = way_model(lm, way)
        peak = report["peak_gflops"]["float32" if way in ("float32", "compiled") else "bf16"]
        rows_out = []
        for rows, n_tokens in shapes:
            step = step_fn(model, rows, n_tokens, context)
            first = time.perf_counter()
            step()  # warm-up (and, compiled, the compile of this shape)
            warmup = time.perf_counter() - first
            seconds = best_time(step, args.reps)
            cost = step_cost(lm.model, rows, n_tokens + 1)
            weight_bytes = step_cost(getattr(model.model, "_orig_mod", model.model), rows, n_tokens + 1).weight_bytes
            gflops = cost.flops / seconds / 1e9
            row = {"rows": rows, "tokens": n_tokens, "seconds": round(seconds, 4), "gflop": round(cost.flops / 1e9, 2),
                   "gflop_s": round(gflops, 1), "share_of_peak": round(gflops / peak, 3),
                   "warmup_seconds": round(warmup, 2)}
            if rows == 1:
                reads = 2 * weight_bytes / (report["bandwidth"]["read_gb_s"] * 1e9)
                row["weight_read_seconds"] = round(reads, 4)
                row["over_weight_reads"] = round(seconds / reads, 2)
            rows_out.append(row)
            print(f"  {way:14s} {rows} x {n_tokens:2d}: {seconds * 1000:7.1f} ms, {gflops:6.1f} GFLOP/s "
                  f"({gflops / peak:.0%} of {peak:g})"
                  + (f", {row['over_weight_reads']}x its weight reads" if rows == 1 else ""), file=sys.stderr, flush=True)
        report["steps"][way] = {"seconds_total": round(time.perf_counter() - started, 1), "shapes": rows_out}
        args.out.write_text(json.dumps(report, indent=1))
    base = {(r["rows"], r["tokens"]): r["seconds"] for r in report["steps"].get("float32", {}).get("shapes", [])}
    if base:
        for way, result in report["steps"].items():
            for row in result["shapes"]:
                row["speedup_over_float32"] = round(base[(row["rows"], row["tokens"])] / row["seconds"], 2)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({w: [(r["rows"], r["tokens"], r["seconds"], r.get("speedup_over_float32")) for r in v["shapes"]]
                      for w, v in report["steps"].items()}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
