"""Benchmark: the Capacity page's shipped ladder on the embedded model - what it cost, and one pass against decoding.

    .venv/bin/python bench/capacity.py [--repeats 3]

Reads the shipped ladder's record (data/prefit/ladder.json, written by `python -m core ladder`): the longest
prefix per source, and per length the steps and wall time of each fit, beside the paper's capacity table. Then times,
on this machine and now (nothing read from the cache), the one-pass reconstruction of every converged prefix
against greedy decoding of as many tokens with the KV cache (core.analyses.capacity.time_generation, medians of
--repeats after a warm-up), and reports the ratio along the ladder beside the paper's average (279x). Writes
bench/results/capacity.json.

One pass costs about what one decoding step costs at that length, so the ratio grows with N; on a 2-core CPU a
135M model's step is bound by reading its weights (about 0.55 GB in float32 at about 9 GB/s: 60 ms), which is
what both sides pay per forward pass.
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

from core.analyses.capacity import PAPER_CAPACITY, PAPER_CAPACITY_SETTING, PAPER_SPEEDUP, time_generation  # noqa: E402
from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.models import describe, load_model  # noqa: E402
from core.shipped.ladder import load_ladder_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "capacity.json"))
    args = parser.parse_args(argv)

    record = load_ladder_record()
    if record is None:
        raise SystemExit("No shipped ladder (data/prefit/ladder.json): run `python -m core ladder` first.")
    lm = load_model()
    if record.get("model") != lm.identity:
        raise SystemExit(f"The shipped ladder was fitted on {record.get('model')}, not {lm.identity}.")
    cache = ProtoCache(SHIPPED_ROOT, shipped="")
    rows = record["rows"]
    lengths = sorted({int(r["length"]) for r in rows})
    per_length = []
    load_before = os.getloadavg()
    for length in lengths:
        part = [r for r in rows if int(r["length"]) == length]
        timings = []
        for row in part:
            entry = cache.get(row["key"], lm.hidden_size) if row.get("converged") else None
            if entry is not None:
                timings.append(time_generation(lm, entry, None, repeats=args.repeats))  # measured now
        per_length.append({
            "length": length, "texts": len(part), "converged": sum(bool(r["converged"]) for r in part),
            "steps": [int(r["steps"]) for r in part], "fit_seconds": [round(float(r["wall_time"]), 1) for r in part],
            "one_pass_s": round(statistics.median(t.one_pass_s for t in timings), 4) if timings else None,
            "generate_s": round(statistics.median(t.generate_s for t in timings), 4) if timings else None,
            "ratio": round(statistics.median(t.ratio for t in timings), 1) if timings else None,
        })
        print(f"N = {length:>3}: {per_length[-1]['converged']}/{len(part)} converged, steps {per_length[-1]['steps']}, "
              f"one pass {per_length[-1]['one_pass_s']} s, decoding {per_length[-1]['generate_s']} s, "
              f"ratio {per_length[-1]['ratio']}x", file=sys.stderr, flush=True)
    result = {
        "benchmark": "capacity",
        "model": describe(lm),
        "ladder": {"config": record["config"], "settings": record["settings"], "sources": record["sources"],
                   "longest": record["longest"], "complete": record["complete"],
                   "wall_time_s": record["wall_time_s"],
                   "note": "wall time summed over the runs that fitted the ladder (core.shipped.ladder)"},
        "paper": {"capacity": {k: {"m per text": v[0], "m shared": v[1]} for k, v in PAPER_CAPACITY.items()},
                  "setting": PAPER_CAPACITY_SETTING, "speedup": PAPER_SPEEDUP},
        "repeats": args.repeats,
        "per_length": per_length,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(lm.device), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
