"""Embeddings: what do e and m encode? 2-D maps, silhouettes and neighbours of a text set's proto-tokens."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.analyses import embeddings as emb
from core.analyses.projection import METRICS, SILHOUETTE_SAMPLE
from core.engine.reconstruct import count_note
from core.engine.sets import (corpus_sets, load_manifest, most_prefitted, prefit_status, set_entries, set_frame,
                              validate_set)
from core.texts.textsets import BUILTIN_SETS, TextSetError, builtin_set
from ui import jobs
from ui.state import fit_config, get_cache, get_model, metric_count, require_app_shell
from core.figures import hover_text, plotly_text
from core.report import set_report
from ui.widgets import URL, choose_text_set, download_csv, download_figure, download_report, plain, show_error

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

JOB = "embeddings-set"
MAPS_JOB = "embeddings-maps"
METHODS = {"t-SNE": "tsne", "PCA": "pca", "UMAP": "umap"}
KIND_SYMBOLS = {"original": "star", "lexical": "x", "semantic": "circle", "syntax": "diamond"}
PALETTE = [  # 20 distinguishable colours (plotly's Dark24 without the near-greys)
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042",
    "#1616A7", "#DA60CA",
]
SPACE_COLOURS = {"e": "#1f77b4", "m": "#d62728", emb.CONCAT: "#9467bd", "teacher": "#7f7f7f"}


st.title("Embeddings")
st.caption(
    "What do e and m encode? Every text of a set gets its own e and m, fitted so the frozen model rebuilds it "
    "in one pass. If texts that *mean* the same get nearby vectors, the vectors carry meaning; if only texts "
    "that are *spelled* alike do, they carry the surface. The built-in **variants** set has source texts with "
    "hand-written paraphrases (same meaning, other words) and lexical variants (typos); **syntax** has "
    "grammar-made sentences of seven sentence types. Compare how each group clusters in e, m, both, and in a "
    "sentence-embedding model (the *teacher*, a semantic reference). Silhouette: 1 = groups cleanly "
    "separated, 0 = no group structure. The seed paper found m more semantic than e."
)

lm = get_model()
sidebar_config = fit_config()
cache = get_cache()
if lm is None or sidebar_config is None:
    st.stop()


@st.cache_data(show_spinner=False)
def _builtin(name: str) -> pd.DataFrame:
    return builtin_set(name)


# ---- the set -----------------------------------------------------------------------------------------
# Read once per run: the set labels and the config choices both use them. Corpora fitted with
# `python -m core fit --file` are listed in the user cache's own manifest and open like the built-in sets.
corpora = corpus_sets(cache.root, lm.identity, exclude=BUILTIN_SETS)
manifest = {**load_manifest(), **corpora}
shipped = {name: prefit_status(record, lm.identity) for name, record in manifest.items()}
names = list(BUILTIN_SETS) + list(corpora)


def _set_label(name: str) -> str:
    if name in corpora:
        return f"{name}: a corpus fitted with core fit ({len(corpora[name].texts):,} texts, {shipped[name][1]})"
    return f"{name}: {BUILTIN_SETS[name]}" + (f" ({shipped[name][1]})" if shipped.get(name, (0, ""))[1] else "")


set_name, frame = choose_text_set(
    "emb", names, lambda name: set_frame(corpora[name]) if name in corpora else _builtin(name),
    default=most_prefitted(list(BUILTIN_SETS), manifest, lm.identity), format_func=_set_label)

c_shared, c_choice = st.columns([1, 3])
shared_m = c_shared.checkbox(
    "Shared m", key="emb_shared_m",
    help="Fit one m for the whole set (one coupled batch) and an e per text: then only e differs between texts.")
@st.cache_data(show_spinner=False, max_entries=8)
def _validated(model: str, texts_id: str, layout: str, _texts: list[str]) -> str | None:
    """validate_set's message for these texts, or None: once per set and model (a corpus has thousands)."""
    try:
        validate_set(lm, _texts, layout)
    except TextSetError as exc:
        return str(exc)
    return None


def digest(items) -> str:
    """One string for a long list in a cache key: Streamlit hashes a tuple of 10,000 strings item by item."""
    return hashlib.sha256("\x00".join(map(str, items)).encode()).hexdigest()


texts_id = digest(frame["text"])
problem = _validated(lm.identity, texts_id, sidebar_config.layout, frame["text"].tolist())
if problem is not None:
    exc = TextSetError(problem)
    show_error(f"This set cannot be fitted with {lm.name}: {exc}", exc)
    st.stop()
