"""Corpus fitting on this machine's CPU, side by side in one run, on the embedded model:

(a) batching: the same texts (of different lengths, in a shuffled order as a corpus file has them) fitted with
    B rows per pass, continuously (a text that converges leaves its row and the next waiting text, shortest
    first, takes it: core.engine.fit) against fixed batches (a plain batched loop, as the authors' code runs
    it: B texts stay in every pass until all B are finished, then the next B start), in the corpus order and,
    a stronger baseline, sorted by length (each batch pads less); optionally against chunks of B that shrink
    (a finished text leaves the pass, but nobody takes its row: the chunk still waits for its slowest text);
(b) processes: ``python -m core fit --file`` as 1 worker with 2 torch threads against
    ``torchrun --nproc-per-node 2`` (2 workers x 1 thread), each into an empty cache.

Texts per minute for each; results in bench/results/corpus.json. Usage: python bench/corpus.py [--texts 32]
[--batch-size 8] [--max-steps 200] [--skip batching|processes]
[--methods continuous,fixed,fixed sorted]. A part that is skipped keeps its figures from the earlier file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def corpus_texts(lm, n: int, low: int = 8, high: int = 64) -> list[str]:
    """n texts of low..high tokens, lengths spread evenly: prefixes of the built-in source texts."""
    sources = [s.text for s in load_sources()]
    texts = []
    for i in range(n):
        length = low + round(i * (high - low) / max(n - 1, 1))
        ids = lm.encode(" ".join(sources[(i + k) % len(sources)] for k in range(3)))[:length]
        texts.append(lm.decode(ids))
    return list(dict.fromkeys(texts))


BATCHING = ("continuous", "fixed", "fixed sorted", "shrinking chunks")
DEFAULT_BATCHING = BATCHING[:3]


def corpus_order(texts: list[str], seed: int = 0) -> list[str]:
    """The texts in a fixed shuffled order: a corpus file is not sorted by length."""
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def run_batching(lm, texts: list[str], config, batch_size: int, report: dict,
                 methods: tuple[str, ...] = BATCHING, earlier: dict | None = None) -> dict:
    results = report.setdefault("batching", {})
    texts = corpus_order(texts)
    if earlier is not None and earlier.get("batching_config") == config.as_dict() and \
            earlier.get("batching_tokens") == [len(lm.encode(t)) for t in texts]:
        # the same texts and settings: the methods not run again keep their figures (a run stopped half-way)
        results.update({k: v for k, v in earlier.get("batching", {}).items() if k in BATCHING and k not in methods})
    report["batching_order"] = "shuffled (random.Random(0))"
    report["batching_tokens"] = [len(lm.encode(t)) for t in texts]
    torch.set_num_threads(2)
    for method in methods:
        started = time.perf_counter()
        if method == "fixed sorted":
            order = sorted(range(len(texts)), key=lambda i: len(lm.encode(texts[i])))
            by_length = fit_texts(lm, [texts[i] for i in order], config, batch_size=batch_size, batching="fixed")
            fitted = [None] * len(texts)
            for i, result in zip(order, by_length):
                fitted[i] = result
        elif method == "shrinking chunks":
            fitted = []
            for start in range(0, len(texts), batch_size):
                fitted += fit_texts(lm, texts[start:start + batch_size], config, batch_size=batch_size)
        else:
            fitted = fit_texts(lm, texts, config, batch_size=batch_size, batching=method)
        seconds = time.perf_counter() - started
        results[method] = {
            "seconds": round(seconds, 1), "texts_per_minute": round(60 * len(texts) / seconds, 2),
            "converged": sum(r.converged for r in fitted), "steps": [r.steps for r in fitted],
            "median_steps": statistics.median(r.steps for r in fitted),
        }
        print(f"  {method}: {seconds:.0f} s, {results[method]['texts_per_minute']:.2f} texts/min, "
              f"{results[method]['converged']}/{len(texts)} converged", file=sys.stderr, flush=True)
        for other in BATCHING[1:]:
            if other in results and "continuous" in results:
                results[f"speedup over {other}"] = round(results[other]["seconds"] / results["continuous"]["seconds"], 2)
        OUT.write_text(json.dumps(report, indent=1))  # each method as it ends: a stopped run keeps what it measured
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
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--skip", choices=["batching", "processes"])
    parser.add_argument("--methods", default=",".join(DEFAULT_BATCHING),
                        help=f"batching methods to run, comma-separated, of {', '.join(BATCHING)} "
                             f"(default: {','.join(DEFAULT_BATCHING)})")
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if unknown := set(methods) - set(BATCHING):
        parser.error(f"unknown batching methods {sorted(unknown)}; use {', '.join(BATCHING)}")
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    lm = load_model()
    texts = corpus_texts(lm, args.texts)
    config = preset("fast", max_steps=args.max_steps)
    report = {"model": lm.name, "cpus": os.cpu_count(), "texts": len(texts),
              "tokens": [len(lm.encode(t)) for t in texts], "batch_size": args.batch_size,
              "config": config.as_dict(), "created": time.time()}
    print(f"{len(texts)} texts of {min(report['tokens'])}-{max(report['tokens'])} tokens, batch {args.batch_size}, "
          f"fast preset up to {args.max_steps} steps", file=sys.stderr, flush=True)
    # a skipped part keeps its figures from the earlier run (with what they were measured on)
    kept = {"batching": ("batching", "batching_order", "batching_tokens"), "processes": ("processes", "process_texts")}
    if args.skip:
        report.update({k: previous[k] for k in kept[args.skip] if k in previous})
        part_config = {"batching": "batching_config", "processes": "process_config"}[args.skip]
        if args.skip in previous:  # the settings that part was measured with
            report[part_config] = previous.get(part_config, previous["config"])
    report.update({k: v for k, v in previous.items() if k.startswith("earlier")})
    if args.skip != "batching":
        report["batching_config"] = config.as_dict()
        run_batching(lm, texts, config, args.batch_size, report, methods, previous)
    if args.skip != "processes":
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "corpus.txt"
            # every other text (half the corpus, the same spread of lengths): two more runs of the whole corpus
            # would double the bench's hours
            report["process_texts"] = len(texts[::2])
            report["process_config"] = config.as_dict()
            path.write_text("\n".join(texts[::2]) + "\n", encoding="utf-8")
            report["processes"] = run_processes(path, args)
    OUT.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("batching", "processes") if k in report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
