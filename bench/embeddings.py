"""Benchmark: fitting the built-in text sets, and drawing the Embeddings page from the cache.

    .venv/bin/python bench/embeddings.py [--set variants] [--repeats 3]

Fit time: read from data/prefit/manifest.json, where `python -m core prefit` records for every set the
wall time of the runs that fitted it, how many texts that time covers, and the steps they took (the fit
itself takes hours on a shared 2-core CPU, so it is not repeated here).

Draw time: the page run by streamlit's AppTest for one pre-fitted set with the embedded model: the first
run (imports, model load, teacher embeddings from the shipped cache, projections) and warm reruns with
each projection method (every method computed fresh once, then served from st.cache_data), plus the
core computations alone (entries, teacher, assembling, silhouettes, projections). Also the silhouettes
seen per space. Writes bench/results/embeddings.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.analyses import embeddings as emb  # noqa: E402
from core.engine.cache import SHIPPED_ROOT, ProtoCache  # noqa: E402
from core.engine.fit import preset  # noqa: E402
from core.engine.sets import load_manifest, set_entries  # noqa: E402
from core.texts.textsets import builtin_set  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_LABELS = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}


def fit_times() -> dict:
    """Per pre-fitted set: fitting wall time, texts it covers, seconds per text, steps, accuracy."""
    rows = {}
    for name, record in load_manifest().items():
        rows[name] = {
            "texts": len(record.texts), "fitted": record.n_fitted, "converged": record.n_converged,
            "mean_accuracy": record.mean_accuracy, "wall_time_s": record.wall_time_s,
            "texts_timed": record.n_timed,
            "seconds_per_text": round(record.wall_time_s / record.n_timed, 1) if record.n_timed else None,
            "mean_steps": round(record.total_steps / record.n_fitted, 1) if record.n_fitted else None,
            "batch_size": record.batch_size, "config": record.config,
        }
    return rows


def core_timings(set_name: str, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each core step for the set (model loaded; maps computed, not read from a cache)."""
    from core.engine.models import load_model

    lm = load_model()
    cache = ProtoCache(Path(os.environ["PROTOTOKENS_CACHE"]), shipped=SHIPPED_ROOT)
    frame = builtin_set(set_name)
    texts = frame["text"].tolist()
    choice = emb.config_choices(lm, set_name, preset("first-paper"), False)[0]
    steps: dict[str, list[float]] = {}

    def timed(label, fn):
        start = time.perf_counter()
        value = fn()
        steps.setdefault(label, []).append(time.perf_counter() - start)
        return value

    silhouettes = {}
    for _ in range(repeats):
        entries = timed("entries from the cache", lambda: set_entries(lm, texts, choice, cache))
        teacher = timed("teacher embeddings", lambda: emb.teacher_embeddings(texts, cache))
        vectors = timed("assemble", lambda: emb.assemble_set(frame, entries, min_accuracy=0.9, teacher=teacher))
        scores = timed("silhouettes (4 spaces x subsets)", lambda: emb.silhouette_table(vectors))
        for method in ("pca", "tsne", "umap"):
            timed(f"{METHOD_LABELS[method]} of every space",
                  lambda: emb.project_spaces(vectors, vectors.spaces, method=method))
    for row in scores.itertuples():
        silhouettes.setdefault(row.subset, {})[row.space] = None if row.silhouette != row.silhouette else round(
            row.silhouette, 3)
    # The first call pays for imports, numba compilation (UMAP) and, for the teacher, loading and embedding.
    summary = {label: {"first": round(values[0], 3), "again": round(statistics.median(values[1:]), 3)}
               if len(values) > 1 else round(values[0], 3) for label, values in steps.items()}
    summary["points"] = vectors.n
    summary["excluded_below_0.9"] = vectors.n_below
    summary["unfitted"] = vectors.n_unfitted
    return summary, silhouettes


