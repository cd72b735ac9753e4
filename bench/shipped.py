"""Benchmark: what ships in data/prefit, and the time and size of the shipped demo entry's report.

    .venv/bin/python bench/shipped.py [--out bench/results/shipped.json] [--repeats 3] [--no-report]

The README's figures about the shipped pre-fit come from here: the bytes of the files git ships in data/prefit
(not disk blocks), the entries, and per built-in set what its pre-fit recorded in the manifest (texts, converged,
wall time, rows per pass, preset), beside what `make prefit` does by default; the composition of the variants
sets (paraphrases and lexical variants per source, counted from the set itself); and `python -m core report` on
the demo entry (a new process each time, the model's load included): its wall time (median and minimum) and the
file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.__main__ import build_parser  # noqa: E402
from core.shipped.demo import DEMO_TEXT  # noqa: E402
from core.texts.textsets import builtin_set  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PREFIT = ROOT / "data" / "prefit"


def shipped_files() -> dict:
    listed = subprocess.run(["git", "ls-files", "-z", str(PREFIT.relative_to(ROOT))], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    paths = [ROOT / name for name in listed if name]
    entries = [p for p in paths if p.parent.name == "prototokens" and p.suffix == ".json"]
    by_folder: Counter = Counter()
    for p in paths:
        by_folder[p.relative_to(PREFIT).parts[0]] += p.stat().st_size
    return {"files": len(paths), "bytes": sum(by_folder.values()), "mb": round(sum(by_folder.values()) / 1e6, 2),
            "entries": len(entries), "bytes_by_folder": dict(by_folder)}


def prefit_sets() -> dict:
    manifest = json.loads((PREFIT / "manifest.json").read_text())
    out = {}
    for name, record in manifest["sets"].items():
        out[name] = {key: record[key] for key in ("n_fitted", "n_converged", "mean_accuracy", "wall_time_s",
                                                  "total_steps", "batch_size") if key in record}
        out[name]["texts"] = len(record["texts"])
        out[name]["wall_time_min"] = round(record["wall_time_s"] / 60, 1)
        out[name]["preset"] = record.get("config", {}).get("preset")
    return out


def variants_composition() -> dict:
    out = {}
    for name in ("variants", "variants-small"):
        frame = builtin_set(name)
        per_group = frame.groupby("group")["kind"].value_counts().unstack(fill_value=0)
        out[name] = {"texts": int(len(frame)), "sources": int(len(per_group)),
                     **{f"{kind}_per_source": sorted({int(v) for v in per_group[kind]}) for kind in per_group.columns}}
    return out


def report_timing(repeats: int) -> dict:
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "report.html"
        for _ in range(repeats):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "core", "report", "--text", DEMO_TEXT, "--preset", "fast",
                                   "-o", str(target)], cwd=ROOT, capture_output=True, text=True)
            seconds.append(round(time.perf_counter() - start, 2))
            if done.returncode != 0:
                raise SystemExit(f"core report failed: {done.stderr.strip().splitlines()[-1:]}")
        size = target.stat().st_size
    return {"how": "python -m core report --text DEMO_TEXT --preset fast, a new process each time",
            "seconds": seconds, "median_s": statistics.median(seconds), "min_s": min(seconds),
            "bytes": size, "mb": round(size / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "shipped.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    default_rows = build_parser().parse_args(["prefit"]).batch_size  # what `make prefit` runs
    result = {"benchmark": "shipped", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))},
              "shipped_files": shipped_files(), "prefit_sets": prefit_sets(),
              "make_prefit_rows_per_pass": default_rows, "variants_composition": variants_composition()}
    if not args.no_report:
        result["report"] = report_timing(args.repeats)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
