"""Command line: ``python -m core fit --text "..." [--model ID] [--preset paper|fast] [--json]``.

Also ``python -m core list`` (cached entries) and ``python -m core prefit`` (regenerate the pre-fitted
cache of the built-in text sets). Bad input exits non-zero with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _read_texts(args) -> list[str]:
    texts = list(args.text or [])
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise ValueError(f"No such file: {path}")
        if path.suffix.lower() in (".jsonl", ".csv", ".json"):
            from core.textsets import parse_text_set

            texts += parse_text_set(path.read_bytes(), path.name)["text"].tolist()
        else:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError("Nothing to fit: give --text or --file.")
    return texts


def _config(args):
    from core.fit import preset

    overrides = {k: v for k, v in {
        "max_steps": args.max_steps, "lr": args.lr, "threshold": args.threshold, "seed": args.seed,
        "init": args.init, "layout": args.layout, "redraw_after": args.redraw_after,
        "redraw_plateau": args.redraw_plateau,
    }.items() if v is not None}
    if args.shared_m:
        overrides["shared_m"] = True
    return preset(args.preset, **overrides)


def cmd_fit(args) -> int:
    from tqdm import tqdm

    from core.cache import ProtoCache
    from core.jobs import FitJob
    from core.models import load_model
    from core.reconstruct import reconstruct

    texts = _read_texts(args)
    config = _config(args)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    for text in texts:  # fail before any work on a bad text
        lm.validate_text(text, config.layout)
    cache = ProtoCache(args.cache)
    job = FitJob(lm, texts, config, cache, refit=args.refit, batch_size=args.batch_size).start()
    bar = tqdm(total=config.max_steps, desc="fitting", unit="step", file=sys.stderr, disable=args.quiet)
    interrupted = False
    try:
        while True:
            snap = job.wait(0.5)
            bar.n = min(snap.step, config.max_steps)
            best = [p.best_accuracy for p in snap.progress]
            bar.set_postfix(acc=f"{min(best):.3f}" if best else "-", refresh=False)
            bar.refresh()
            if snap.finished:
                break
    except KeyboardInterrupt:
        interrupted = True
        job.cancel()
        snap = job.wait()
    bar.close()
    if snap.state == "failed":
        raise RuntimeError(snap.error)
    for i, outcome in enumerate(snap.outcomes or []):
        if outcome is None:
            continue
        entry = outcome.entry
        rec = reconstruct(lm, entry.e, entry.m, entry.token_ids, entry.layout)
        row = {
            "key": entry.key, "n_tokens": entry.n_tokens, "accuracy": rec.metrics.accuracy,
            "steps": entry.metrics.get("steps"), "converged": bool(entry.metrics.get("converged")),
            "cached": outcome.cached, "reconstruction": rec.text,
        }
        if args.json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            origin = "cached" if outcome.cached else entry.metrics.get("status", "")
            print(f"[{i}] {origin}: accuracy {row['accuracy']:.3f} after {row['steps']} steps "
                  f"({row['n_tokens']} tokens) key {entry.key[:12]}\n    {rec.text!r}")
    return 130 if interrupted else 0


def cmd_list(args) -> int:
    from core.cache import ProtoCache

    cache = ProtoCache(args.cache)
    for meta in cache.list():
        metrics = meta.get("metrics", {})
        row = {"key": meta["key"], "model": meta.get("model_name") or meta.get("model"), "text": meta.get("text"),
               "accuracy": metrics.get("accuracy"), "steps": metrics.get("steps"), "status": metrics.get("status")}
        print(json.dumps(row, ensure_ascii=False) if args.json else
              f"{row['key'][:12]}  {row['accuracy']:.3f}  {row['status']:<9}  {row['text'][:60]!r}")
    for warning in cache.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_prefit(args) -> int:
    from core.prefit import prefit_builtin

    from core.textsets import PREFIT_SETS

    unknown = [name for name in args.sets or () if name not in PREFIT_SETS]
    if unknown:
        print(f"error: unknown set {unknown[0]!r}; pre-fitted sets: {', '.join(PREFIT_SETS)}", file=sys.stderr)
        return 2
    import signal
    import threading

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if not stop.is_set():
            print("Stopping after the running texts (their best so far is kept); press Ctrl-C again to abort.",
                  file=sys.stderr, flush=True)
            stop.set()
        else:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        prefit_builtin(quiet=args.quiet, sets=args.sets or PREFIT_SETS, batch_size=args.batch_size,
                       fit=not args.no_fit, sweep=not args.no_sweep, stop=stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Fit and inspect proto-tokens.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit e and m for one or many texts (cached)")
    fit.add_argument("--text", action="append", help="a text to fit (repeatable)")
    fit.add_argument("--file", help="texts: .txt (one per line), .jsonl or .csv (column text)")
    fit.add_argument("--model", help="Hugging Face id or local folder (default: the embedded SmolLM2-135M)")
    fit.add_argument("--preset", default="paper", choices=["paper", "fast"])
    fit.add_argument("--max-steps", type=int)
    fit.add_argument("--lr", type=float)
    fit.add_argument("--threshold", type=float)
    fit.add_argument("--seed", type=int)
    fit.add_argument("--init", choices=["normal", "embedding", "token"])  # core.fit.INITS (not imported: torch)
    fit.add_argument("--redraw-after", type=int, help="start a draw still at a uniform guess's loss after this "
                     "many steps over from a new init (0: never; fast preset: 20)")
    fit.add_argument("--redraw-plateau", type=int, help="start a draw still above 0.7 of a uniform guess's loss "
                     "after this many steps over too (0: never; fast preset: 100)")
    fit.add_argument("--layout", choices=["e+m*N", "e+m*(N-1)"])
    fit.add_argument("--shared-m", action="store_true", help="one m shared by all texts")
    fit.add_argument("--batch-size", type=int, default=8)
    fit.add_argument("--device", default="auto")
    fit.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    fit.add_argument("--cache", help="cache root (default: $PROTOTOKENS_CACHE or ./cache)")
    fit.add_argument("--refit", action="store_true", help="ignore cached entries")
    fit.add_argument("--json", action="store_true", help="one JSON object per text on stdout")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(func=cmd_fit)
    lst = sub.add_parser("list", help="list cached entries")
    lst.add_argument("--cache")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    pre = sub.add_parser("prefit", help="regenerate the shipped pre-fitted cache of the built-in sets")
    pre.add_argument("--sets", nargs="+", metavar="SET", help="only these sets, in this order (default: all)")
    pre.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (a text's restarts count)")
    pre.add_argument("--no-sweep", action="store_true", help="do not run the Regularisers page's default sweep after the sets")
    pre.add_argument("--no-fit", action="store_true",
                     help="fit nothing: record what the folder holds (after a run that was killed) and its views")
    pre.add_argument("--quiet", action="store_true")
    pre.set_defaults(func=cmd_prefit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # one clear line for people, not a traceback
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        if os.environ.get("PROTOTOKENS_DEBUG"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
