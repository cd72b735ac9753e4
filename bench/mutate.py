"""Mutation testing (mutmut) of the modules whose numbers people read; by hand, not in CI.

    make mutate                      # installs requirements-mutate.txt, then runs this script
    .venv/bin/python bench/mutate.py [--children 2] [--work /tmp/protolab-mutate] [--report-only]

The modules and functions: the metrics (core/engine/reconstruct.py), the noise (core/analyses/noise.py), the
cache's keys and the reading and checking of its files (core/engine/cache.py), the text-set parsers
(core/texts/textsets.py). The cache's write plumbing (atomic writes, umask, stale-file sweeps, the SQLite
listing) is left out: it makes no number and the trust tests cover it.

mutmut 3 does not mutate decorated functions, and the shape-checked ones carry `@checked`
(core/engine/shapes.py), which does nothing unless PROTOTOKENS_CHECK_SHAPES=1. So the script copies the tree
(the files git tracks, plus untracked ones it does not ignore) to --work, deletes the `@checked` lines of the
mutated modules in that copy only, and runs `mutmut run` there, one torch thread per worker. The configuration
(which modules, which tests) is [tool.mutmut] in pyproject.toml.

Writes bench/results/mutmut.json and bench/results/mutmut.md: per module, mutants killed, survived, timed out,
without a test; the kill rate; every survivor with its diff, and, where a rule of bench/mutmut_harmless.json
(a kind of change judged by hand not to alter a result here, matched on the diff's lines) covers it, the rule.
--rerun-survivors, after adding tests: copies tests/ into --work again and reruns the last run's survivors only.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code  # mutmut's own reading of a mutant's exit code

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HARMLESS = ROOT / "bench" / "mutmut_harmless.json"

# mutmut's mangled names: module.x_function or module.xǁClassǁmethod, then __mutmut_N.
SCOPE = [
    "core.engine.reconstruct.*",
    "core.analyses.noise.*",
    "core.texts.textsets.*",
    "core.engine.cache.x_cache_key__mutmut_*",
    "core.engine.cache.x_entry_key__mutmut_*",
    "core.engine.cache.x_check_key__mutmut_*",
    "core.engine.cache.x_is_valid_key__mutmut_*",
    "core.engine.cache.x_check_meta__mutmut_*",
    "core.engine.cache.x_check_vectors__mutmut_*",
    "core.engine.cache.x__number__mutmut_*",
    "core.engine.cache.xǁEntryListingǁfrom_meta__mutmut_*",
    "core.engine.cache.xǁProtoCacheǁ_parse_meta__mutmut_*",
    "core.engine.cache.xǁProtoCacheǁget__mutmut_*",
]
CHECKED_LINE = re.compile(r"^\s*@checked\s*$")
# The statuses a rerun after new tests can still change (what the report lists with diffs, "no tests" too).
RERUN = ("survived", "timeout", "suspicious")
LISTED = (*RERUN, "no tests")


def mutated_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def copy_tree(work: Path) -> None:
    """The files git knows of (tracked, or untracked and not ignored) into a fresh `work`; cache/ and data/
    are copied as git lists them, so nothing a user fitted is read."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def strip_checked(work: Path, modules: list[str]) -> int:
    removed = 0
    for module in modules:
        path = work / module
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not CHECKED_LINE.match(line)]
        removed += len(lines) - len(kept)
        path.write_text("".join(kept))
    return removed


def run_mutmut(work: Path, children: int, scope: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error")
    env.pop("PROTOTOKENS_CHECK_SHAPES", None)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *scope], cwd=work,
                   env=env, check=False)
    return time.perf_counter() - start


def exit_codes(work: Path, scope: list[str]) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in scope):
                codes[name] = code
    return codes


def diff_of(work: Path, name: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True,
                           text=True, check=False).stdout
    lines = shown.splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


def module_of(name: str) -> str:
    return name.split(".x", 1)[0] if ".x" in name else name.rsplit(".", 1)[0]


