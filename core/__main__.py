"""Command line: ``python -m core fit --text "..." [--model ID] [--preset first-paper|seed-paper|fast] [--json]``.

Also ``python -m core list`` (cached entries), ``python -m core report`` (a self-contained HTML report of an entry
or a set) and ``python -m core prefit`` (regenerate the pre-fitted cache of the built-in text sets). Bad input exits non-zero with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Arguments that name files: on POSIX a file name may be any bytes, which Python hands over as lone surrogates
# (surrogateescape), so these are the only arguments that need not be valid UTF-8.
PATH_ARGUMENTS = ("file", "cache", "output")


class UsageError(ValueError):
    """Bad input on the command line; main() prints it as one line and exits with 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with each error on one line (argparse prints its usage first, then the error)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class WarningsOnce(logging.Handler):
    """The library's warnings on stderr as "warning: ...", each once. The cache logs a warning each time it
    meets a bad file and also keeps them in a list for the UI; Python's last-resort handler printed the log
    records, and `list` printed the list, so every warning showed twice."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def warn(self, message: str) -> None:
        if message not in self.seen:
            self.seen.add(message)
            print(f"warning: {message}", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.warn(record.getMessage())


WARNINGS = WarningsOnce()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's whole message on one line (some spread their sentences over several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _not_utf8(text: str) -> str | None:
    """None for valid text, else where it breaks: the byte a surrogateescape'd argument could not decode."""
    for i, char in enumerate(text):
        if 0xD800 <= ord(char) <= 0xDFFF:
            byte = ord(char) - 0xDC00
            what = f"byte {byte:#04x}" if 0x80 <= byte <= 0xFF else f"character {ascii(char)}"
            return f"{what} at character {i + 1}"
    return None


def check_utf8(args: argparse.Namespace) -> None:
    """A UsageError naming the first argument that is not valid UTF-8 (a terminal in another encoding, or a
    byte typed as $'\\xff'); without this check such a text reached the tokenizer and failed with a TypeError."""
    for name, value in vars(args).items():
        if name in PATH_ARGUMENTS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or (where := _not_utf8(item)) is None:
                continue
            if name == "model" and Path(item).expanduser().exists():
                continue  # a local folder whose name is not UTF-8
            hint = " or put the texts in a UTF-8 file (--file)" if name == "text" else ""
            raise UsageError(f"--{name.replace('_', '-')} is not valid UTF-8 text ({where}); "
                             f"set the terminal to UTF-8{hint}")


