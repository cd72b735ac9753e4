"""Benchmark: the Geometry page on the embedded model - more solutions of a shipped text, and a Bezier path fit.

    .venv/bin/python bench/geometry.py [--model NAME] [--entry KEY_PREFIX] [--seeds 1 2] [--steps 60] [--samples 4]

Takes one converged entry of the shipped pre-fit (data/prefit; by default the one with the fewest fitting steps
among texts of --min-tokens to --max-tokens tokens), fits --seeds more solutions of its text with its own settings
from random draws (core.analyses.geometry.run_solutions, into a temporary cache over the shipped one), and times a
Bezier path fit from the shipped entry to the first new solution (run_path: --steps AdamW steps on the control
point, --samples points t per step), decoding the straight line and the curve at --points t. Reports the wall
times, the solutions' distances and cosines, and the lowest and mean accuracy along the line and along the curve
(docs/science.md, A.geometry: the line collapses, the curve holds). Writes bench/results/geometry.json.

The defaults are sized for a shared 2-core CPU: there a curve step of the embedded model (4 points of a 6-token
text, forward and backward) took 2.1 s under a load average of 4-7, and the two seeds' fits 250 s; the whole run
stays under 10 minutes. A GPU affords the page's defaults (200 steps of 8 points).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.analyses.geometry import GeometrySettings, run_path, run_solutions  # noqa: E402
from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.models import describe, load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def pick_entry(cache: ProtoCache, lm, prefix: str | None, min_tokens: int, max_tokens: int):
    """The shipped entry named by a key prefix, or the converged one of min..max tokens that took the fewest steps."""
    listed = [row for row in cache.list(lm.identity) if row.shipped]
    if prefix:
        chosen = [row for row in listed if row.key.startswith(prefix)]
        if len(chosen) != 1:
            raise SystemExit(f"{len(chosen)} shipped entries of {lm.name} start with {prefix!r}; give one.")
    else:
        chosen = sorted((row for row in listed if (row.accuracy or 0) >= 0.99 and min_tokens <= row.n_tokens <= max_tokens
                         and not row.config.get("start")),
                        key=lambda row: (int(row.metrics.get("steps", 0)), row.key))
        if not chosen:
            raise SystemExit(f"No converged shipped entry of {lm.name} has {min_tokens}-{max_tokens} tokens.")
    return cache.get(chosen[0].key, lm.hidden_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2-135M)")
    parser.add_argument("--entry", default=None, help="key prefix of a shipped entry (default: chosen by length)")
    parser.add_argument("--min-tokens", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=9)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--points", type=int, default=21)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default=str(RESULTS / "geometry.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    lm = load_model(args.model)
    load_seconds = time.perf_counter() - started
    load_before = os.getloadavg()
    settings = GeometrySettings(seeds=tuple(args.seeds), points=args.points, steps=args.steps, lr=args.lr,
                                samples=args.samples)
    with tempfile.TemporaryDirectory() as folder:
        cache = ProtoCache(folder, shipped=SHIPPED_ROOT)
        entry = pick_entry(cache, lm, args.entry, args.min_tokens, args.max_tokens)
        print(f"entry {entry.key[:12]}: {entry.n_tokens} tokens, {entry.metrics.get('steps')} steps, "
              f"{entry.text!r}", file=sys.stderr)

        def say(fraction: float, message: str) -> None:
            print(f"  {fraction:5.1%} {message}", file=sys.stderr, end="\r")

        t0 = time.perf_counter()
        solutions = run_solutions(lm, entry, settings, cache, progress=say)
        fit_seconds = time.perf_counter() - t0
        print(f"\n{len(solutions.entries)} solutions; seeds fitted in {fit_seconds:.0f} s", file=sys.stderr)
        new = [e for e in solutions.entries if e.key != entry.key and int(e.config.get("seed", -1)) in settings.seeds
               and not e.config.get("start")]
        if not new:
            raise SystemExit("No new solution was fitted.")
        other = new[0]
        t0 = time.perf_counter()
        path = run_path(lm, entry, other, settings, cache, progress=say)
        path_seconds = time.perf_counter() - t0
        print(f"\npath fitted in {path_seconds:.0f} s", file=sys.stderr)

    summary = path.summary()
    result = {
        "benchmark": "geometry",
        "model": describe(lm),
        "model_load_seconds": round(load_seconds, 1),
        "entry": {"key": entry.key, "text": entry.text, "n_tokens": entry.n_tokens, "config": entry.config,
                  "accuracy": entry.metrics.get("accuracy"), "steps": entry.metrics.get("steps")},
        "settings": settings.as_dict(),
        "solutions": [{"key": e.key, "seed": int(e.config.get("seed", 0)), "shipped": e.key == entry.key,
                       "accuracy": e.metrics.get("accuracy"), "steps": e.metrics.get("steps"),
                       "wall_time_s": e.metrics.get("wall_time")} for e in solutions.entries],
        "seed_fit_seconds": round(fit_seconds, 1),
        "pairs": solutions.pairs.to_dict("records"),
        "path": {"a": entry.key, "b": other.key, "seconds": round(path.seconds, 2), "steps": path.steps,
                 "seconds_per_step": round(path.seconds / max(path.steps, 1), 3),
                 "points_per_step": settings.samples, "decoded_points": 2 * settings.points,
                 "loss_first_step": path.history[0] if path.history else None,
                 "loss_last_step": path.history[-1] if path.history else None,
                 **{k: round(v, 4) for k, v in summary.items()},
                 "ts": path.ts.tolist(), "line_accuracy": path.line_accuracy.tolist(),
                 "curve_accuracy": path.curve_accuracy.tolist()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(lm.device), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"line: min accuracy {summary['line_min_accuracy']:.2f}, mean {summary['line_mean_accuracy']:.2f}; "
          f"curve: min {summary['curve_min_accuracy']:.2f}, mean {summary['curve_mean_accuracy']:.2f}; "
          f"path fit {path.seconds:.0f} s ({path.steps} steps); wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
