"""Benchmark: the Noise page's default sweep, batched vs one forward pass per draw.

    .venv/bin/python bench/noise_sweep.py [--repeats 3] [--model NAME] [--draws 8]

Reuses a converged entry of a 32-token text of the embedded model from the cache (or fits one with the fast
preset), then times core.analyses.noise.noise_sweep over the default grid (4 types x 6 alphas x 8 draws) with
batched=True (all draws of one (type, alpha) in one forward pass) and batched=False (one pass per draw). The two modes alternate
within each repeat so that load from other processes hits both alike; medians are reported. Writes
bench/results/noise_sweep.json and prints a summary.
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

from core.engine.cache import CacheEntry, ProtoCache  # noqa: E402
from core.engine.fit import fit_and_cache, preset  # noqa: E402
from core.engine.models import describe, load_model  # noqa: E402
from core.analyses.noise import NOISE_TYPES, PAPER_ALPHAS, NoiseSettings, run_noise, summarize_noise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# 32 tokens with the SmolLM2 tokenizer (checked at run time and reported).
DEFAULT_TEXT = ("The lighthouse keeper climbed the spiral stairs each evening, lit the lamp with a long match, and "
                "watched the small fishing boats come slowly home across the grey water.")


def reusable_entry(cache: ProtoCache, lm, text: str) -> CacheEntry | None:
    """A converged entry of this text and model fitted with any settings: the benchmark times the sweep, not
    the fit, and a fit of a 32-token text takes up to an hour on a busy 2-core CPU."""
    token_ids = lm.encode(text)
    for listed in cache.list(lm.identity):
        if listed.token_ids == token_ids and (listed.accuracy or 0) >= 0.99:
            return cache.get(listed.key)
    return None


def time_sweep(lm, entry, args, batched: bool) -> tuple[float, object]:
    start = time.perf_counter()
    table = run_noise(lm, [entry], NoiseSettings(tuple(args.kinds), tuple(args.alphas), args.draws, args.target), batched=batched)
    return time.perf_counter() - start, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2-135M)")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--kinds", nargs="+", default=list(NOISE_TYPES))
    parser.add_argument("--alphas", nargs="+", type=float, default=list(PAPER_ALPHAS))
    parser.add_argument("--target", default="e", choices=["e", "m", "both"])
    parser.add_argument("--cache", default=str(RESULTS / "cache"))
    parser.add_argument("--out", default=str(RESULTS / "noise_sweep.json"))
    args = parser.parse_args(argv)

    lm = load_model(args.model)
    cache = ProtoCache(args.cache)
    fit_start = time.perf_counter()
    entry = reusable_entry(cache, lm, args.text)
    if entry is None:
        [outcome] = fit_and_cache(lm, [args.text], preset("fast"), cache)
        entry = outcome.entry
    fit_seconds = time.perf_counter() - fit_start
    print(f"entry {entry.key[:12]}: {entry.n_tokens} tokens, accuracy {entry.metrics['accuracy']:.3f}, "
          f"{'from the cache' if fit_seconds < 5 else f'fitted in {fit_seconds:.0f} s'}", file=sys.stderr)

    # Warm-up: the first forward passes pay for lazy initialisation in torch and transformers.
    warm = NoiseSettings(tuple(args.kinds[:1]), tuple(args.alphas[-1:]), 2, args.target)
    run_noise(lm, [entry], warm, batched=True)
    run_noise(lm, [entry], warm, batched=False)

    settings = NoiseSettings(tuple(args.kinds), tuple(args.alphas), args.draws, args.target)
    nonzero = sum(a > 0 for a in settings.alphas)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"batched": [], "per_draw": []}
    loads: dict[str, list[float]] = {"batched": [], "per_draw": []}  # 1-minute load average after each run
    tables = {}
    load_before = os.getloadavg()

    def write_result(complete: bool) -> dict:
        """Written after every run, so a run stopped from outside still leaves what it measured."""
        medians = {name: statistics.median(values) for name, values in times.items() if values}
        rows = len(next(iter(tables.values())))
        agree = (sum(a == b for a, b in zip(tables["batched"]["tokens"], tables["per_draw"]["tokens"]))
                 if len(tables) == 2 else None)
        summary = summarize_noise(tables.get("batched", next(iter(tables.values()))))
        result = {
            "benchmark": "noise_sweep",
            "complete": complete,
            "model": describe(lm),
            "entry": {"key": entry.key, "text": entry.text, "n_tokens": entry.n_tokens,
                      "accuracy": entry.metrics.get("accuracy"), "steps": entry.metrics.get("steps")},
            "grid": {"kinds": args.kinds, "alphas": args.alphas, "draws": args.draws, "target": args.target},
            "rows": rows,
            # Alpha 0 is one clean pass in both modes: without noise every draw is the same.
            "forward_passes": {"batched": settings.passes_per_entry,
                               "per_draw": len(settings.kinds) * nonzero * settings.draws + (0.0 in settings.alphas)},
            "repeats": args.repeats,
            "seconds": times,
            "loadavg_after_each": loads,
            "median_seconds": medians,
            "speedup_batched_over_per_draw": (medians["per_draw"] / medians["batched"]
                                              if len(medians) == 2 else None),
            "rows_identical_between_modes": None if agree is None else f"{agree}/{rows}",
            "mean_accuracy_by_alpha": {f"{a:g}": float(v) for a, v in
                                       summary.groupby("alpha")["accuracy_mean"].mean().items()},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return result

    for repeat in range(args.repeats):
        # Alternate which mode goes first so a burst of outside load does not always land on the same one.
        order = [True, False] if repeat % 2 == 0 else [False, True]
        for batched in order:
            seconds, table = time_sweep(lm, entry, args, batched)
            name = "batched" if batched else "per_draw"
            times[name].append(seconds)
            loads[name].append(os.getloadavg()[0])
            tables[name] = table
            print(f"repeat {repeat + 1}/{args.repeats} {name:8s} {seconds:7.2f} s", file=sys.stderr)
            write_result(complete=False)
    result = write_result(complete=True)
    medians, rows = result["median_seconds"], result["rows"]

    print(f"Noise sweep, {lm.name} on {lm.device.type} ({os.cpu_count()} CPUs, load {load_before[0]:.1f}), "
          f"{entry.n_tokens}-token entry, {len(args.kinds)} types x {len(args.alphas)} alphas x {args.draws} draws "
          f"= {rows} rows")
    for name in ("batched", "per_draw"):
        passes = result["forward_passes"][name]
        print(f"  {name:8s}: median {medians[name]:6.2f} s over {args.repeats} repeats "
              f"({', '.join(f'{t:.2f}' for t in times[name])}), {passes} forward passes")
    print(f"  speed-up of batched over one-pass-per-draw: {result['speedup_batched_over_per_draw']:.2f}x; "
          f"identical rows {result['rows_identical_between_modes']}")
    print(f"  mean accuracy by alpha: {result['mean_accuracy_by_alpha']}")
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
