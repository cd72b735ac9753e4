"""Corpus fitting on this machine's CPU, side by side in one run, on the embedded model:

(a) batching: the same texts (of different lengths) fitted with B rows per pass, continuously (a text that
    converges leaves its row and the next waiting text takes it: core.engine.fit) against fixed batches (the
    texts in chunks of B, each chunk waiting for its slowest text, as a plain batched loop does);
(b) processes: ``python -m core fit --file`` as 1 worker with 2 torch threads against
    ``torchrun --nproc-per-node 2`` (2 workers x 1 thread), each into an empty cache.

Texts per minute for each; results in bench/results/corpus.json. Usage: python bench/corpus.py [--texts 16]
[--batch-size 4] [--max-steps 300] [--skip batching|processes]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.engine.fit import fit_texts, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.texts.textsets import load_sources  # noqa: E402

OUT = REPO / "bench" / "results" / "corpus.json"


def corpus_texts(lm, n: int, low: int = 8, high: int = 40) -> list[str]:
    """n texts of low..high tokens, lengths spread evenly: prefixes of the built-in source texts."""
    sources = [s.text for s in load_sources()]
    texts = []
    for i in range(n):
        length = low + round(i * (high - low) / max(n - 1, 1))
        ids = lm.encode(sources[i % len(sources)] + " " + sources[(i + 1) % len(sources)])[:length]
        texts.append(lm.decode(ids))
    return list(dict.fromkeys(texts))


def run_batching(lm, texts: list[str], config, batch_size: int) -> dict:
    results = {}
    torch.set_num_threads(2)
    for method in ("fixed", "continuous"):
        started = time.perf_counter()
        if method == "continuous":
            fitted = fit_texts(lm, texts, config, batch_size=batch_size)
        else:
            fitted = []
            for start in range(0, len(texts), batch_size):
                fitted += fit_texts(lm, texts[start:start + batch_size], config, batch_size=batch_size)
        seconds = time.perf_counter() - started
        results[method] = {
            "seconds": round(seconds, 1), "texts_per_minute": round(60 * len(texts) / seconds, 2),
            "converged": sum(r.converged for r in fitted), "steps": [r.steps for r in fitted],
            "median_steps": statistics.median(r.steps for r in fitted),
        }
        print(f"  {method}: {seconds:.0f} s, {results[method]['texts_per_minute']:.2f} texts/min, "
              f"{results[method]['converged']}/{len(texts)} converged", file=sys.stderr, flush=True)
    results["speedup"] = round(results["fixed"]["seconds"] / results["continuous"]["seconds"], 2)
    return results


def run_processes(path: Path, args) -> dict:
    common = ["fit", "--file", str(path), "--preset", "fast", "--max-steps", str(args.max_steps),
              "--batch-size", str(args.batch_size), "--quiet", "--json"]
    results = {}
    for method, command, env in (
        ("1 worker x 2 threads", [sys.executable, "-m", "core"], {"OMP_NUM_THREADS": "2"}),
        ("2 workers x 1 thread", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc-per-node=2", "-m", "core"], {"OMP_NUM_THREADS": "1"}),
    ):
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            run = subprocess.run([*command, *common, "--cache", cache], cwd=REPO, capture_output=True, text=True,
                                 env={**os.environ, **env})
            seconds = time.perf_counter() - started
        if run.returncode != 0:
            raise RuntimeError(f"{method} failed: {run.stderr[-1000:]}")
        summary = next(json.loads(line) for line in run.stdout.splitlines()[::-1] if line.startswith('{"corpus"'))
        total = summary["corpus"]
        results[method] = {"seconds": round(seconds, 1), "fit_seconds": total["seconds"],
                           "texts_per_minute": round(60 * total["texts"] / seconds, 2),
                           "converged": total["converged"], "workers": summary["workers"]}
        print(f"  {method}: {seconds:.0f} s with start-up ({total['seconds']:.0f} s fitting), "
              f"{results[method]['texts_per_minute']:.2f} texts/min", file=sys.stderr, flush=True)
    results["ratio"] = round(results["1 worker x 2 threads"]["seconds"] / results["2 workers x 1 thread"]["seconds"], 2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--skip", choices=["batching", "processes"])
    args = parser.parse_args(argv)
    lm = load_model()
    texts = corpus_texts(lm, args.texts)
    config = preset("fast", max_steps=args.max_steps)
    report = {"model": lm.name, "cpus": os.cpu_count(), "texts": len(texts),
              "tokens": [len(lm.encode(t)) for t in texts], "batch_size": args.batch_size,
              "config": config.as_dict(), "created": time.time()}
    print(f"{len(texts)} texts of {min(report['tokens'])}-{max(report['tokens'])} tokens, batch {args.batch_size}, "
          f"fast preset up to {args.max_steps} steps", file=sys.stderr, flush=True)
    if args.skip != "batching":
        report["batching"] = run_batching(lm, texts, config, args.batch_size)
        OUT.write_text(json.dumps(report, indent=1))
    if args.skip != "processes":
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "corpus.txt"
            path.write_text("\n".join(texts) + "\n", encoding="utf-8")
            report["processes"] = run_processes(path, args)
    OUT.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("batching", "processes") if k in report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
