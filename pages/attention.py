"""Attention: where does the model look at the e-token? (docs/science.md, B.3)

Thin page: widgets, calls into core.analyses.attention, plotly figures. Every number comes from one cached
AttentionResult per entry; a single head's full map is computed only when asked.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.analyses.attention import (
    HEAD_AGGREGATES,
    VIEWS,
    AttentionResult,
    AttentionUnavailable,
    HeadMap,
    run_attention,
    head_map,
)
from ui.state import entry_selector, get_cache, get_model, require_app_shell
from ui.widgets import download_csv, download_figure, plotly_text, show_error, visible_token

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

VIEW_LABELS = {"proto": "Proto-tokens: attention to e", "baseline": "Baseline: attention to the first token",
               "difference": "Difference (e − first token)"}
VALUE_NAMES = {"proto": "attention to e", "baseline": "attention to the first token",
               "difference": "e − first token"}
SOURCE_LABELS = {"proto": "Proto-tokens", "baseline": "Baseline (ordinary tokens)"}
TRIVIAL_NOTE = "sees only key 0: weight 1 by the causal mask"
POSITION_TITLE = "query (the token it predicts)"


def figure_token(token: str) -> str:
    """A token for a figure's labels and hovers, which plotly reads as HTML (tokens come from users' texts)."""
    return plotly_text(visible_token(token))

# Numbers inside the layer x head cells stay readable up to about this many layers at full width.
MAX_ANNOTATED_LAYERS = 40
MAX_TICK_LABELS = 60


# ---- figure helpers (pure: data in, figure out) -------------------------------------------------

def column_notes(result: AttentionResult, view: str, trivial: np.ndarray) -> np.ndarray:
    """[N] what the query of each column is in this view, for the hover."""
    proto_q, base_q = result.query_positions("proto"), result.query_positions("baseline")
    notes = []
    for k in range(result.n_tokens):
        proto = "the e-query itself" if proto_q[k] == 0 else f"m-query at position {proto_q[k]}"
        if base_q[k] < 0:
            base = "no plain-token query predicts the first token"
        else:
            base = f"plain query at {base_q[k]} ({plotly_text(repr(visible_token(result.tokens[base_q[k]])))})"
        note = proto if view == "proto" else base if view == "baseline" else f"{proto} vs {base}"
        notes.append(note + (f" — {TRIVIAL_NOTE}" if trivial[k] else ""))
    return np.array(notes, dtype=object)


def comparable(values: np.ndarray, view: str, trivial: np.ndarray) -> np.ndarray:
    """values [..., N]; in the difference a column where either query is forced to 1 compares nothing: blank."""
    if view != "difference":
        return values
    values = values.copy()
    values[..., trivial] = np.nan
    return values


def colour(values: np.ndarray, view: str, skip_columns: np.ndarray | None = None) -> dict:
    """Sequential from 0 for weights, diverging around 0 for differences.

    The range ignores ``skip_columns`` [N] (weight 1 by construction), which would wash out everything else.
    """
    keep = ~skip_columns if skip_columns is not None else None
    shown = values[..., keep] if keep is not None and keep.any() else values
    finite = shown[np.isfinite(shown)]
    if view == "difference":
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        return dict(colorscale="RdBu_r", zmid=0.0, zmin=-(bound or 1.0), zmax=bound or 1.0)
    return dict(colorscale="Viridis", zmin=0.0, zmax=(float(finite.max()) if finite.size else 1.0) or 1.0)


def position_axis(names: list[str], angle: int = -60) -> dict:
    """A category axis with every label for short texts and every k-th one for long ones."""
    step = max(1, int(np.ceil(len(names) / MAX_TICK_LABELS)))
    return dict(type="category", tickmode="array", tickvals=names[::step], ticktext=names[::step],
                tickangle=angle, tickfont=dict(size=10 if len(names) <= 64 else 9))


def hover_fields(notes: np.ndarray, rows: int, *per_cell: np.ndarray) -> np.ndarray:
    """customdata [rows, N, 1 + len(per_cell)]: the column's note, then per-cell values [rows, N]."""
    fields = [np.broadcast_to(notes, (rows, notes.shape[0]))] + list(per_cell)
    return np.stack([np.asarray(f, dtype=object) for f in fields], axis=-1)


