"""Regularisers: can a sentence-embedding teacher shape e without costing reconstruction? (docs/science.md, B.4)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from core.analyses.regularisers import (
    DEFAULT_LAMBDAS,
    MAX_SWEEP_TEXTS,
    SWEEP_KINDS,
    RegulariserError,
    RegulariserJob,
    RegulariserResult,
    RegulariserSetting,
    RegulariserSnapshot,
    default_settings,
    load_regularisers,
    parse_lambdas,
    setting_map,
    summarize_regularisers,
    teacher_silhouette,
)
from core.engine.reconstruct import count_note
from core.engine.sets import validate_set
from core.shipped.default_sweep import DEFAULT_SET_NAME, default_sweep_set, load_default_sweep_manifest, sweep_choices
from core.texts.textsets import BUILTIN_SETS, TextSetError, builtin_set
from ui import jobs
from ui.state import fit_config, get_cache, get_model, metric_count, require_app_shell
from core.figures import hover_text, plotly_text
from core.report import figures_report
from ui.widgets import URL, choose_text_set, download_csv, download_figure, download_report, plain, show_error

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

JOB = "regularisers"
DEMO = DEFAULT_SET_NAME
DEFAULT_TEXTS = 24  # a bigger built-in set is cut to about this many texts (each setting fits them all at once)
KIND_COLOURS = {"none": "#555555", "anchor": "#e4572e", "relational": "#1f77b4"}
# Labels of different kinds on opposite sides of their points, so nearby settings stay readable.
KIND_TEXT_POSITIONS = {"none": "middle left", "anchor": "bottom center", "relational": "top center"}
GROUP_COLOURS = qualitative.Dark24
METHODS = {"PCA": "pca", "t-SNE": "tsne"}
VECTOR_LABELS = {"e": "e (as in the paper)", "m": "m"}


st.title("Regularisers")
st.markdown(
    "Can a teacher impose meaning on $e$ without costing reconstruction? Every text's $e$ and $m$ are fitted "
    "as usual (cross-entropy of the one-pass reconstruction) **plus λ times** one of two losses that relate $e$ "
    "to a sentence-embedding model's view of the same texts (the *teacher*, all-MiniLM-L6-v2 by default; "
    "$t_b$ is text $b$'s teacher embedding):\n"
    "- **anchor**: $L_{anchor} = \\frac{1}{B}\\sum_b \\big(1 - \\cos(e_b,\\, t_b P)\\big)$ pulls each $e_b$ "
    "towards its own teacher embedding, carried into the model's width by a fixed random projection $P$ "
    "(entries $\\mathcal{N}(0, 1/d_t)$, seeded);\n"
    "- **relational**: $L_{rel} = \\mathrm{MSE}\\big(\\hat E \\hat E^\\top,\\, \\hat T \\hat T^\\top\\big)$ matches only "
    "the batch's pairwise cosine similarities ($\\hat E$, $\\hat T$: L2-normalised rows), leaving $e$ free "
    "otherwise.\n\n"
    "The seed paper (λ = 0.1 each) found that the anchor loss trades off sharply against reconstruction "
    "accuracy, while relational distillation moves the teacher's semantic relations into $e$ without hurting "
    "reconstruction. **Alignment**: Spearman correlation between the pairwise cosine similarities of the fitted "
    "vectors and of the teacher embeddings (1: the same ranking of which texts are alike). **Silhouette**: how "
    "well the vectors separate the groups (e.g. the paraphrases of one source), by cosine."
)

lm = get_model()
sidebar_config = fit_config()
cache = get_cache()
if lm is None or sidebar_config is None:
    st.stop()
manifest = load_default_sweep_manifest(cache)


@st.cache_data(show_spinner=False)
def _builtin(name: str) -> pd.DataFrame:
    return default_sweep_set() if name == DEMO else builtin_set(name)


def _set_label(name: str) -> str:
    if name == DEMO:
        demo = _builtin(DEMO)
        shipped = " · pre-fitted" if manifest is not None and manifest.model == lm.identity else ""
        n_paraphrases = len(demo) // demo["group"].nunique() - 1
        return (f"{DEMO}: {demo['group'].nunique()} short source texts, each with {n_paraphrases} "
                f"paraphrase{'s' * (n_paraphrases != 1)} ({len(demo)} texts{shipped})")
    return f"{name}: {BUILTIN_SETS[name]}"


# ---- the set -----------------------------------------------------------------------------------------
set_name, frame = choose_text_set("reg", [DEMO, *BUILTIN_SETS], _builtin, _set_label)

if len(frame) > DEFAULT_TEXTS:
    n_groups = frame["group"].nunique()
    per_group = int(st.number_input(
        f"Texts per group (the set has {len(frame)} texts in {n_groups} groups)", 1,
        max(1, int(frame.groupby("group").size().max())), max(1, DEFAULT_TEXTS // n_groups), key="reg_per_group",
        help=f"A regularised fit puts every text in one batch: at most {MAX_SWEEP_TEXTS} texts, and each "
             "step costs about as much as fitting every text alone. The first texts of each group are used."))
    frame = frame.groupby("group", sort=False).head(per_group).reset_index(drop=True)

# ---- the settings ------------------------------------------------------------------------------------
c_kinds, c_lambdas, c_target = st.columns([2, 2, 2])
kinds = c_kinds.multiselect("Regularisers", SWEEP_KINDS, default=list(SWEEP_KINDS), key="reg_kinds", bind=URL,
                            help="Every sweep also fits the set without a regulariser, the baseline.")
lambda_text = c_lambdas.text_input("λ values", ", ".join(f"{x:g}" for x in DEFAULT_LAMBDAS), key="reg_lambdas", bind=URL,
                                   help="Weights of the loss, comma-separated numbers > 0; the authors used 0.1.")
target = c_target.radio("Applied to", ["e", "m"], format_func=VECTOR_LABELS.get, horizontal=True, key="reg_target", bind=URL)
try:
    lambdas = parse_lambdas(lambda_text)
except RegulariserError as exc:
    show_error(f"Invalid λ values: {exc}", exc)
    st.stop()
settings = default_settings(kinds, lambdas, target)  # type: ignore[arg-type]

texts, groups = frame["text"].tolist(), frame["group"].astype(str).tolist()
choices = sweep_choices(manifest, lm, texts, sidebar_config)
if len(choices) > 1:
    picked = st.radio("Fit with", range(len(choices)), format_func=lambda i: choices[i].label, horizontal=True,
                      key="reg_config")
else:
    picked = 0
config, using_shipped = choices[picked].config, choices[picked].shipped

try:
    validate_set(lm, texts, config.layout)
except TextSetError as exc:
    show_error(f"This set cannot be fitted with {lm.name}: {exc}", exc)
    st.stop()
try:
    result = load_regularisers(lm, texts, groups, settings, config, cache)
except RegulariserError as exc:
    show_error(exc, exc)
    st.stop()

# ---- fitting -----------------------------------------------------------------------------------------
missing = result.missing
job = jobs.get_job(JOB)
running = jobs.is_running(JOB)
st.caption(f"**{len(texts)} texts** in {len(set(groups))} groups × **{len(settings)} settings** "
           f"({', '.join(s.label for s in settings)}) · {len(result.results)} fitted, {len(missing)} to fit · "
           f"{choices[picked].label}. Each setting fits all texts together in one batch and stops when every text "
           f"reaches accuracy {config.threshold:g} or after {config.max_steps} steps.")
if missing and st.button(f"Fit {len(missing)} setting{'s' * (len(missing) > 1)}", type="primary", disabled=running,
                         key="reg_fit", help="Runs in the background; Stop keeps every setting finished so far."):
    # A sweep is several fits, so it has its own job class; an unwritable cache stops it here with one line.
    if jobs.run_job(JOB, RegulariserJob(lm, texts, groups, missing, config, cache), cache) is not None:
        st.rerun()  # so this run's `job` and the disabled button reflect the new job, and its progress panel shows


def render_progress(sweep_job: RegulariserJob, snap: RegulariserSnapshot) -> None:
    label = snap.labels[snap.index] if snap.index < len(snap.labels) else ""
    if snap.finished:
        text = f"{sum(s == 'done' for s in snap.status)} of {len(snap.labels)} settings done · {snap.elapsed:.0f} s"
    else:
        text = (f"Setting {snap.index + 1} of {len(snap.labels)} ({label}): step {snap.step} / {snap.max_steps}, "
                f"mean best accuracy {snap.mean_accuracy:.2f} · {snap.elapsed:.0f} s")
    st.progress(snap.fraction, text=text)
    if not snap.finished and st.button("Stop", key=f"reg_stop::{id(sweep_job)}",
                                       help="Keeps every setting finished so far"):
        sweep_job.cancel()
    marks = {"done": "✓", "running": "…", "waiting": "·"}
    st.caption("  ".join(f"{marks.get(s, '·')} {name}" for name, s in zip(snap.labels, snap.status)))


if job is not None:
    jobs.poll(JOB, render_progress)
    last = job.snapshot()
    if last.state == "failed":
        jobs.show_failure("The sweep", last)
    elif last.state == "cancelled":
        st.caption(f"Stopped after {sum(s == 'done' for s in last.status)} of {len(last.status)} settings: the "
                   "finished ones are kept; the interrupted one starts again on the next Fit.")

if not result.results:
    st.info("None of these settings is fitted yet. Press **Fit** to run the sweep in the background (on a CPU, "
            "minutes per setting for a couple of dozen short texts).")
    st.stop()
if missing:
    st.caption(f"Not fitted yet: {', '.join(s.label for s in missing)}.")
if using_shipped and manifest is not None:
    walls = [w for w in manifest.wall_time_s.values() if w]
    st.caption(f"Pre-fitted results shipped with the project: {plain(manifest.model_name)}, {len(manifest.texts)} texts; "
               f"the sweep took {sum(walls) / 60:.0f} min on a {manifest.cpus or '?'}-core CPU "
               f"({manifest.torch_threads} torch thread{'s' * (manifest.torch_threads > 1)}).")

count = metric_count()
summary = summarize_regularisers(result, count)


# ---- trade-off ---------------------------------------------------------------------------------------
st.subheader("Trade-off")
shown = st.radio("Vectors", ["e", "m"], index=["e", "m"].index(target), format_func=VECTOR_LABELS.get,
                 horizontal=True, key="reg_shown", bind=URL, help="Alignment and silhouette of e or of m.")


def _kind(setting: RegulariserSetting) -> str:
    return setting.kind if setting.active else "none"


def tradeoff_figure(result_: RegulariserResult, vector: str) -> go.Figure:
    """Accuracy (y) against alignment (x), one labelled point per setting, a line per kind in λ order."""
    fig = go.Figure()
    baseline = next((r for r in result_.results if not r.setting.active), None)
    for kind in ("none", *SWEEP_KINDS):
        rows = sorted((r for r in result_.results if _kind(r.setting) == kind), key=lambda r: r.setting.weight)
        if not rows:
            continue
        path = ([baseline] if kind != "none" and baseline is not None else []) + rows
        x = [getattr(r, f"alignment_{vector}") for r in path]
        y = [r.accuracy_in(count) for r in path]
        silhouettes = [getattr(r, f"silhouette_{vector}") for r in path]
        fig.add_scatter(
            x=x, y=y, mode="lines+markers+text", name=kind, line=dict(color=KIND_COLOURS[kind], width=1.5),
            text=[r.setting.label if r in rows else "" for r in path], textposition=KIND_TEXT_POSITIONS[kind],
            marker=dict(size=[8 if r not in rows else 13 for r in path], color=KIND_COLOURS[kind]),
            customdata=[[r.setting.label, r.converged, r.n_texts, "n/a" if s is None else f"{s:.3f}"]
                        for r, s in zip(path, silhouettes)],
            hovertemplate="<b>%{customdata[0]}</b><br>alignment %{x:.3f}<br>accuracy %{y:.3f}<br>"
                          "%{customdata[1]} of %{customdata[2]} converged<br>silhouette %{customdata[3]}"
                          "<extra></extra>")
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=50, b=10),
                      title=f"Reconstruction vs semantic alignment of {vector}",
                      xaxis_title=f"alignment of {vector} with the teacher (Spearman)",
                      yaxis_title="mean token accuracy", yaxis=dict(range=[-0.02, 1.08]),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def silhouette_figure(result_: RegulariserResult, teacher_silhouette: float | None) -> go.Figure:
    labels = [r.setting.label for r in result_.results]
    fig = go.Figure()
    for vector, colour in (("e", "#2ca02c"), ("m", "#9467bd")):
        values = [getattr(r, f"silhouette_{vector}") for r in result_.results]
        fig.add_bar(x=labels, y=[np.nan if v is None else v for v in values], name=f"silhouette of {vector}",
                    marker_color=colour, hovertemplate="%{x}<br>%{y:.3f}<extra>" + vector + "</extra>")
    if teacher_silhouette is not None:
        fig.add_hline(y=teacher_silhouette, line=dict(color="#7f7f7f", dash="dash"),
                      annotation_text=f"teacher {teacher_silhouette:.2f}", annotation_position="top left")
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=50, b=10), barmode="group",
                      title="Silhouette by group", yaxis_title="silhouette (cosine)",  # short: the mode bar sits top right
                      legend=dict(orientation="h", y=-0.2))
    return fig


tradeoff_fig = tradeoff_figure(result, shown)
silhouette_fig = silhouette_figure(result, teacher_silhouette(texts, groups, cache))
left, right = st.columns([3, 2])
left.plotly_chart(tradeoff_fig, key="reg_tradeoff")
right.plotly_chart(silhouette_fig, key="reg_silhouette")

st.dataframe(summary, hide_index=True, key="reg_summary", width="stretch", column_config={
    **{c: st.column_config.NumberColumn(c, format="%.3f") for c in
       ("accuracy", "alignment_e", "alignment_m", "silhouette_e", "silhouette_m")},
    "wall_time_s": st.column_config.NumberColumn("wall time (s)", format="%.0f"),
    "lambda": st.column_config.NumberColumn("λ", format="%g"),
})
if count != "text":
    st.caption(count_note(count, sum(r.bos_uncounted for r in result.results)).strip())

# ---- maps --------------------------------------------------------------------------------------------
st.subheader("e without and with a regulariser")
baseline = next((r for r in result.results if not r.setting.active), None)
regularised = [r for r in result.results if r.setting.active]
map_fig = None
if baseline is None or not regularised:
    st.info("The maps need the run without a regulariser and at least one regularised setting.")
else:
    c_with, c_method, c_vec = st.columns([2, 1, 1])
    labels = [r.setting.label for r in regularised]
    # The strongest relational setting by default: the paper's claim is about relational distillation.
    relational = [i for i, r in enumerate(regularised) if r.setting.kind == "relational"]
    default = max(relational, key=lambda i: regularised[i].setting.weight) if relational else 0
    chosen_label = c_with.selectbox("Regularised setting", labels, index=default, key="reg_map_setting")
    method = METHODS[c_method.radio("2-D map", list(METHODS), horizontal=True, key="reg_map_method", bind=URL)]
    vector = c_vec.radio("Vectors", ["e", "m"], index=["e", "m"].index(target), horizontal=True, key="reg_map_vec", bind=URL)
    chosen = regularised[labels.index(chosen_label)]

    def map_figure() -> go.Figure:
        pair = [("none", baseline), (chosen.setting.label, chosen)]
        titles = []
        for name, r in pair:
            s = getattr(r, f"silhouette_{vector}")
            titles.append(f"{vector}, {name} · silhouette {'n/a' if s is None else f'{s:.2f}'}")
        fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.05)
        group_order = list(dict.fromkeys(groups))
        colours = {g: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, g in enumerate(group_order)}
        hover = [hover_text(t) for t in texts]  # plotly reads hovers and legend names as HTML: escaped
        notes = []
        for col, (name, r) in enumerate(pair, start=1):
            projection = setting_map(r, vector, method, cache)
            if projection.note:
                notes.append(projection.note)
            xy = projection.coords
            for group in group_order:
                rows = [i for i, g in enumerate(groups) if g == group]
                fig.add_scatter(
                    x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=plotly_text(group), legendgroup=group,
                    showlegend=col == 1, marker=dict(color=colours[group], size=10, line=dict(width=0.5, color="white")),
                    customdata=[[hover[i], plotly_text(group)] for i in rows],
                    hovertemplate="%{customdata[0]}<br><b>%{customdata[1]}</b><extra></extra>",
                    row=1, col=col)
            fig.update_xaxes(showticklabels=False, row=1, col=col)
            fig.update_yaxes(showticklabels=False, row=1, col=col)
        fig.update_layout(height=460, margin=dict(l=10, r=10, t=50, b=10), legend=dict(title="group"))
        for note in dict.fromkeys(notes):
            st.caption(plain(note))
        return fig

    map_fig = map_figure()
    st.plotly_chart(map_fig, key="reg_map")
    st.caption("Colour: group. Each panel is projected on its own (cosine), so compare the clustering, not the "
               "positions.")

# ---- downloads ---------------------------------------------------------------------------------------
c1, c2, c3, c4 = st.columns(4)
with c1:
    download_csv(summary, "regulariser_sweep.csv", "Summary (CSV)", key="reg_dl_summary")
with c2:
    download_figure(tradeoff_fig, "regulariser_tradeoff.html", "Trade-off plot", key="reg_dl_tradeoff")
with c3:
    download_figure(silhouette_fig, "regulariser_silhouette.html", "Silhouette plot", key="reg_dl_silhouette")
if map_fig is not None:
    with c4:
        download_figure(map_fig, "regulariser_maps.html", "Maps", key="reg_dl_maps")


def sweep_report(publication: bool) -> str:
    sections = [("Trade-off: reconstruction against semantic alignment", tradeoff_fig),
                ("Silhouettes", silhouette_fig), ("The sweep", summary)]
    if map_fig is not None:
        sections.append(("e without and with a regulariser", map_fig))
    return figures_report(lm, f"regulariser sweep of {set_name or 'an uploaded set'}", sections,
                          settings=[("set", set_name or "uploaded"), ("texts", len(result.texts)),
                                    ("teacher", result.teacher), ("applied to", target),
                                    *sorted(result.config.items())], publication=publication)


download_report(sweep_report, f"report-regularisers-{(set_name or 'uploaded').replace(' ', '_')}.html",
                key="reg_dl_report")
