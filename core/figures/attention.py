"""The Attention page's figures (and the report's): heatmaps of attention to e by layer, head and position, and
one head's full map. Pure: data in, figure out."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from core.analyses.attention import AttentionResult, HeadMap
from core.figures import plotly_text, visible_token

VIEW_LABELS = {"proto": "Proto-tokens: attention to e", "baseline": "Baseline: attention to the first token",
               "difference": "Difference (e − first token)"}
VALUE_NAMES = {"proto": "attention to e", "baseline": "attention to the first token",
               "difference": "e − first token"}
SOURCE_LABELS = {"proto": "Proto-tokens", "baseline": "Baseline (ordinary tokens)"}
TRIVIAL_NOTE = "sees only key 0: weight 1 by the causal mask"
POSITION_TITLE = "query (the token it predicts)"
# Numbers inside the layer x head cells stay readable up to about this many layers at full width.
MAX_ANNOTATED_LAYERS = 40
MAX_TICK_LABELS = 60


def figure_token(token: str) -> str:
    """A token for a figure's labels and hovers, which plotly reads as HTML (tokens come from users' texts)."""
    return plotly_text(visible_token(token))


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


def cell_hover(view: str) -> str:
    """The hover line of a cell's value in this view (a difference shows both sides, in customdata 1 and 2)."""
    if view == "difference":
        return "e − first token: %{z:+.4f}<br>e: %{customdata[1]:.4f} · first token: %{customdata[2]:.4f}"
    return VALUE_NAMES[view] + ": %{z:.4f}"


def layer_position_figure(result: AttentionResult, view: str = "proto", how: str = "mean") -> go.Figure:
    """Layer x position, over heads (mean or max): the seed paper's figures 1 and 2."""
    labels = result.labels(figure_token)
    trivial = result.trivial(view).numpy()
    notes = column_notes(result, view, trivial)
    by_layer = comparable(result.over_heads(view, how).numpy(), view, trivial)  # [layer, N]
    layers = by_layer.shape[0]
    sides = [result.over_heads(s, how).numpy() for s in ("proto", "baseline")] if view == "difference" else []
    return heatmap(
        by_layer, labels, list(range(layers)), customdata=hover_fields(notes, layers, *sides),
        hover="layer %{y} · predicts %{x}<br>" + cell_hover(view) + f" ({how} over heads)<br>%{{customdata[0]}}",
        title=f"{VIEW_LABELS[view]}, {how} over heads: layer × position", x_title=POSITION_TITLE, y_title="layer",
        height=max(320, 16 * layers + 190), colours=colour(by_layer, view, trivial), x_axis=position_axis(labels))