choices = emb.config_choices(lm, set_name, sidebar_config, shared_m, manifest=manifest)
if len(choices) > 1:
    picked = c_choice.radio("Proto-tokens fitted with", range(len(choices)), key="emb_config",
                            format_func=lambda i: choices[i].label, horizontal=True)
else:
    picked = 0
    c_choice.caption(f"Proto-tokens fitted with the {choices[0].label}.")
config = choices[picked].config

texts = frame["text"].tolist()
@st.cache_resource(show_spinner=False, max_entries=4)
def _entries(model: str, texts_id: str, config_key: str, listing: tuple, _texts: list[str], _choice) -> list:
    """set_entries, once per set, configuration and state of the cache's listing (a fit, a delete or a refit
    changes it): a corpus of thousands reads its vectors once per server, not at every rerun."""
    return set_entries(lm, _texts, _choice, cache)


listing = cache.listing_stamp(lm.identity)  # once a run: both kept results below depend on it
entries = _entries(lm.identity, texts_id, json.dumps(choices[picked].config.key_dict(), sort_keys=True,
                                                         default=str),
                   listing, texts, choices[picked])
n_fitted = sum(e is not None for e in entries)
missing = [t for t, e in zip(texts, entries) if e is None]
running = jobs.is_running(JOB)
st.caption(f"**{len(frame):,} texts** in {len(set(frame['group']))} groups · **{n_fitted:,} fitted** for "
           f"{plain(lm.name)} with these settings · {len(missing)} to fit")
if missing:
    if n_fitted == 0:
        st.info(plain(f"This set needs fitting for {lm.name} with these settings: nothing of it is in the cache "
                      "yet. Fitting runs in the background, a batch at a time; Stop keeps every text finished so "
                      "far."))
    what = "the whole set (shared m: one coupled batch)" if shared_m else f"the {len(missing)} missing texts"
    if st.button(f"Fit {what}", type="primary", disabled=running, key="emb_fit"):
        # A shared m couples the whole set, so every text goes in; otherwise the cache skips the fitted ones.
        jobs.start_job(JOB, lm, texts if shared_m else missing, config, cache, batch_size=8)
if jobs.get_job(JOB) is not None:
    jobs.poll(JOB, jobs.render_set_progress)
    jobs.show_outcome(JOB)
if n_fitted == 0:
    st.stop()

# ---- vectors -----------------------------------------------------------------------------------------
c_thr, c_method, c_metric, c_perp = st.columns([2, 2, 1, 1])
SELECTIONS = {"texts": "each text at the threshold (this lab)",
              "groups": "whole groups only, every variant at the threshold (the seed paper's code)"}
min_accuracy = c_thr.slider("Keep texts reconstructed to at least", 0.0, 1.0, emb.DEFAULT_MIN_ACCURACY, 0.01,
                            key="emb_min_acc", bind=URL, help="Token accuracy of the fitted vectors; the paper keeps >= 0.9.")
method = METHODS[c_method.radio("2-D map", list(METHODS), horizontal=True, key="emb_method", bind=URL)]
metric = c_metric.selectbox("Metric", METRICS, key="emb_metric", bind=URL)
perplexity = c_perp.number_input("Perplexity", 2.0, 100.0, emb.DEFAULT_PERPLEXITY, 1.0, key="emb_perplexity", bind=URL,
                                 disabled=method != "tsne", help="t-SNE only; clamped below the number of points.")

# A large set's teacher embeddings and maps are made in the background (a MapJob); a small set's right here.
large = n_fitted > emb.BACKGROUND_POINTS
teacher = emb.load_teacher_embeddings(texts, cache)
if teacher is None and not large:
    try:
        with st.spinner("Embedding the texts with the teacher (once per set) ..."):
            teacher = emb.teacher_embeddings(texts, cache)
    except Exception as exc:  # the maps of e and m are still worth showing without the reference
        show_error(f"No teacher reference: {exc}", exc, warning=True)
@st.cache_resource(show_spinner=False, max_entries=4)
def _assembled(ident: tuple, _entries: list, min_accuracy: float, _teacher, shared_m: bool,
               whole_groups: bool, count: str) -> emb.SetVectors:
    """assemble_set, once per set state, threshold, selection, count and teacher (10,000 rows take a second)."""
    return emb.assemble_set(frame, _entries, min_accuracy=min_accuracy, teacher=_teacher, shared_m=shared_m,
                            whole_groups=whole_groups, count=count)


