"""The dashboard at 10,000 cache entries, side by side in one run (results in bench/results/index.json):

(a) listing: every entry file parsed, as ProtoCache.list did before the index, against the SQLite index
    (core.engine.index): built from nothing, opened by a new process, and a rerun (what every page run pays:
    the sidebar's count and size, one page of the Cached entries table, a search);
(b) the Reconstruct page (Cached entries tab) rerun in Streamlit's AppTest with 10,000 entries of the model;
(c) the Embeddings page on a corpus set of 10,000 entries: the background MapJob (teacher embeddings and PCA
    maps) once, then the page's run once the maps are in the cache: in a new session and a rerun.

Synthetic entries (bench/synthetic.py): real files of the embedded model's identity and width, random vectors.
Usage: python bench/index.py [--entries 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OUT = REPO / "bench" / "results" / "index.json"
SET = "synthetic-10k"


def timed(action, repeat: int = 5) -> dict:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": repeat}


def parse_every_file(root: Path) -> int:
    """The listing before the index: read and check every entry's JSON file."""
    from core.engine.cache import check_meta, read_json

    n = 0
    for path in (root / "prototokens").glob("*.json"):
        check_meta(read_json(path), path.stem)
        n += 1
    return n


def listing(root: Path, model: str) -> dict:
    from core.engine import index as index_mod
    from core.engine.cache import ProtoCache

    def rerun():
        cache = ProtoCache(root, shipped="")  # one object per page run, as ui.state.get_cache makes
        cache.count(model)
        cache.size_bytes()
        cache.page(model, limit=50)

    def search():
        ProtoCache(root, shipped="").page(model, search="river zürich", limit=50)

    def build():
        index_mod._OPEN.clear()
        (root / index_mod.INDEX_FILE).unlink(missing_ok=True)
        ProtoCache(root, shipped="").page(model, limit=50)

    def new_process():
        index_mod._OPEN.clear()
        ProtoCache(root, shipped="").page(model, limit=50)

    result = {"parse every file (before)": timed(lambda: parse_every_file(root), 3),
              "index: built from the files": timed(build, 2),
              "index: opened by a new process": timed(new_process, 3)}
    new_process()
    past = time.time() - 60  # a cache nobody wrote to in the last minute (a fresh write forces a scan)
    os.utime(root / "prototokens", (past, past))
    rerun()
    result["index: a page run (count, size, one page)"] = timed(rerun, 10)
    result["index: a search"] = timed(search, 10)
    return result


def app_run(at, repeat: int = 3) -> dict:
    def run():
        at.run()
        if at.exception:
            raise RuntimeError(at.exception[0].message)
    return timed(run, repeat)


def reconstruct_page(root: Path) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
    at.run()
    at.switch_page("pages/reconstruct.py")
    at.run()
    shown = [c.value for c in at.caption if "Entries 1-50 of" in c.value]
    return {"rerun": app_run(at), "table caption": shown[0] if shown else None}


def embeddings_page(root: Path, n: int) -> dict:
    from streamlit.testing.v1 import AppTest

    def open_set():
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=900)
        at.run()
        at.switch_page("pages/embeddings.py")
        at.run()  # on the set the shipped pre-fit covers: its widgets are there to set
        # all at once, so the corpus's first run is already PCA with every text kept (a run with the defaults
        # would start a t-SNE job of its own)
        at.selectbox(key="emb_set").set_value(SET)
        at.radio(key="emb_method").set_value("PCA")
        at.slider(key="emb_min_acc").set_value(0.0)
        return at

    at = open_set()
    started = time.perf_counter()
    at.run()  # starts the MapJob (a set of up to BACKGROUND_POINTS texts is projected in this run instead)
    job = at.session_state["job::embeddings-maps"] if "job::embeddings-maps" in at.session_state else None
    snap = job.wait(3600) if job is not None else None
    job_seconds = time.perf_counter() - started
    at.run()
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    points = sum(len(t.get("customdata") or []) for c in charts[:1] for t in c["data"])
    kinds = sorted({t["type"] for c in charts[:1] for t in c["data"] if t.get("customdata")})
    fresh = open_set()  # a new session: everything from the cache
    started = time.perf_counter()
    fresh.run()
    first = time.perf_counter() - started
    if "job::embeddings-maps" in fresh.session_state:
        raise RuntimeError("a new session started a map job: the maps were not in the cache")
    return {"background job (teacher + 4 PCA maps)": {"seconds": round(job_seconds, 1),
                                                      "state": snap.state if snap else "no job: a small set",
                                                      "steps": snap.done if snap else 0},
            "new session, maps from the cache": {"seconds": round(first, 2)}, "rerun": app_run(fresh),
            "points drawn": points, "trace types": kinds, "texts": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args(argv)

    from bench.synthetic import write_synthetic_entries
    from core.engine.fit import preset
    from core.engine.models import load_model
    from core.engine.sets import PrefitSet, write_manifest

    lm = load_model()
    report = {"entries": args.entries, "model": lm.name, "cpus": os.cpu_count(), "created": time.time()}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "cache"
        started = time.perf_counter()
        entries = write_synthetic_entries(root, args.entries, hidden=lm.hidden_size, model=lm.identity)
        report["writing the entries"] = {"seconds": round(time.perf_counter() - started, 1)}
        write_manifest(root, PrefitSet(name=SET, model=lm.identity, model_name=lm.name,
                                       config=preset("fast").as_dict(), texts=[e.text for e in entries],
                                       keys=[e.key for e in entries], n_fitted=len(entries)))
        print(f"{args.entries} entries written", file=sys.stderr, flush=True)
        report["listing"] = listing(root, lm.identity)
        OUT.write_text(json.dumps(report, indent=1))
        print(json.dumps(report["listing"], indent=1), file=sys.stderr, flush=True)
        os.environ["PROTOTOKENS_CACHE"] = str(root)
        report["reconstruct page"] = reconstruct_page(root)
        OUT.write_text(json.dumps(report, indent=1))
        print(json.dumps(report["reconstruct page"], indent=1), file=sys.stderr, flush=True)
        report["embeddings page"] = embeddings_page(root, args.entries)
        OUT.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
