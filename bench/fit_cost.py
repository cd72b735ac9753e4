"""Wall time to token accuracy >= 0.99 for new texts of 20-40 tokens on the embedded model, this machine's CPU:
the fast preset as it is (float32 steps) against the same preset with its steps in bf16 (FitConfig.compute), side
by side in one run, interleaved per (text, seed) so a busy machine slows both alike.

Every result is measured in the float32 forward pass the cache identity names (a bf16 fit counts as converged only
when it holds there; core.engine.fit polishes it in float32 otherwise), and the bench checks that again with
core.engine.reconstruct. Writes bench/results/fit_cost.json (runs, medians, spreads). Usage:
python bench/fit_cost.py [--seeds 1] [--max-steps 2000] [--methods fast,fast bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.engine.fit import fit_texts, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.reconstruct import reconstruct  # noqa: E402

OUT = REPO / "bench" / "results" / "fit_cost.json"
# New texts (in no built-in set, so in no shipped entry), 20-40 tokens with the embedded tokenizer.
TEXTS = [
    "The lighthouse keeper wrote every passing ship into a leather book that nobody ever read, and he kept "
    "doing it for forty years.",
    "Our neighbour keeps bees on the roof of her garage, and in August the whole street smells faintly of "
    "warm honey.",
    "A single misplaced comma in the supply contract cost the shipping company nearly two million dollars in "
    "the end.",
    "When the power failed halfway through the concert, the orchestra kept playing by candlelight and nobody "
    "in the audience left.",
    "The glacier has retreated almost a kilometre since the old stone hut was built at its edge by surveyors "
    "in 1921.",
    "She learned to read music before she could read words, and she wrote her first song for the piano at "
    "the age of six.",
]
METHODS = {"fast": {}, "fast bf16": {"compute": "bfloat16"}}


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; use {', '.join(METHODS)}")
    torch.set_num_threads(os.cpu_count() or 1)
    lm = load_model()
    report = {"model": lm.name, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "created": time.time(),
              "texts": TEXTS, "tokens": [len(lm.encode(t)) for t in TEXTS], "max_steps": args.max_steps,
              "configs": {m: preset("fast", max_steps=args.max_steps, **METHODS[m]).as_dict() for m in methods},
              "runs": []}
    fit_texts(lm, [TEXTS[0]], preset("fast", max_steps=2, compute="bfloat16"))  # the bf16 copy, made once
    for seed in range(args.seeds):
        for text in TEXTS:
            for method in methods:
                config = preset("fast", max_steps=args.max_steps, seed=seed, **METHODS[method])
                started = time.perf_counter()
                [result] = fit_texts(lm, [text], config)
                seconds = time.perf_counter() - started
                check = reconstruct(lm, result.e, result.m, result.token_ids, config.layout).metrics.accuracy
                run = {"method": method, "seed": seed, "n_tokens": len(result.token_ids), "seconds": round(seconds, 2),
                       "steps": result.steps, "redraws": result.redraws, "converged": result.converged,
                       "float32_accuracy": check, "seconds_per_step": round(seconds / max(result.steps, 1), 4)}
                report["runs"].append(run)
                print(f"  {method:10s} seed {seed} {run['n_tokens']} tokens: {seconds:6.1f} s, {result.steps} steps, "
                      f"float32 accuracy {check:.3f}", file=sys.stderr, flush=True)
                OUT.write_text(json.dumps(report, indent=1))
    summary = {}
    for method in methods:
        runs = [r for r in report["runs"] if r["method"] == method]
        summary[method] = {"seconds": spread([r["seconds"] for r in runs]), "steps": spread([r["steps"] for r in runs]),
                           "seconds_per_step": spread([r["seconds_per_step"] for r in runs]),
                           "converged": f"{sum(r['converged'] for r in runs)}/{len(runs)}",
                           "float32_accuracy_min": min(r["float32_accuracy"] for r in runs)}
    if {"fast", "fast bf16"} <= set(methods):
        pairs = {(r["n_tokens"], r["seed"]): r["seconds"] for r in report["runs"] if r["method"] == "fast"}
        ratios = [pairs[(r["n_tokens"], r["seed"])] / r["seconds"] for r in report["runs"] if r["method"] == "fast bf16"]
        summary["bf16_speedup_median_time"] = round(summary["fast"]["seconds"]["median"]
                                                    / summary["fast bf16"]["seconds"]["median"], 2)
        summary["bf16_speedup_per_run"] = spread(ratios)
    report["summary"] = summary
    OUT.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