whole_groups = st.radio("Keep", list(SELECTIONS), format_func=SELECTIONS.get, horizontal=True, key="emb_selection",
                        bind=URL, help="The seed paper's code keeps a group only if every variant in it reached the "
                                       "threshold; this lab keeps every text that did.") == "groups"
vectors = _assembled((texts_id, digest(frame["group"]), digest(frame["kind"]),
                      digest(e.key if e else "" for e in entries), listing,
                      teacher is not None), entries, float(min_accuracy), teacher, shared_m, whole_groups,
                     metric_count())
st.caption(f"Showing **{vectors.n:,}** of {vectors.n_total:,} texts: {vectors.n_below:,} below {min_accuracy:.2f} "
           f"accuracy excluded, {vectors.n_unfitted} not fitted"
           + (f", {vectors.n_dropped} more left out with a group that has a text below it." if whole_groups else ".")
           + (" m is shared by every text, so only e and the teacher are drawn." if shared_m else "")
           + count_note(vectors.count, vectors.n_uncounted))
if vectors.n < 2:
    st.warning("Fewer than 2 texts pass the threshold: nothing to compare. Lower the threshold or fit more.")
    st.stop()

cache_id = (digest(vectors.table["key"]), teacher is not None, shared_m, vectors.count)
large = vectors.n > emb.BACKGROUND_POINTS


@st.cache_data(show_spinner=False, max_entries=16)
def _projections(_vectors: emb.SetVectors, ident: tuple, method: str, metric: str, perplexity: float):
    return emb.project_spaces(_vectors, _vectors.spaces, method=method, metric=metric, perplexity=perplexity,
                              cache=cache)


@st.cache_data(show_spinner=False, max_entries=16)
def _silhouettes(_vectors: emb.SetVectors, ident: tuple, metric: str) -> pd.DataFrame:
    return emb.silhouette_table(_vectors, metric)


def _render_maps_job(job: emb.MapJob, snap: emb.MapSnapshot) -> None:
    st.progress(snap.done / max(snap.total, 1), text=f"Making the maps in the background: {snap.step} · "
                                                     f"{snap.done} of {snap.total} steps · {snap.elapsed:.0f} s")
    if not snap.finished and st.button("Stop", key=f"stop_maps::{id(job)}",
                                       help="Keeps the maps made so far; the rest is made on the next visit"):
        job.cancel()


# UMAP compiles its numba kernels on first use in a process (bench/embeddings.py times it).
first_umap = " (UMAP's first use in this process compiles it: up to half a minute)" if method == "umap" else ""
if large:
    projections = emb.load_projections(vectors, vectors.spaces, method, metric, perplexity=float(perplexity),
                                       cache=cache)
    maps_ident = (tuple(vectors.table["key"]), shared_m, method, metric, float(perplexity))
    job = jobs.get_job(MAPS_JOB) if st.session_state.get("emb_maps_ident") == maps_ident else None
    if job is None and (projections is None or teacher is None):  # once per set and settings
        st.session_state["emb_maps_ident"] = maps_ident
        job = jobs.run_job(MAPS_JOB, emb.MapJob(vectors, texts, cache, method=method, metric=metric,
                                                perplexity=float(perplexity), teacher=teacher is None), cache)
    if job is not None:
        jobs.poll(MAPS_JOB, _render_maps_job)
        snap = job.snapshot()
        if snap.finished:
            jobs.show_outcome(MAPS_JOB, "Making the maps", unsaved=False)
            for note in snap.notes:
                st.warning(plain(note))
            if projections is None and set(job.projections) >= set(vectors.spaces):
                projections = {space: job.projections[space] for space in vectors.spaces}  # the cache kept none
    if projections is None and (job is None or not job.snapshot().finished):
        st.info(f"{vectors.n:,} points: their {method} maps are being made in the background{first_umap} and "
                "stored in the cache; they appear here when they are done. The scores and neighbours below "
                "are ready now.")
else:
    with st.spinner(f"Projecting {vectors.n} points{first_umap} ..."):
        projections = _projections(vectors, cache_id, method, metric, float(perplexity))  # unsaved: sidebar warns
scores = _silhouettes(vectors, cache_id, metric)
coords = emb.coordinates_frame(vectors, projections or {})

table = vectors.table
if st.session_state.get("emb_focus") not in set(table["text"]):
    st.session_state["emb_focus"] = table["text"].iloc[0]
focus = int(np.flatnonzero(table["text"].to_numpy() == st.session_state["emb_focus"])[0])