def full_size_timings(n: int, hidden: int, d_teacher: int, repeats: int) -> dict:
    """Median seconds of silhouettes and projections for a set of n texts (random vectors, 12 groups, the
    variants set's kinds): what the page computes for a fully fitted "variants" set."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    kinds = (["original"] + ["semantic"] * 4 + ["lexical"] * 6) * (n // 11 + 1)
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(n)], "group": [f"g{i // 11}" for i in range(n)],
                          "kind": kinds[:n]})
    vectors = emb.SetVectors(table=frame.assign(accuracy=1.0, row=range(n)), e=rng.normal(size=(n, hidden)),
                             m=rng.normal(size=(n, hidden)), teacher=rng.normal(size=(n, d_teacher)),
                             min_accuracy=0.9, n_total=n, n_unfitted=0, n_below=0)
    steps: dict[str, list[float]] = {}
    for _ in range(repeats):
        for label, fn in [("silhouettes (4 spaces x 3 subsets)", lambda: emb.silhouette_table(vectors))] + [
                (f"{METHOD_LABELS[m]} of every space", lambda m=m: emb.project_spaces(vectors, vectors.spaces, m))
                for m in ("pca", "tsne", "umap")]:
            start = time.perf_counter()
            fn()
            steps.setdefault(label, []).append(time.perf_counter() - start)
    return {"points": n, **{label: {"first": round(v[0], 3), "again": round(statistics.median(v[1:]), 3)}
                            if len(v) > 1 else round(v[0], 3) for label, v in steps.items()}}


def _open_set(set_name: str, result: dict, label: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=900)
    at.run()
    at.switch_page("pages/embeddings.py")
    at.run()
    at.selectbox(key="emb_set").set_value(set_name)
    start = time.perf_counter()
    at.run()
    result[label] = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"page failed: {at.exception[0].message}")
    return at


def page_timings(set_name: str) -> dict:
    """Seconds of AppTest runs of the page with an empty user cache (only the shipped pre-fit): the set's first
    draw, a new session after clearing Streamlit's memory caches (maps read back from the disk cache), then
    each projection method (computed, then from memory)."""
    import streamlit as st

    result: dict = {}
    _open_set(set_name, result, f"first draw of {set_name} (nothing but the shipped pre-fit on disk)")
    st.cache_data.clear()
    at = _open_set(set_name, result, f"new session, memory caches cleared (maps and teacher from disk)")
    for label in ("PCA", "UMAP", "t-SNE", "PCA"):
        at.radio(key="emb_method").set_value(label)
        start = time.perf_counter()
        at.run()
        seen = f"rerun with {label}" + (" (cached)" if f"rerun with {label}" in result else "")
        result[seen] = time.perf_counter() - start
        if at.exception:
            raise RuntimeError(f"page failed: {at.exception[0].message}")
    result["charts drawn"] = len(at.get("plotly_chart"))
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="variants", help="pre-fitted set to draw (default: variants)")
    parser.add_argument("--repeats", type=int, default=3, help="core timings: first call, then the median of the rest")
    parser.add_argument("--out", default=str(RESULTS / "embeddings.json"))
    parser.add_argument("--no-page", action="store_true", help="skip the AppTest timing")
    args = parser.parse_args(argv)

    import tempfile

    # The page and the core steps see the shipped pre-fit and an empty user cache, like a fresh install.
    os.environ["PROTOTOKENS_CACHE"] = tempfile.mkdtemp(prefix="bench-embeddings-")
    fits = fit_times()
    page = {} if args.no_page else page_timings(args.set)  # first, while the user cache is still empty
    core, silhouettes = core_timings(args.set, args.repeats)
    full_size = full_size_timings(132, 576, 384, args.repeats)
    import torch

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()},
        "fit_builtin_sets": fits,
        "draw_set": args.set,
        "core_seconds": core,
        "core_seconds_132_points_random": full_size,
        "page_seconds": page,
        "silhouette_cosine_by_group": silhouettes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