def harmless_rule(diff: str, rules: list[dict]) -> dict | None:
    """The first rule of bench/mutmut_harmless.json that covers this diff, if any."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    for rule in rules:
        if not any(re.search(rule["removed"], line) for line in removed):
            continue
        if "added" in rule and any(re.search(rule["added"], line) for line in added):
            return rule
        if "added_lacks" in rule and not any(re.search(rule["added_lacks"], line) for line in added):
            return rule
    return None


def report(codes: dict[str, int | None], diffs: dict[str, str], rules: list[dict]) -> dict:
    modules: dict[str, Counter] = {}
    survivors = []
    for name, code in codes.items():
        status = status_by_exit_code[code]
        counts = modules.setdefault(module_of(name), Counter())
        counts[status] += 1
        counts["total"] += 1
        if status in LISTED:
            diff = diffs.get(name, "")
            rule = harmless_rule(diff, rules) if status == "survived" else None
            if rule:
                counts["harmless"] += 1
            survivors.append({"mutant": name, "status": status, "diff": diff,
                              "harmless": f"{rule['rule']}: {rule['reason']}" if rule else None})
    table = {module: _row(counts) for module, counts in sorted(modules.items())}
    table["all"] = _row(sum(modules.values(), Counter()))
    return {"modules": table, "survivors": survivors}


def _row(counts: Counter) -> dict:
    """One line of the table: the counts, and the kill rates over the mutants that were checked."""
    checked = counts["total"] - counts["not checked"] - counts["skipped"]

    def rate(found: int) -> float | None:
        return round(found / checked, 4) if checked else None

    return {**{k: counts[k] for k in ("total", "killed", "survived", "harmless", "timeout", "no tests", "suspicious",
                                      "not checked")},
            "kill_rate": rate(counts["killed"]), "kill_rate_with_harmless": rate(counts["killed"] + counts["harmless"])}


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# Mutation testing (mutmut)", "",
             f"{result['when']}, mutmut {result['mutmut']}, {result['children']} workers, "
             f"{result['seconds'] / 60:.0f} min. Generated by bench/mutate.py; do not edit.", "",
             "| module | mutants | killed | survived | of which reviewed harmless | timeout | no tests | kill rate |"
             " with harmless |", "|---|---|---|---|---|---|---|---|---|"]
    for module, row in result["modules"].items():
        rate = "-" if row["kill_rate"] is None else f"{row['kill_rate']:.1%}"
        rate_h = "-" if row["kill_rate_with_harmless"] is None else f"{row['kill_rate_with_harmless']:.1%}"
        lines.append(f"| {module} | {row['total']} | {row['killed']} | {row['survived']} | {row['harmless']} | "
                     f"{row['timeout']} | {row['no tests']} | {rate} | {rate_h} |")
    lines += ["", "## Survivors", ""]
    for survivor in result["survivors"]:
        note = f"harmless, {survivor['harmless']}" if survivor["harmless"] else "not judged harmless"
        lines += [f"### {survivor['mutant']} ({survivor['status']}; {note})", "", "```diff", survivor["diff"],
                  "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/protolab-mutate"))
    parser.add_argument("--out", type=Path, default=RESULTS / "mutmut.json")
    parser.add_argument("--report-only", action="store_true",
                        help="re-read the results of the last run in --work (after editing the harmless list)")
    parser.add_argument("--only", nargs="*", help="mutant name patterns instead of the whole scope")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="copy tests/ into --work again and run only the last run's survivors (after adding tests)")
    args = parser.parse_args()
    scope = (None if args.rerun_survivors else args.only) or SCOPE
    seconds = 0.0
    if args.rerun_survivors:
        previous = json.loads(args.out.read_text()).get("seconds", 0.0) if args.out.exists() else 0.0
        names = [name for name, code in exit_codes(args.work, SCOPE).items() if status_by_exit_code[code] in RERUN]
        if args.only:
            names = [name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in args.only)]
        shutil.rmtree(args.work / "tests")
        shutil.copytree(ROOT / "tests", args.work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        print(f"rerunning {len(names)} survivors with the tests of {ROOT}", flush=True)
        seconds = previous + run_mutmut(args.work, args.children, names)
    elif not args.report_only:
        copy_tree(args.work)
        removed = strip_checked(args.work, mutated_modules())
        print(f"copied the tree to {args.work}; removed {removed} @checked lines there", flush=True)
        seconds = run_mutmut(args.work, args.children, scope)
    elif args.out.exists():
        seconds = json.loads(args.out.read_text()).get("seconds", 0.0)
    codes = exit_codes(args.work, SCOPE)
    if not codes:
        sys.exit(f"no mutmut results in {args.work}/mutants")
    diffs = {name: diff_of(args.work, name) for name, code in codes.items() if status_by_exit_code[code] in LISTED}
    rules = json.loads(HARMLESS.read_text())["rules"] if HARMLESS.exists() else []
    from importlib.metadata import version
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "mutmut": version("mutmut"), "children": args.children,
              "seconds": round(seconds, 1), "machine": platform.processor() or platform.machine(),
              "threads_per_worker": 1, "scope": SCOPE, **report(codes, diffs, rules)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    write_markdown(result, args.out.with_suffix(".md"))
    for module, row in result["modules"].items():
        print(f"{module:28s} {row['killed']:4d}/{row['total']:4d} killed  {row['survived']:3d} survived "
              f"({row['harmless']} harmless)  kill rate {row['kill_rate']}")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
