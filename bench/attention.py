"""Benchmark: time and peak memory to compute and draw the Attention page for a 128-token entry.

    .venv/bin/python bench/attention.py [--repeats 3] [--fit-seconds 900] [--model NAME]

1. Fits (or reuses) a 128-token text on the embedded model with preset("fast") into bench/results/cache.
   The fit stops at convergence or after --fit-seconds (a cancel keeps the best vectors so far); attention
   is computed on whatever vectors come out, so the accuracy reached is only reported.
2. core: run_attention cold (two eager forward passes, no cache) and from the analysis cache;
   head_map for one layer cold (one eager pass) and for another head of the cached layer.
3. page: pages/attention.py through streamlit's AppTest (the same script a browser runs, minus the
   browser's own drawing): first visit of the entry (compute + figures), a rerun (cached), switching to
   the difference view, and asking for one head's full map. Also the size of the figures' JSON.

Memory, three numbers per phase, because no single one covers everything:
* peak_rss_extra_mb: the process's peak resident set during the phase minus its resident set at the start.
  The peak is the kernel's high-water mark (VmHWM), reset before the phase through /proc/self/clear_refs
  (falls back to sampling /proc/self/statm every 2 ms). The script re-executes itself with
  MALLOC_MMAP_THRESHOLD_=65536 so that glibc serves large blocks (torch's CPU tensors) by mmap and returns
  them on free; otherwise a phase reusing memory freed by an earlier one shows no rise at all.
* tracemalloc_peak_mb: peak of Python-level allocations during the phase (figures, JSON, lists; torch's
  tensors are invisible to it), taken in a separate run because tracing slows everything down;
* maxrss_mb: resource.getrusage's lifetime peak of the process after the phase (model load and fit included).
The machine's load average is recorded around each phase: on a shared machine, times move with it.

Threads: the core phases run in a worker thread, as the page's calls do (Streamlit runs scripts in its own
thread). On a machine whose CPUs are oversubscribed by other jobs, torch's OpenMP pool stalls at every
parallel region while a sibling thread waits for a CPU, and a forward pass can take 10x longer than on an
idle machine; ``--threads 1`` (torch.set_num_threads) gives steadier numbers there.
Writes bench/results/attention.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

MMAP_THRESHOLD = "65536"
if __name__ == "__main__" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
    # glibc reads this only at start-up, hence the re-exec (see the docstring).
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.analyses.attention import run_attention, head_map  # noqa: E402
from core.engine.cache import ProtoCache  # noqa: E402
from core.engine.fit import entry_keys, fit_and_cache, preset  # noqa: E402
from core.engine.models import describe, load_model  # noqa: E402

RESULTS = ROOT / "bench" / "results"
N_TOKENS = 128
# Written for this benchmark; cut to exactly N_TOKENS tokens at run time.
LONG_TEXT = (
    "On the northern edge of the bay stood a lighthouse that nobody had needed for thirty years. The keeper, a "
    "patient woman named Ilse, still climbed its spiral stairs every evening, wound the old clockwork, and lit "
    "the lamp as if the fishing fleet were about to return. Children from the village dared each other to "
    "knock on her door, but when she finally opened it one windy October afternoon she only offered them tea "
    "and a map of the coast drawn by her grandfather. The map showed reefs that had vanished, harbours that "
    "had silted up, and a small island that no modern chart recorded. The children spent the whole winter "
    "arguing about whether the island was real, and in spring they borrowed a rowing boat to find out."
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident set while the block runs: the kernel's high-water mark, or 2 ms sampling without it."""

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self.exact = reset_hwm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if not self.exact:
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.peak = max(self.peak, rss_bytes(), hwm_bytes() if self.exact else 0)
        self.extra_mb = (self.peak - self.start) / 2**20


def in_worker(fn):
    """Run ``fn`` in a fresh thread, as Streamlit runs a page script; re-raise its exception here."""
    failure: list[BaseException] = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def measure(fn, repeats: int) -> dict:
    """Median seconds and the largest RSS rise over ``repeats`` calls, then one traced call for Python's peak."""
    call = lambda: in_worker(fn)  # noqa: E731
    seconds, extras = [], []
    for _ in range(repeats):
        with PeakRSS() as mem:
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        extras.append(mem.extra_mb)
    tracemalloc.start()
    call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds_median": statistics.median(seconds), "seconds": seconds,
            "peak_rss_extra_mb": max(extras), "peak_rss_extra_mb_each": extras,
            "tracemalloc_peak_mb": peak / 2**20, "maxrss_mb": maxrss_mb(), "load_average": os.getloadavg()}