def heatmap(z: np.ndarray, x: list, y: list, *, hover: str, title: str, x_title: str, y_title: str,
            height: int, colours: dict, customdata: np.ndarray | None = None, annotate: bool = False,
            x_axis: dict | None = None) -> go.Figure:
    """z [rows = y, columns = x] as a heatmap; blank (NaN) cells have no hover."""
    trace = go.Heatmap(z=z, x=x, y=y, customdata=customdata, hovertemplate=hover + "<extra></extra>",
                       colorbar=dict(thickness=12), hoverongaps=False, **colours)
    if annotate:
        trace.update(texttemplate="%{z:.2f}", textfont=dict(size=9))
    fig = go.Figure(trace)
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height,
                      margin=dict(l=60, r=20, t=50, b=110 if x_axis else 50))
    fig.update_xaxes(title=x_title, **(x_axis or {}))
    fig.update_yaxes(title=y_title, dtick=1 if len(y) <= 12 else None)
    return fig


def head_map_figure(one: HeadMap) -> tuple[go.Figure, float]:
    """One head's [query, key] map with future keys blank; returns the figure and the colour ceiling."""
    weights = one.weights.numpy().copy()
    size = weights.shape[0]
    weights[np.triu_indices(size, k=1)] = np.nan  # masked by causality, not "zero attention"
    # Key 0 is usually a sink; taking the range from the other keys keeps their pattern visible.
    rest = weights[1:, 1:]
    top = (float(np.nanmax(rest)) if np.isfinite(rest).any() else 1.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=weights, x=one.labels, y=one.labels, colorscale="Viridis", zmin=0.0, zmax=top, hoverongaps=False,
        colorbar=dict(thickness=12), hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"))
    fig.update_layout(
        title=dict(text=f"{SOURCE_LABELS[one.source]}: layer {one.layer}, head {one.head}", font=dict(size=15)),
        height=max(420, min(700, 5 * size + 300)), margin=dict(l=120, r=20, t=50, b=120))
    fig.update_xaxes(title="key", constrain="domain", **position_axis(one.labels))
    # Square cells: a query row reads like its key column.
    fig.update_yaxes(title="query", autorange="reversed", scaleanchor="x", constrain="domain",
                     **position_axis(one.labels, angle=0))
    return fig, top


# ---- the page ------------------------------------------------------------------------------------


st.title("Attention")
st.markdown(
    "Each query position of the one-pass reconstruction can look back at the e-token (key 0). The heatmaps show "
    "how much it does, per layer, head and position, from one forward pass with eager attention. Ordinary first "
    "tokens are *attention sinks* (they draw much attention whatever they say), so the same text fed as plain "
    "tokens is shown as a baseline: its attention to its own first token."
)

lm = get_model()
if lm is None:
    st.stop()
entry = entry_selector(lm, key="attention_entry")
if entry is None:
    st.stop()
cache = get_cache()
try:
    with st.spinner("Computing attention (two eager forward passes, cached afterwards) ..."):
        result = run_attention(lm, entry, cache)  # a cache that cannot keep it warns in the sidebar
except AttentionUnavailable as exc:
    show_error(f"Attention weights are not available. {exc}", exc)
    st.stop()
except ValueError as exc:  # vectors of another width: the entry belongs to another model
    show_error(exc, exc)
    st.stop()

n, layers, heads = result.n_tokens, result.num_layers, result.num_heads
origin = "from the cache" if result.from_cache else f"computed in {result.seconds:.1f} s"
st.caption(f"{n} tokens, layout {result.layout}, accuracy {entry.metrics.get('accuracy', 0.0):.3f}; "
           f"{layers} layers × {heads} heads; {origin}. Columns are aligned on the token each query predicts "
           "(`k:token`); for the baseline that is the query one position earlier, so column 0 has none. Cells whose "
           f"query {TRIVIAL_NOTE} are marked in the hover, left out of the colour range and of the means, and "
           "blank in the difference.")

col_view, col_heads = st.columns([3, 1])
view = col_view.radio("Show", VIEWS, format_func=VIEW_LABELS.get, horizontal=True, key="attention_view")
how = col_heads.radio("Over heads", HEAD_AGGREGATES, horizontal=True, key="attention_heads",
                      help="Mean or max over heads in the layer × position heatmap.")

labels = result.labels(figure_token)
trivial = result.trivial(view).numpy()
notes = column_notes(result, view, trivial)
value_name = VALUE_NAMES[view]
if view == "difference":
    hover_value = "e − first token: %{z:+.4f}<br>e: %{customdata[1]:.4f} · first token: %{customdata[2]:.4f}"
else:
    hover_value = value_name + ": %{z:.4f}"

# Layer x position, over heads: the paper's figures 1 and 2.
by_layer = comparable(result.over_heads(view, how).numpy(), view, trivial)  # [layer, N]
sides = [result.over_heads(s, how).numpy() for s in ("proto", "baseline")] if view == "difference" else []
fig_layers = heatmap(
    by_layer, labels, list(range(layers)), customdata=hover_fields(notes, layers, *sides),
    hover="layer %{y} · predicts %{x}<br>" + hover_value + f" ({how} over heads)<br>%{{customdata[0]}}",
    title=f"{VIEW_LABELS[view]}, {how} over heads: layer × position", x_title=POSITION_TITLE, y_title="layer",
    height=max(320, 16 * layers + 190), colours=colour(by_layer, view, trivial), x_axis=position_axis(labels))
st.plotly_chart(fig_layers, key="attention_fig_layers")

# One layer: head x position, the paper's figure 3.
layer = st.slider("Layer", 0, layers - 1, layers // 2, key="attention_layer")
by_head = comparable(result.view(view)[layer].numpy(), view, trivial)  # [head, N]
sides = [result.view(s)[layer].numpy() for s in ("proto", "baseline")] if view == "difference" else []
fig_heads = heatmap(
    by_head, labels, list(range(heads)), customdata=hover_fields(notes, heads, *sides),
    hover=f"layer {layer} · head %{{y}} · predicts %{{x}}<br>" + hover_value + "<br>%{customdata[0]}",
    title=f"{VIEW_LABELS[view]}: heads × position in layer {layer}", x_title=POSITION_TITLE, y_title="head",
    height=max(260, 26 * heads + 170), colours=colour(by_head, view, trivial), x_axis=position_axis(labels))
st.plotly_chart(fig_heads, key="attention_fig_heads")

# Layer x head grid, transposed (layers across) so 30 layers x 9 heads fits the page's width.
grid = result.over_positions(view).numpy().T  # [head, layer]
fig_grid = heatmap(
    grid, list(range(layers)), list(range(heads)),
    hover="layer %{x} · head %{y}<br>" + f"mean {value_name} over positions: " + "%{z:.4f}",
    title=f"{VIEW_LABELS[view]}, mean over positions: head × layer", x_title="layer", y_title="head",
    height=max(240, 26 * heads + 130), colours=colour(grid, view), annotate=layers <= MAX_ANNOTATED_LAYERS)
fig_grid.update_xaxes(dtick=1)
st.plotly_chart(fig_grid, key="attention_fig_grid")

st.markdown("**One head: the full query × key map**")
fig_map = None
col_controls, col_map = st.columns([1, 3])
with col_controls:
    map_layer = int(st.number_input("Layer", 0, layers - 1, layer, key="attention_map_layer"))
    map_head = int(st.number_input("Head", 0, heads - 1, 0, key="attention_map_head"))
    source = st.radio("Inputs", ("proto", "baseline"), format_func=SOURCE_LABELS.get, key="attention_map_source")
    one = head_map(lm, entry, map_layer, map_head, source, cache, compute=False, show=figure_token)
    if one is None and st.button("Compute this head's map", key="attention_map_compute",
                                 help="One more eager forward pass; the whole layer is cached afterwards."):
        with st.spinner("One eager forward pass ..."):
            one = head_map(lm, entry, map_layer, map_head, source, cache, show=figure_token)
        if head_map(lm, entry, map_layer, map_head, source, cache, compute=False, show=figure_token) is not None:
            st.rerun()  # the layer is cached now: redraw without the button
        show_error("Not saved to the cache (see the sidebar): this map is shown once.", warning=True)
with col_map:
    if one is None:
        st.caption("Not computed yet for this layer and input: press the button (one forward pass).")
    else:
        fig_map, top = head_map_figure(one)
        st.plotly_chart(fig_map, key="attention_fig_map")
        st.caption(f"Colour saturates at {top:.3g}, the largest weight off key 0; hover for exact values. "
                   "Blank cells are future keys, hidden by the causal mask.")

# Off by default: a standalone figure embeds plotly.js (~5 MB), too much to rebuild on every rerun.
if st.toggle("Prepare downloads", key="attention_downloads",
             help="The [layer, head, query] array of this view as CSV, each figure as a standalone HTML file."):
    stem = f"attention_{view}_{entry.key[:8]}"
    cols = st.columns(4)
    with cols[0]:
        download_csv(result.long_table(view, visible_token), f"{stem}.csv", "CSV: layer, head, query, token, value",
                     key="attention_dl_csv")
    with cols[1]:
        download_figure(fig_layers, f"{stem}_layer_position.html", "Figure: layer × position",
                        key="attention_dl_layers")
        download_figure(fig_grid, f"{stem}_layer_head.html", "Figure: layer × head", key="attention_dl_grid")
    with cols[2]:
        download_figure(fig_heads, f"{stem}_layer{layer}_heads.html", f"Figure: heads in layer {layer}",
                        key="attention_dl_heads")
    with cols[3]:
        if fig_map is not None:
            download_figure(fig_map, f"{stem}_{source}_L{map_layer}H{map_head}.html", "Figure: one head's map",
                            key="attention_dl_map")