@st.cache_data(show_spinner=False, max_entries=8)
def _hovers(texts_id: str, _texts: list[str]) -> list[str]:
    """The hover text of every point, once per set (wrapping 10,000 texts takes a second)."""
    return [hover_text(t) for t in _texts]


def _symbols(kinds: np.ndarray) -> str | list[str]:
    """The marker symbol of each point by its kind: one symbol for a trace of one kind (plotly checks a list of
    10,000 symbols one by one)."""
    unique = set(kinds.tolist())
    if len(unique) == 1:
        return KIND_SYMBOLS.get(unique.pop(), "circle")
    return [KIND_SYMBOLS.get(kind, "circle") for kind in kinds.tolist()]


def maps_figure() -> go.Figure:
    spaces = list(projections)
    # Above emb.WEBGL_POINTS markers are drawn with WebGL: SVG markers make 10,000 points pan and zoom in jerks.
    scatter = go.Scattergl if vectors.n > emb.WEBGL_POINTS else go.Scatter
    n_cols = 2 if len(spaces) > 1 else 1
    n_rows = (len(spaces) + n_cols - 1) // n_cols
    titles = []
    for s in spaces:
        score = scores[(scores["space"] == s) & (scores["subset"] == emb.ALL)]["silhouette"].iloc[0]
        titles.append(f"{emb.SPACE_LABELS[s]} · silhouette {score:.2f}" if score == score else emb.SPACE_LABELS[s])
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.05,
                        vertical_spacing=0.08)
    groups = list(dict.fromkeys(table["group"]))
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    # Plotly reads hover texts and legend names as HTML: texts and group names from an upload are escaped.
    hover = np.array(_hovers(digest(table["text"]), table["text"].tolist()), dtype=object)
    kinds = table["kind"].to_numpy()
    for k, space in enumerate(spaces):
        row, col = k // n_cols + 1, k % n_cols + 1
        xy = projections[space].coords
        for group in groups:
            rows = np.flatnonzero(table["group"].to_numpy() == group)
            fig.add_trace(scatter(
                x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=plotly_text(group), legendgroup=str(group),
                showlegend=k == 0,
                marker=dict(color=colours[group], size=9 if vectors.n <= emb.WEBGL_POINTS else 5, opacity=0.85,
                            line=dict(width=0.5 if vectors.n <= emb.WEBGL_POINTS else 0, color="white"),
                            symbol=_symbols(kinds[rows])),
                # The group goes in as data, not into the template, where "%{...}" in its name would be read.
                customdata=np.stack([rows, hover[rows], kinds[rows],
                                     table["accuracy"].iloc[rows].round(3), [plotly_text(group)] * len(rows)],
                                    axis=1),
                hovertemplate="%{customdata[1]}<br><b>%{customdata[4]}</b> · %{customdata[2]} · "
                              "accuracy %{customdata[3]}<extra></extra>"),
                row=row, col=col)
        fig.add_scatter(x=[xy[focus, 0]], y=[xy[focus, 1]], mode="markers", hoverinfo="skip", showlegend=k == 0,
                        name="selected", legendgroup="selected",
                        marker=dict(size=20, symbol="circle-open", color="black", line=dict(width=2)),
                        row=row, col=col)
        fig.update_xaxes(showticklabels=False, row=row, col=col)
        fig.update_yaxes(showticklabels=False, row=row, col=col)
    kinds = list(dict.fromkeys(table["kind"]))
    for kind in kinds if len(kinds) > 1 else []:  # marker legend: one grey entry per kind
        fig.add_scatter(x=[None], y=[None], mode="markers", name=f"{kind} (marker)", legendgroup=f"kind-{kind}",
                        marker=dict(symbol=KIND_SYMBOLS.get(kind, "circle"), color="#666", size=9), row=1, col=1)
    fig.update_layout(height=430 * n_rows, margin=dict(l=10, r=10, t=40, b=10), dragmode="pan",
                      legend=dict(itemsizing="constant", font=dict(size=11)), clickmode="event+select")
    return fig


def pick_point() -> None:
    """A click on a map makes that text the selected one (the nearest-neighbour table follows)."""
    points = st.session_state["emb_map"].selection.get("points", [])
    for point in points:
        data = point.get("customdata")
        if data:
            st.session_state["emb_focus"] = table["text"].iloc[int(float(data[0]))]
            return


notes = sorted({p.note for p in (projections or {}).values() if p.note})
for note in notes:
    st.caption(f":material/info: {plain(note)}")