def _number_type(kind: type, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False):
    """An argparse type: a finite number of ``kind`` in [low, high] ((low, high] with low_open), with a message
    naming the rule. inf and nan are refused here, before a fit stores a diverged entry."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{ascii(text)} is not {noun}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{ascii(text)} is not a finite number")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            if high is not None:
                rule = f"in ({low:g}, {high:g}]" if low_open else f"between {low:g} and {high:g}"
            else:
                rule = f"> {low:g}" if low_open else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {ascii(text)}")
        return value

    parse.__name__ = name  # argparse names the type in some of its own messages
    return parse


finite_float = _number_type(float, "number")
positive_float = _number_type(float, "positive number", low=0, low_open=True)
fraction = _number_type(float, "fraction", low=0, high=1, low_open=True)
whole_number = _number_type(int, "whole number")
count = _number_type(int, "count", low=0)
positive_count = _number_type(int, "positive count", low=1)


def _read_texts(args) -> tuple[list[str], list[str]]:
    """The texts to fit and where each comes from ("--text 2", "corpus.txt line 7", "corpus.jsonl row 3"), to
    name a text the model cannot fit before any fitting starts."""
    texts = list(args.text or [])
    where = [f"--text {i}" for i in range(1, len(texts) + 1)]
    if args.file:
        from core.texts.textsets import check_size, numbered_lines, parse_text_set

        path = Path(args.file)
        if not path.is_file():
            raise ValueError(f"No such file: {path}")
        check_size(path.stat().st_size, path.name)  # before reading it whole
        if path.suffix.lower() in (".jsonl", ".csv", ".json"):
            rows = parse_text_set(path.read_bytes(), path.name)["text"].tolist()
            texts += rows
            where += [f"{path.name} row {i}" for i in range(1, len(rows) + 1)]
        else:
            for number, line in numbered_lines(path.read_bytes(), path.name):
                texts.append(line)
                where.append(f"{path.name} line {number}")
    if not texts:
        raise ValueError("Nothing to fit: give --text or --file.")
    return texts, where


def _config(args):
    from core.engine.fit import preset

    overrides = {k: v for k, v in {
        "max_steps": args.max_steps, "lr": args.lr, "threshold": args.threshold, "seed": args.seed,
        "init": args.init, "layout": args.layout, "redraw_after": args.redraw_after,
        "redraw_plateau": args.redraw_plateau, "compute": args.compute,
        "start": {"draw": ""}.get(args.start, args.start), "extra_steps": args.extra_steps,
    }.items() if v is not None}
    if args.shared_m:
        overrides["shared_m"] = True
        overrides.setdefault("start", "")  # a shared m is fitted from draws (the fast preset's start is per text)
    return preset(args.preset, **overrides)


def cmd_fit(args) -> int:
    """Fit texts as one worker of a corpus job: alone (``python -m core fit``) or as one of torchrun's workers
    (``torchrun --nproc-per-node K -m core fit --file corpus.jsonl``), each fitting its shard of the texts."""
    from core.engine import corpus

    worker = corpus.worker_from_env()
    texts, where = _read_texts(args)
    config = _config(args)
    if worker.world_size > 1 and config.shared_m:
        raise UsageError("--shared-m fits every text in one coupled batch, which cannot be split across workers: "
                         "run it as one process")
    backend = corpus.start_group(worker)
    finished = False
    try:
        code = _fit_as_worker(args, worker, texts, where, config, backend)
        finished = True
        return code
    finally:
        corpus.end_group(finished)


def _say(worker, message: str, quiet: bool = False) -> None:
    if not quiet:
        prefix = f"[{worker.name}] " if worker.world_size > 1 else ""
        print(prefix + message, file=sys.stderr, flush=True)


def _fit_as_worker(args, worker, texts: list[str], where: list[str], config, backend: str | None) -> int:
    import torch
    from tqdm import tqdm

    from core.engine import corpus
    from core.engine.cache import ProtoCache
    from core.engine.fit import entry_keys
    from core.engine.jobs import FitJob
    from core.engine.models import load_model
    from core.engine.reconstruct import reconstruct

    device = corpus.worker_device(worker, args.device)
    if worker.world_size > 1 and device == "cpu":
        torch.set_num_threads(corpus.worker_threads(worker))  # the workers of a node share its cores
    lm = load_model(args.model, device=device, dtype=args.dtype)
    plan = corpus.plan_corpus(lm, texts, config.layout, where)  # every text checked before any work
    cache = ProtoCache(args.cache)
    cache.check_writable()  # refused before fitting, on every worker
    if worker.is_main:
        if backend == "gloo" and torch.cuda.is_available():
            _say(worker, "NCCL is not available: the workers gather their summaries over gloo")
        if plan.duplicates:
            _say(worker, f"{plan.duplicates} duplicate text{'s' * (plan.duplicates > 1)} in the input: fitted once")
        if worker.world_size > len(plan.texts):
            _say(worker, f"{worker.world_size} workers for {len(plan.texts)} text{'s' * (len(plan.texts) != 1)}: "
                         "some workers have nothing to fit")
    mine = plan.shard(worker)
    if worker.world_size > 1:
        _say(worker, f"{len(mine)} of {len(plan.texts)} texts on {device} ({torch.get_num_threads()} threads)",
             args.quiet)
    started = time.perf_counter()
    job = FitJob(lm, [plan.texts[i] for i in mine], config, cache, refit=args.refit, batch_size=args.batch_size)
    job.start()
    bar = tqdm(total=config.max_steps, desc=worker.name if worker.world_size > 1 else "fitting", unit="step",
               file=sys.stderr, disable=args.quiet or not mine)
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
    for i, outcome in zip(mine, snap.outcomes or []):
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
    summary = corpus.summarize_outcomes(worker, device, snap.outcomes or [], time.perf_counter() - started)
    summaries = corpus.gather_summaries(worker, summary)
    wall = time.perf_counter() - started
    if worker.is_main and (args.file or worker.world_size > 1):  # a corpus: its totals (and its manifest)
        totals = corpus.total_line(summaries, wall)
        if args.file and not config.shared_m:
            keys, _ = entry_keys(lm, plan.targets, config)
            name = args.name or Path(args.file).stem
            corpus.write_corpus_manifest(cache.root, name, lm, config, plan, keys, summaries, wall, args.batch_size)
            totals["set"] = name
        if len(summaries) > 1:
            for s in summaries:
                _say(worker, f"worker {s.rank}: {s.texts} texts ({s.fitted} fitted, {s.cached} cached), "
                             f"{s.converged} converged, {s.steps} steps, {s.texts_per_minute:.1f} texts/min on {s.device}",
                     args.quiet)
        _say(worker, f"total: {totals['texts']} texts ({totals['fitted']} fitted, {totals['cached']} cached), "
                     f"{totals['converged']} converged, {totals['texts_per_minute']:.1f} texts/min over "
                     f"{totals['seconds']:.0f} s" + (f"; listed as set {totals['set']!r} in the cache's manifest"
                                                    if "set" in totals else ""), args.quiet)
        if args.json:
            print(json.dumps({"corpus": totals, "workers": [s.as_dict() for s in summaries]}), flush=True)
    return 130 if interrupted else 0


def cmd_list(args) -> int:
    from core.engine.cache import ProtoCache

    cache = ProtoCache(args.cache)
    for listed in cache.list():
        row = {"key": listed.key, "model": listed.model_name or listed.model, "text": listed.text,
               "accuracy": listed.accuracy, "steps": listed.metrics.get("steps"), "status": listed.metrics.get("status")}
        accuracy = row["accuracy"]
        shown = f"{accuracy:.3f}" if isinstance(accuracy, (int, float)) else "  -  "
        print(json.dumps(row, ensure_ascii=False) if args.json else
              f"{str(row['key'])[:12]}  {shown}  {str(row['status'] or ''):<9}  {str(row['text'])[:60]!r}")
    for warning in cache.warnings:  # those the cache did not log as it met them
        WARNINGS.warn(warning)
    return 0


def cmd_metrics(args) -> int:
    from core.engine.cache import ProtoCache
    from core.engine.fit import complete_metrics
    from core.engine.models import load_model

    cache = ProtoCache(args.cache)
    lm = load_model(args.model)
    changed = complete_metrics(lm, cache)
    print(f"Recorded the missing metrics of {changed} entries of {lm.name} in {cache.root}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from core.engine.cache import ProtoCache
    from core.engine.fit import lookup, preset
    from core.engine.models import load_model
    from core.report import ReportError, entry_report, find_entry, named_set, set_report

    if sum(x is not None for x in (args.entry, args.text, args.set)) != 1:
        raise UsageError("give one of --entry KEY, --text TEXT or --set NAME")
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"{args.output} is a folder; give the report's file name (e.g. report.html)")
    cache = ProtoCache(args.cache)
    lm = load_model(args.model)
    if args.set is not None:
        frame, entries = named_set(lm, args.set, cache)
        page = set_report(lm, args.set, frame, entries, cache, publication=args.publication, count=args.count)
    else:
        if args.entry is not None:
            entry = find_entry(cache, lm, args.entry)
        else:
            entry = lookup(lm, [args.text], preset(args.preset), cache)[0]
            if entry is None:
                raise ReportError(f"This text is not cached with the {args.preset} preset: fit it first "
                                  f"(python -m core fit --preset {args.preset} --text ...).")
        page = entry_report(lm, entry, cache, publication=args.publication, count=args.count)
    output.write_text(page, encoding="utf-8")
    if not args.quiet:
        print(f"Wrote {output} ({output.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _graceful_stop():
    """An Event that the first Ctrl-C or SIGTERM sets (the work ends after its running texts, keeping their best so
    far); a second Ctrl-C aborts."""
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
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_prefit(args) -> int:
    from core.shipped.prefit import EXAMPLES_SET, prefit_builtin

    from core.texts.textsets import PREFIT_SETS

    known = (*PREFIT_SETS, EXAMPLES_SET)
    unknown = [name for name in args.sets or () if name not in known]
    if unknown:
        print(f"error: unknown set {unknown[0]!r}; pre-fitted sets: {', '.join(known)}", file=sys.stderr)
        return 2
    with _graceful_stop() as stop:
        prefit_builtin(quiet=args.quiet, sets=args.sets or known, batch_size=args.batch_size,
                       fit=not args.no_fit, sweep=not args.no_sweep, stop=stop)
    return 0


def cmd_ladder(args) -> int:
    from core.shipped.ladder import ship_capacity_views, ship_ladder

    with _graceful_stop() as stop:
        ship_ladder(max_length=args.max_length, quiet=args.quiet, stop=stop)
        if not stop.is_set():
            ship_capacity_views(quiet=args.quiet)
    return 0


# core.engine.fit.PRESETS and PRESET_ALIASES, written out: the parser does not import torch.
PRESET_CHOICES = ("first-paper", "seed-paper", "fast")


def _preset_name(value: str) -> str:
    return {"paper": "first-paper"}.get(value, value)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m core", description="Fit and inspect proto-tokens.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit e and m for one or many texts (cached)")
    fit.add_argument("--text", action="append", help="a text to fit (repeatable)")
    fit.add_argument("--file", help="texts: .txt (one per line), .jsonl or .csv (column text); listed as a set in the "
                     "cache's manifest afterwards")
    fit.add_argument("--name", help="the set's name in the manifest (default: the file's name without extension)")
    fit.add_argument("--model", help="Hugging Face id or local folder (default: the embedded SmolLM2-135M)")
    fit.add_argument("--preset", default="first-paper", choices=PRESET_CHOICES, type=_preset_name,
                     help="first-paper: Mezentsev & Oseledets 2025 (formerly 'paper'); seed-paper: the seed paper's own "
                     "loop (batches of 8 stop together at 0.9, e scored against BOS); fast: this lab's")
    fit.add_argument("--max-steps", type=positive_count)
    fit.add_argument("--lr", type=positive_float)
    fit.add_argument("--threshold", type=fraction, help="stop at this token accuracy, in (0, 1]")
    fit.add_argument("--seed", type=whole_number)
    fit.add_argument("--init", choices=["normal", "embedding", "token"])  # core.engine.fit.INITS (not imported: torch)
    fit.add_argument("--redraw-after", type=count, help="start a draw still at a uniform guess's loss after this "
                     "many steps over from a new init (0: never; fast preset: 20)")
    fit.add_argument("--redraw-plateau", type=count, help="start a draw still above 0.7 of a uniform guess's loss "
                     "after this many steps over too (0: never; fast preset: 100)")
    fit.add_argument("--layout", choices=["e+m*N", "e+m*(N-1)", "e*N", "e*N/2+m*N/2", "(e,m)*N/2"])
    fit.add_argument("--compute", choices=["bfloat16"], help="run the steps with bf16 weights (faster on a CPU with "
                     "AMX: bench/limits.py); each result is measured, and polished if it falls short, in the "
                     "model's own dtype")
    fit.add_argument("--start", choices=["draw", "nearest", "mean"], help="where each text's fit begins: a random "
                     "draw (paper preset), the vectors of the nearest cached text by teacher embedding (else a draw), "
                     "or the mean of the cached solutions (fast preset; core.engine.start)")
    fit.add_argument("--extra-steps", type=count, help="after a text reaches the threshold, keep optimising it for "
                     "this many more steps (the fit's margin; the Noise page shows its effect)")
    fit.add_argument("--shared-m", action="store_true", help="one m shared by all texts")
    fit.add_argument("--batch-size", type=positive_count, default=8)
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
    met = sub.add_parser("metrics", help="record what entries fitted by an older version lack (e's BOS prediction "
                         "for the seed paper's count, H_LM); nothing is refitted")
    met.add_argument("--model", help="Hugging Face id or local folder (default: the embedded SmolLM2-135M)")
    met.add_argument("--cache", help="cache root (default: $PROTOTOKENS_CACHE or ./cache)")
    met.set_defaults(func=cmd_metrics)
    rep = sub.add_parser("report", help="one self-contained HTML file (opens offline) for an entry or a set")
    rep.add_argument("--entry", help="the entry's key, or its first 8 or more characters (python -m core list)")
    rep.add_argument("--text", help="the entry of this text fitted with --preset")
    rep.add_argument("--set", help="a set the manifest lists: a built-in set, examples, or a corpus (core fit --file)")
    rep.add_argument("--preset", default="fast", choices=PRESET_CHOICES, type=_preset_name,
                     help="with --text (default: fast)")
    rep.add_argument("--model", help="Hugging Face id or local folder (default: the embedded SmolLM2-135M)")
    rep.add_argument("--cache")
    rep.add_argument("--output", "-o", default="report.html", help="the HTML file to write (default: report.html)")
    rep.add_argument("--publication", action="store_true", help="figures in the publication style")
    rep.add_argument("--count", default="text", choices=["text", "bos"],  # core.engine.reconstruct.COUNTS
                     help="count accuracy and the correct prefix over the N text positions (text, this lab's) or over "
                     "N + 1 with e's BOS prediction included (bos, the seed paper's code)")
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(func=cmd_report)
    pre = sub.add_parser("prefit", help="regenerate the shipped pre-fitted cache of the built-in sets")
    pre.add_argument("--sets", nargs="+", metavar="SET", help="only these sets, in this order (default: all)")
    pre.add_argument("--batch-size", type=positive_count, default=8, help="rows per forward pass (a text's restarts count)")
    pre.add_argument("--no-sweep", action="store_true", help="do not run the Regularisers page's default sweep after the sets")
    pre.add_argument("--no-fit", action="store_true",
                     help="fit nothing: record what the folder holds (after a run that was killed) and its views")
    pre.add_argument("--quiet", action="store_true")
    pre.set_defaults(func=cmd_prefit)
    lad = sub.add_parser("ladder", help="fit (or resume) the shipped capacity ladder of the built-in long texts")
    lad.add_argument("--max-length", type=positive_count, default=64, help="the longest prefix, in tokens (default 64)")
    lad.add_argument("--quiet", action="store_true")
    lad.set_defaults(func=cmd_ladder)
    return parser


def _tolerant_streams() -> None:
    """Text that is not valid UTF-8 (a lone surrogate from an argument, a file name or a cache file) is printed
    escaped instead of ending the command in a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture, a pipe wrapper)
            pass


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    args = build_parser().parse_args(argv)
    library_log = logging.getLogger("core")
    propagate = library_log.propagate
    WARNINGS.seen.clear()
    library_log.addHandler(WARNINGS)
    library_log.propagate = False  # printed once by WARNINGS, not again by the last-resort handler
    try:
        check_utf8(args)
        return args.func(args)
    except Exception as exc:  # one clear line for people, not a traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        if os.environ.get("PROTOTOKENS_DEBUG"):
            raise
        return 2
    finally:
        library_log.removeHandler(WARNINGS)
        library_log.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
