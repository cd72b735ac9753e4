"""Wall time to token accuracy >= 0.99 on the embedded model, on this machine's CPU.

(a) a plain loop written straight from the paper, like the authors' scripts: batch 1, eager attention,
    [e, m x N] with e's output unscored, AdamW(0.01, (0.9, 0.9), 0.01), e, m ~ N(0, 1);
(b) core.engine.fit with the paper preset (the same recipe through the library: sdpa attention);
(c) core.engine.fit with the fast preset from a random draw (the fast preset before it had a learned start);
(d) core.engine.fit with the fast preset from its learned start (FitConfig.start="mean": the mean of the shipped
    pre-fit's solutions, core.engine.start.mean_start), so the whole ladder is in one table.
Then texts per minute for 8 texts fitted in one batch of 8 rows vs one by one with one row per pass
(core.engine.fit, the same fast config with a step cap per draw and up to --batch-restarts draws per text), once
per seed (--batch-seeds), and what a pass of 1 and of 8 rows costs.

Methods run interleaved per (text, seed), so a busy machine slows them alike. Writes
bench/results/fit_speed.json (or --out) after every run. Usage: python bench/fit_speed.py [--seeds 3] [--cap 800]
[--batch-max-steps 150] [--runs-from RUNS.jsonl (reuse (a)/(b)/(c) runs printed by an earlier, stopped run)
[--rerun c_core_fast (run only these methods again, e.g. after the fast preset changed)]]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.cost import cpu_name  # noqa: E402
from core.engine.fit import fit_texts, preset  # noqa: E402
from core.engine.models import load_model  # noqa: E402
from core.engine.start import learned_starts  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Rain fell softly on the old stone bridge while the town slept under a grey sky.",
    "After the storm had passed, the fishermen mended their torn nets on the pier and counted the boats that "
    "were still missing from the harbour.",
]
BATCH_TEXTS = [  # short, so the one-by-one baseline finishes in minutes
    "Bread rises when yeast eats sugar and breathes out gas.",
    "The museum opens at nine and closes at five on weekdays.",
    "Owls can turn their heads almost all the way around.",
    "She planted tomatoes along the fence in early May.",
    "The train to the coast was late because of snow.",
    "Water boils at a lower temperature on a high mountain.",
    "He tuned the old guitar before the evening concert.",
    "Comets grow bright tails as they approach the sun.",
]


def paper_loop(lm, text: str, seed: int, cap: int) -> dict:
    """The authors' recipe as a plain loop (no library code): batch 1, eager attention."""
    ids = torch.tensor(lm.encode(text))
    n, hidden = len(ids), lm.hidden_size
    torch.manual_seed(seed)
    e = torch.randn(1, 1, hidden, requires_grad=True)
    m = torch.randn(1, 1, hidden, requires_grad=True)
    optimizer = torch.optim.AdamW([e, m], lr=0.01, betas=(0.9, 0.9), weight_decay=0.01)
    t0 = time.perf_counter()
    with lm.eager_attention() as model:
        for step in range(cap + 1):
            inputs = torch.cat([e, m.expand(1, n, hidden)], dim=1)
            logits = model(inputs_embeds=inputs).logits[0, 1:]
            loss = F.cross_entropy(logits, ids)
            accuracy = float((logits.argmax(-1) == ids).float().mean())
            if accuracy >= 0.99:
                return {"steps": step, "seconds": time.perf_counter() - t0, "converged": True}
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {"steps": cap, "seconds": time.perf_counter() - t0, "converged": False}


def library_fit(lm, text: str, config, cache: ProtoCache | None = None) -> dict:
    """One text through core.engine.fit; with a cache, from the start config.start names (found in the cache, timed
    with the fit) instead of a draw."""
    t0 = time.perf_counter()
    starts = None
    if cache is not None and config.start:
        starts = [None if s is None else (s.e, s.m)
                  for s in learned_starts(cache, lm.identity, lm.hidden_size, [text], config.start, config.layout)]
    [r] = fit_texts(lm, [text], config, starts=starts)
    return {"steps": r.steps, "seconds": time.perf_counter() - t0, "converged": r.converged}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