maps = maps_figure() if projections else None
if maps is not None:
    st.plotly_chart(maps, key="emb_map", on_select=pick_point, selection_mode="points",
                    config={"scrollZoom": True})
    st.caption("Colour: group; marker: kind (star original, circle semantic paraphrase, x lexical variant, diamond "
               "syntax). Hover for the text and its reconstruction accuracy; click a point to list its neighbours."
               + (f" {vectors.n:,} points, drawn with WebGL." if vectors.n > emb.WEBGL_POINTS else ""))

# ---- silhouettes -------------------------------------------------------------------------------------
st.subheader("How well does each space separate the groups?")
c_table, c_bars = st.columns([2, 3])
wide = scores.pivot(index="space", columns="subset", values="silhouette").reindex(
    index=list(vectors.spaces), columns=list(dict.fromkeys(scores["subset"])))
st.markdown(plain(emb.finding_line(scores, lm.name)))
c_table.dataframe(wide.round(3), width="stretch")
about_subsets = (" *original + semantic* isolates meaning: a high score there means paraphrases of a source "
                 "sit together. *original + lexical* tests spelling." if len(wide.columns) > 1 else "")
c_table.caption(f"Silhouette with the group as label ({metric} metric) on the full vectors, not on the 2-D map."
                + about_subsets + (f" Scored on a fixed sample of {SILHOUETTE_SAMPLE:,} of the {vectors.n:,} "
                                   "texts." if vectors.n > SILHOUETTE_SAMPLE else ""))
bars = go.Figure()
for space in vectors.spaces:
    part = scores[scores["space"] == space]
    bars.add_bar(x=part["subset"], y=part["silhouette"], name=space, marker_color=SPACE_COLOURS[space],
                 text=part["silhouette"].round(2), textposition="outside")
bars.update_layout(barmode="group", height=320, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="silhouette",
                   legend=dict(orientation="h", y=1.12))
c_bars.plotly_chart(bars, key="emb_scores")

# ---- neighbours ----------------------------------------------------------------------------------------
st.subheader("Nearest neighbours")
c_focus, c_k = st.columns([5, 1])
group_of = dict(zip(table["text"], table["group"]))
c_focus.selectbox("Text", table["text"].tolist(), key="emb_focus", format_func=lambda t: f"[{group_of[t]}] {t}")
k = int(c_k.number_input("Neighbours", 1, 20, 5, key="emb_k", bind=URL))
focus = int(np.flatnonzero(table["text"].to_numpy() == st.session_state["emb_focus"])[0])
@st.cache_data(show_spinner=False, max_entries=64)
def _neighbours(_vectors: emb.SetVectors, ident: tuple, focus: int, k: int, metric: str) -> pd.DataFrame:
    return emb.neighbours_table(_vectors, focus, k=k, metric=metric)


neighbours = _neighbours(vectors, cache_id, focus, k, metric)
# Two tables a row: the texts stay readable.
columns = [column for _ in range(0, len(vectors.spaces), 2) for column in st.columns(2)]
score_name = "cosine" if metric == "cosine" else "distance"
for column, space in zip(columns, vectors.spaces):
    part = neighbours[neighbours["space"] == space]
    column.markdown(f"**{space}** · {int(part['same_group'].sum())} of {len(part)} in the same group")
    column.dataframe(part[["text", "group", "kind", "score"]].rename(columns={"score": score_name}).round(3),
                     hide_index=True, width="stretch", column_config={
                         "text": st.column_config.TextColumn(width="large"),
                         "group": st.column_config.TextColumn(width="small"),
                         "kind": st.column_config.TextColumn(width="small"),
                         score_name: st.column_config.NumberColumn(width="small", format="%.3f")})

# ---- downloads -----------------------------------------------------------------------------------------
stem = (set_name or "uploaded").replace(" ", "_")
c1, c2, c3, c4 = st.columns(4)
with c1:
    download_csv(coords, f"{stem}_2d_{method}.csv", "2-D coordinates (CSV)", key="emb_dl_coords")
with c2:
    download_csv(scores, f"{stem}_silhouette.csv", "Silhouette scores (CSV)", key="emb_dl_scores")
with c3:
    if maps is not None:
        download_figure(maps, f"{stem}_maps_{method}.html", "Maps", key="emb_dl_maps")
with c4:
    download_figure(bars, f"{stem}_silhouette.html", "Score chart", key="emb_dl_bars")
download_report(lambda publication: set_report(lm, set_name or "uploaded", frame, entries, cache,
                                               publication=publication, count=vectors.count),
                f"report-{stem}.html", key="emb_dl_report")
