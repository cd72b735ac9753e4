"""Fewer steps from a learned start (FitConfig.start, core.engine.start): wall time to token accuracy >= 0.99 on the
embedded model, this machine's CPU, side by side in one run, interleaved per text so a busy machine slows all alike.

Texts, none of them in the cache (the shipped pre-fit is the cache):
  variants   new typo variants of shipped sources (core.texts.augment.lexical_variants with another seed) and
             paraphrases of shipped sources written for this bench: the case a nearest cached text serves;
  new        the texts of bench/fit_cost.py (20-28 tokens), unrelated to anything shipped.
Methods (every one the fast preset otherwise):
  draw       a random draw, the fast preset before it had a start;
  nearest    the vectors of the nearest cached text by teacher embedding (the fast preset now); a text with no cached
             text near enough (core.engine.start.MIN_SIMILARITY) starts from a draw, so for it this method is `draw`
             plus the lookup (timed apart, and not refitted);
  mean       the mean of the cached solutions, one shared start;
  nearest bf16, mean bf16
             the same starts with the steps in bf16 (FitConfig.compute; checked and polished in float32), for CPUs
             with fast bf16 products (AMX): the cheaper step and the fewer steps together.
Every fit goes through core.engine.fit.fit_and_cache on an empty cache root over the shipped pre-fit (so the wall
time includes finding the start), its result checked again with core.engine.reconstruct. Writes
bench/results/start.json (or --out). Usage: python bench/start.py [--max-steps 800] [--methods draw,nearest,mean]
[--groups ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.cost import cpu_name  # noqa: E402
from core.engine.fit import fit_and_cache, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.reconstruct import reconstruct  # noqa: E402
from core.engine.start import MIN_SIMILARITY, nearest_starts  # noqa: E402
from core.engine.teacher import load_teacher  # noqa: E402
from core.texts.augment import lexical_variants  # noqa: E402
from core.texts.textsets import group_seed, load_sources  # noqa: E402

from fit_cost import TEXTS as NEW_TEXTS, spread  # noqa: E402

OUT = REPO / "bench" / "results" / "start.json"
# Paraphrases of shipped sources ("sport", "weather"), written for this bench: not in any built-in set.
PARAPHRASES = [
    "In the last minutes of the final, the young goalkeeper stopped two penalties, and her side lifted the "
    "national cup for the first time.",
    "This morning a dense fog came in off the sea, so the ferries waited in the harbour until the sky cleared "
    "around noon.",
]
TYPO_SOURCES = ("music", "travel")  # shipped sources whose new typo variants the bench fits
# method -> the fast preset's overrides (start, compute)
METHODS = {"draw": {"start": ""}, "nearest": {"start": "nearest"}, "mean": {"start": "mean"},
           "nearest bf16": {"start": "nearest", "compute": "bfloat16"},
           "mean bf16": {"start": "mean", "compute": "bfloat16"}}
DEFAULT_METHODS = ("draw", "nearest", "mean")
SHIPPED = os.environ.get("PROTOTOKENS_SHIPPED") or str(SHIPPED_ROOT)


def typo_variants(shipped: set[str]) -> list[str]:
    """One new typo variant of each TYPO_SOURCES source: lexical_variants with a seed the built-in sets do not use."""
    out = []
    for source in load_sources():
        if source.group in TYPO_SOURCES:
            out.append(next(v.text for v in lexical_variants(source.text, n_variants=6,
                                                             seed=group_seed(source.group, 7)) if v.text not in shipped))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--out", type=Path, default=OUT, help="the results file (another machine: another file)")
    parser.add_argument("--new-texts", type=int, default=3, help="how many of bench/fit_cost.py's texts")
    parser.add_argument("--new-from", type=int, default=0, help="the first of bench/fit_cost.py's texts to take")
    parser.add_argument("--groups", default="variants,new")
    parser.add_argument("--append", action="store_true",
                        help="add these runs to bench/results/start.json (same settings) instead of starting anew")
    parser.add_argument("--summarize", action="store_true",
                        help="only summarise the runs already in bench/results/start.json (a stopped run)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; use {', '.join(METHODS)}")
    out = args.out
    if args.summarize:
        report = json.loads(out.read_text())
        report["stopped_after_runs"] = len(report["runs"])
        summarize(report, methods, out)
        return 0
    torch.set_num_threads(os.cpu_count() or 1)
    lm = load_model()
    shipped_texts = {row.text for row in ProtoCache().list(lm.identity)}
    t0 = time.perf_counter()
    load_teacher()
    teacher_load = time.perf_counter() - t0
    groups = args.groups.split(",")
    texts = ([("variants", t) for t in typo_variants(shipped_texts) + PARAPHRASES if "variants" in groups]
             + [("new", t) for t in NEW_TEXTS[args.new_from: args.new_texts] if "new" in groups])
    assert not any(t in shipped_texts for _, t in texts), "a bench text is in the cache"
    report = {"model": lm.name, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "created": time.time(),
              "max_steps": args.max_steps, "min_similarity": MIN_SIMILARITY, "teacher_load_seconds": round(teacher_load, 2),
              "cpu": cpu_name(), "texts": [], "runs": []}
    if args.append:
        earlier = json.loads(out.read_text())
        assert earlier["max_steps"] == args.max_steps and earlier["cpu"] == report["cpu"], "other settings or machine"
        report = {**earlier, "appended": earlier.get("appended", 0) + 1}
        methods = list(dict.fromkeys([r["method"] for r in report["runs"]] + methods))
    for group, text in texts:
        t0 = time.perf_counter()
        root = tempfile.mkdtemp(prefix="start-bench-")
        [start] = nearest_starts(ProtoCache(root, shipped=SHIPPED), lm.identity, lm.hidden_size, [text])
        lookup = time.perf_counter() - t0
        shutil.rmtree(root, ignore_errors=True)
        near = start is not None
        info = {"group": group, "text": text, "n_tokens": len(lm.encode(text)), "lookup_seconds": round(lookup, 3),
                "neighbour": start.as_dict() if near else None}
        known = [i for i, t in enumerate(report["texts"]) if t["text"] == text]
        if known:
            index = known[0]
        else:
            report["texts"].append(info)
            index = len(report["texts"]) - 1
        print(f"[{group}] {info['n_tokens']} tokens, neighbour {info['neighbour']}", file=sys.stderr, flush=True)
        for method in args.methods.split(","):
            if METHODS[method]["start"] == "nearest" and not near:
                continue  # a draw, the same fit as method "draw" (plus the lookup above)
            root = tempfile.mkdtemp(prefix="start-bench-")
            try:
                cache = ProtoCache(root, shipped=SHIPPED)
                config = preset("fast", max_steps=args.max_steps, **METHODS[method])
                started = time.perf_counter()
                [outcome] = fit_and_cache(lm, [text], config, cache, refit=True)
                seconds = time.perf_counter() - started
            finally:
                shutil.rmtree(root, ignore_errors=True)
            entry = outcome.entry
            check = reconstruct(lm, entry.e, entry.m, entry.token_ids, config.layout).metrics.accuracy
            run = {"method": method, "group": group, "text_index": index, "n_tokens": entry.n_tokens, "seconds": round(seconds, 2),
                   "steps": entry.metrics["steps"], "redraws": entry.metrics["redraws"],
                   "converged": entry.metrics["converged"], "float32_accuracy": check,
                   "start_accuracy": entry.history["accuracy"][0] if entry.history["accuracy"] else None,
                   "start": entry.metrics.get("start")}
            report["runs"].append(run)
            print(f"  {method:8s} {seconds:6.1f} s, {run['steps']} steps, {run['redraws']} redraws, start accuracy "
                  f"{run['start_accuracy']}, converged {run['converged']}", file=sys.stderr, flush=True)
            out.write_text(json.dumps(report, indent=1))
    summarize(report, methods, out)
    return 0


def summarize(report: dict, methods: list[str], out: Path = OUT) -> None:
    """Medians and spreads per group and method, and per-text speedups over a draw; written into the report."""
    summary = {}
    for group in ("variants", "new"):
        for method in methods:
            runs = [r for r in report["runs"] if r["group"] == group and r["method"] == method]
            if runs:
                summary[f"{group} {method}"] = {
                    "seconds": spread([r["seconds"] for r in runs]), "steps": spread([r["steps"] for r in runs]),
                    "converged": f"{sum(r['converged'] for r in runs)}/{len(runs)}",
                    "float32_accuracy_min": min(r["float32_accuracy"] for r in runs)}
        draw = {r["text_index"]: r["seconds"] for r in report["runs"] if r["group"] == group and r["method"] == "draw"}
        for method in (m for m in METHODS if m != "draw"):
            ratios = [draw[r["text_index"]] / r["seconds"] for r in report["runs"]
                      if r["group"] == group and r["method"] == method and r["text_index"] in draw]
            if ratios:
                summary[f"{group} {method} speedup per text"] = spread(ratios)
    report["summary"] = summary
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