METHODS = ("a_paper_loop", "b_core_paper", "c_core_fast", "d_fast_start")


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for method in METHODS:
        rows = [r for r in runs if r["method"] == method]
        if rows:
            summary[method] = {"seconds": spread([r["seconds"] for r in rows]),
                               "steps": spread([r["steps"] for r in rows]),
                               "converged": f"{sum(r['converged'] for r in rows)}/{len(rows)}"}
    if "a_paper_loop" in summary and "c_core_fast" in summary:
        a, c = summary["a_paper_loop"]["seconds"]["median"], summary["c_core_fast"]["seconds"]["median"]
        summary["fast_speedup_vs_paper_loop_median"] = a / c
        pairs = {(r["n_tokens"], r["seed"]): r for r in runs if r["method"] == "a_paper_loop"}
        ratios = [pairs[(r["n_tokens"], r["seed"])]["seconds"] / r["seconds"] for r in runs
                  if r["method"] == "c_core_fast" and (r["n_tokens"], r["seed"]) in pairs]
        summary["fast_speedup_per_run"] = spread(ratios)
        summary["note"] = "a run of (a) or (b) that did not converge counts with its capped time: a lower bound"
    if "a_paper_loop" in summary and "d_fast_start" in summary:
        summary["start_speedup_vs_paper_loop_median"] = (summary["a_paper_loop"]["seconds"]["median"]
                                                         / summary["d_fast_start"]["seconds"]["median"])
    if "c_core_fast" in summary and "d_fast_start" in summary:
        pairs = {(r["n_tokens"], r["seed"]): r for r in runs if r["method"] == "c_core_fast"}
        summary["start_speedup_vs_fast_draw_per_run"] = spread(
            [pairs[(r["n_tokens"], r["seed"])]["seconds"] / r["seconds"] for r in runs
             if r["method"] == "d_fast_start" and (r["n_tokens"], r["seed"]) in pairs])
    return summary


def pass_seconds(lm, rows: int, steps: int = 10) -> float:
    """Seconds per optimisation step of `rows` rows of one batching text (the fast preset, no stopping)."""
    config = preset("fast", max_steps=steps, redraw_after=0, redraw_plateau=0)
    fit_texts(lm, [BATCH_TEXTS[0]] * rows, replace(config, max_steps=1), batch_size=rows)  # warm up
    t0 = time.perf_counter()
    fit_texts(lm, [BATCH_TEXTS[0]] * rows, config, batch_size=rows)
    return (time.perf_counter() - t0) / steps


def batching_run(lm, config) -> dict:
    """8 texts one by one (one row per forward pass), then in one batch of 8 rows, the same config and inits."""
    t0 = time.perf_counter()
    one_by_one = [fit_texts(lm, [t], config, batch_size=1)[0] for t in BATCH_TEXTS]
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = fit_texts(lm, BATCH_TEXTS, config, batch_size=len(BATCH_TEXTS))
    t_batch = time.perf_counter() - t0
    return {
        "seed": config.seed, "one_by_one_seconds": t_single, "batched_seconds": t_batch,
        "one_by_one_texts_per_minute": 60 * len(BATCH_TEXTS) / t_single,
        "batched_texts_per_minute": 60 * len(BATCH_TEXTS) / t_batch,
        "speedup": t_single / t_batch,
        "one_by_one_steps": [r.steps for r in one_by_one], "batched_steps": [r.steps for r in batched],
        "converged": f"{sum(r.converged for r in batched)}/{len(batched)} batched, "
                     f"{sum(r.converged for r in one_by_one)}/{len(one_by_one)} one by one",
    }