def text_of_n_tokens(lm, text: str, n: int) -> tuple[str, list[int]]:
    ids = lm.encode(text)[:n]
    cut = lm.decode(ids)
    return (cut, ids) if lm.encode(cut) == ids else (text, lm.encode(text))


def fit_entry(lm, text: str, cache: ProtoCache, fit_seconds: float) -> tuple[object, dict]:
    config = preset("fast")
    ids = lm.validate_text(text, config.layout)
    keys, _ = entry_keys(lm, [ids], config)
    entry = cache.get(keys[0])
    if entry is not None:  # reuse even a capped fit: attention does not need convergence
        return entry, {"fitted_now": False}
    cancel = threading.Event()
    timer = threading.Timer(fit_seconds, cancel.set)
    timer.start()
    start = time.perf_counter()
    try:
        [outcome] = fit_and_cache(lm, [text], config, cache, cancel=cancel)
    finally:
        timer.cancel()
    return outcome.entry, {"fitted_now": True, "fit_seconds": time.perf_counter() - start}


def page_runs(entry_key: str, entry_cache: Path, repeats: int) -> dict:
    """The page through AppTest, on a copy of the entry in a fresh cache root (so the first visit is cold)."""
    from streamlit.testing.v1 import AppTest

    def fresh_root() -> Path:
        root = Path(tempfile.mkdtemp(prefix="attention-bench-"))
        for path in (entry_cache / "prototokens").glob(f"{entry_key}.*"):
            (root / "prototokens").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "prototokens" / path.name)
        return root

    def open_app(root: Path, key: str | None) -> "AppTest":
        os.environ["PROTOTOKENS_CACHE"] = str(root)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
        if key:
            at.query_params["entry"] = key
        at.run()
        at.switch_page("pages/attention.py")
        return at

    def check(at) -> None:
        if at.exception:
            raise RuntimeError(f"the page raised: {at.exception[0].message}")

    # Warm-up: imports and the model (st.cache_resource) load once per process, as in a running server.
    warm = Path(tempfile.mkdtemp(prefix="attention-bench-empty-"))
    start = time.perf_counter()
    at = open_app(warm, None)
    at.run()
    check(at)
    out = {"warmup_seconds_incl_model_load": time.perf_counter() - start}

    first, rerun, difference, head_cold, head_switch, extras, sizes = [], [], [], [], [], [], []
    for _ in range(repeats):
        root = fresh_root()
        at = open_app(root, entry_key)
        with PeakRSS() as mem:
            start = time.perf_counter()
            at.run()
            first.append(time.perf_counter() - start)
        check(at)
        if not any("computed in" in c.value for c in at.caption):
            raise RuntimeError("the first visit did not compute the attention (found a cached analysis)")
        extras.append(mem.extra_mb)
        sizes = [len(chart.proto.spec) for chart in at.get("plotly_chart")]
        start = time.perf_counter()
        at.run()
        rerun.append(time.perf_counter() - start)
        if not any("from the cache" in c.value for c in at.caption):
            raise RuntimeError("the rerun did not come from the cache")
        start = time.perf_counter()
        at.radio(key="attention_view").set_value("difference").run()
        difference.append(time.perf_counter() - start)
        check(at)
        start = time.perf_counter()
        at.button(key="attention_map_compute").click().run()
        head_cold.append(time.perf_counter() - start)
        check(at)
        start = time.perf_counter()
        at.number_input(key="attention_map_head").set_value(3).run()
        head_switch.append(time.perf_counter() - start)
        check(at)
        head_sizes = [len(chart.proto.spec) for chart in at.get("plotly_chart")]
        shutil.rmtree(root, ignore_errors=True)
    # Python-level peak of a first visit, traced on its own.
    root = fresh_root()
    at = open_app(root, entry_key)
    tracemalloc.start()
    at.run()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    check(at)
    shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    out.update({
        "first_visit_seconds_median": med(first), "first_visit_seconds": first,
        "rerun_cached_seconds_median": med(rerun), "switch_to_difference_seconds_median": med(difference),
        "head_map_compute_seconds_median": med(head_cold), "head_map_other_head_seconds_median": med(head_switch),
        "first_visit_peak_rss_extra_mb": max(extras), "first_visit_tracemalloc_peak_mb": traced / 2**20,
        "figure_json_bytes": sizes, "figure_json_bytes_with_head_map": head_sizes, "maxrss_mb": maxrss_mb(),
        "load_average": os.getloadavg(),
    })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2-135M)")
    parser.add_argument("--text", default=LONG_TEXT)
    parser.add_argument("--tokens", type=int, default=N_TOKENS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-seconds", type=float, default=900.0, help="cap on the fit before attention")
    parser.add_argument("--cache", default=str(RESULTS / "cache"))
    parser.add_argument("--out", default=str(RESULTS / "attention.json"))
    parser.add_argument("--skip-page", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    cache = ProtoCache(args.cache)
    text, ids = text_of_n_tokens(lm, args.text, args.tokens)
    entry, fit_info = fit_entry(lm, text, cache, args.fit_seconds)
    report: dict = {
        "model": describe(lm), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(), "platform": platform.platform(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "entry": {"key": entry.key, "n_tokens": entry.n_tokens, "layout": entry.layout,
                  "accuracy": entry.metrics.get("accuracy"), "steps": entry.metrics.get("steps"),
                  "status": entry.metrics.get("status"), **fit_info},
        "sizes": {"proto_maps_mb": lm.num_layers * lm.num_heads * (entry.n_tokens + 1) ** 2 * 4 / 2**20,
                  "cached_vectors_kb": lm.num_layers * lm.num_heads * (2 * entry.n_tokens + 1) * 4 / 1024},
    }

    scratch = Path(tempfile.mkdtemp(prefix="attention-bench-core-"))
    report["core_compute_cold"] = measure(lambda: run_attention(lm, entry, None), args.repeats)
    analysis_cache = ProtoCache(scratch / "analyses")
    run_attention(lm, entry, analysis_cache)
    report["core_compute_cached"] = measure(lambda: run_attention(lm, entry, analysis_cache), args.repeats)
    layer = lm.num_layers // 2

    def head_cold():
        head_map(lm, entry, layer, 0, "proto", ProtoCache(tempfile.mkdtemp(dir=scratch)))

    report["core_head_map_cold"] = measure(head_cold, args.repeats)
    head_map(lm, entry, layer, 0, "proto", analysis_cache)
    report["core_head_map_cached_layer"] = measure(
        lambda: head_map(lm, entry, layer, 1, "proto", analysis_cache, compute=False), args.repeats)
    shutil.rmtree(scratch, ignore_errors=True)
    assert lm.model.config._attn_implementation == "sdpa"

    if not args.skip_page:
        report["page"] = page_runs(entry.key, Path(args.cache), args.repeats)
    report["load_average_at_end"] = os.getloadavg()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    e = report["entry"]
    print(f"entry: {e['n_tokens']} tokens, accuracy {e['accuracy']:.3f} after {e['steps']} steps ({e['status']})")
    for name in ("core_compute_cold", "core_compute_cached", "core_head_map_cold", "core_head_map_cached_layer"):
        r = report[name]
        print(f"{name:30s} {r['seconds_median'] * 1000:9.1f} ms  peak RSS +{r['peak_rss_extra_mb']:.0f} MB  "
              f"python peak {r['tracemalloc_peak_mb']:.1f} MB")
    if "page" in report:
        p = report["page"]
        print(f"page first visit (compute + draw) {p['first_visit_seconds_median']:.2f} s, peak RSS "
              f"+{p['first_visit_peak_rss_extra_mb']:.0f} MB, python peak {p['first_visit_tracemalloc_peak_mb']:.1f} MB")
        print(f"page rerun from cache {p['rerun_cached_seconds_median']:.2f} s; difference view "
              f"{p['switch_to_difference_seconds_median']:.2f} s; one head's map {p['head_map_compute_seconds_median']:.2f} s, "
              f"another head of that layer {p['head_map_other_head_seconds_median']:.2f} s")
        print(f"figure JSON {[round(b / 1024) for b in p['figure_json_bytes_with_head_map']]} KiB; "
              f"process max RSS {p['maxrss_mb']:.0f} MB")
    print(f"load average {report['load_average_at_start']} -> {report['load_average_at_end']} on "
          f"{report['cpu_count']} CPUs; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