def batching(lm, max_steps: int, restarts: int, seeds: int) -> dict:
    """The fast preset with up to `restarts` draws per text, each stopping at 0.99 or max_steps, once per seed.
    One by one, a further draw only runs after one that failed; in the batch, further draws take the rows that
    converged texts free, so the batch stays full while its slow texts finish."""
    runs = []
    for seed in range(seeds):
        runs.append(batching_run(lm, preset("fast", max_steps=max_steps, restarts=restarts, seed=seed)))
        print(json.dumps(runs[-1]), flush=True)
    # What one pass costs: the batch's speedup cannot exceed rows x (1-row pass) / (n-row pass), reached only
    # if every text needed the same number of steps.
    one_row, all_rows = pass_seconds(lm, 1), pass_seconds(lm, len(BATCH_TEXTS))
    return {
        "texts": len(BATCH_TEXTS), "max_steps": max_steps, "restarts": restarts, "rows_per_pass": [1, len(BATCH_TEXTS)],
        "speedup": spread([r["speedup"] for r in runs]),
        "one_by_one_texts_per_minute": spread([r["one_by_one_texts_per_minute"] for r in runs]),
        "batched_texts_per_minute": spread([r["batched_texts_per_minute"] for r in runs]),
        "pass_seconds": {"1_row": one_row, f"{len(BATCH_TEXTS)}_rows": all_rows},
        "speedup_ceiling": len(BATCH_TEXTS) * one_row / all_rows,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=len(TEXTS))
    parser.add_argument("--cap", type=int, default=800, help="step cap for (a) and (b)")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--batch-max-steps", type=int, default=150,
                        help="step cap per draw in the batching comparison (the same in both modes)")
    parser.add_argument("--batch-restarts", type=int, default=4, help="draws per text at most in the batching comparison")
    parser.add_argument("--batch-seeds", type=int, default=2, help="batching comparisons, one per seed")
    parser.add_argument("--runs-from", help="a JSON-lines file of (a)/(b)/(c) runs printed earlier: skip them")
    parser.add_argument("--rerun", nargs="*", default=[], choices=METHODS,
                        help="with --runs-from: run these methods again (e.g. c_core_fast after the preset changed)")
    parser.add_argument("--out", default="fit_speed.json", help="file name under bench/results")
    parser.add_argument("--first-text", type=int, default=0,
                        help="start at this text (with --merge: add a stopped run's remaining texts to its file)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs already in the --out file and add these (same machine and settings)")
    args = parser.parse_args()
    lm = load_model()
    # (d) finds its start in the shipped pre-fit, under an empty root (no user entry changes the mean)
    cache = ProtoCache(tempfile.mkdtemp(prefix="fit_speed-"), shipped=SHIPPED_ROOT)
    path = Path(__file__).resolve().parent / "results" / args.out
    out = {"model": lm.identity, "device": str(lm.device), "torch_threads": torch.get_num_threads(),
           "cpu": cpu_name(), "cap": args.cap, "runs": []}

    def write() -> None:
        out["summary"] = summarize(out["runs"])
        path.write_text(json.dumps(out, indent=1))

    if args.merge and path.exists():
        earlier = json.loads(path.read_text())
        assert earlier.get("cpu") == out["cpu"] and earlier.get("cap") == args.cap, "another machine or cap"
        out["runs"] = earlier["runs"]
        out["notes"] = earlier.get("notes", "")
    rerun = set(args.rerun) if args.runs_from else set(METHODS)
    if args.runs_from:
        out["runs"] = [row for line in Path(args.runs_from).read_text().splitlines() if line.strip()
                       if (row := json.loads(line))["method"] not in rerun]
        out["reused_runs_from"] = args.runs_from
    if rerun:
        for text in TEXTS[args.first_text: args.texts]:
            n_tokens = len(lm.encode(text))
            for seed in range(args.seeds):
                for method, run in (
                    ("a_paper_loop", lambda: paper_loop(lm, text, seed, args.cap)),
                    ("b_core_paper", lambda: library_fit(lm, text, preset("first-paper", seed=seed, max_steps=args.cap))),
                    ("c_core_fast", lambda: library_fit(lm, text, preset("fast", seed=seed, start=""))),
                    ("d_fast_start", lambda: library_fit(lm, text, preset("fast", seed=seed), cache)),
                ):
                    if method not in rerun:
                        continue
                    row = {"method": method, "n_tokens": n_tokens, "seed": seed, **run()}
                    out["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    write()
    write()
    if not args.skip_batch:
        out["batching"] = batching(lm, args.batch_max_steps, args.batch_restarts, args.batch_seeds)
        write()
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
