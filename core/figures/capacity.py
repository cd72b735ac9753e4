"""The Capacity page's figures: the ladder (accuracy against length), C_tokens against H_LM, the layout ablation
beside the paper's, one pass against decoding. Pure: data in, figure out."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from core.analyses.capacity import PAPER_LAYOUT_SETTING, PAPER_SPEEDUP
from core.engine.reconstruct import PAPER_LAYOUT_NAMES
from core.figures import hover_text, plotly_text


def _positions(rows: pd.DataFrame) -> str:
    # what C_tokens is "of": the positions counted (core.analyses.capacity.counted_rows), else the text's N tokens
    return "positions" if "positions" in rows else "n_tokens"


def _lengths_axis(title: str, lengths) -> dict:
    """A log axis of token counts ticked at the lengths drawn (plotly's own log ticks read 2, 3, 4 ... within
    each decade, which looks like a mislabelled axis)."""
    values = sorted({int(v) for v in lengths})
    return dict(title=title, type="log", tickvals=values, ticktext=[str(v) for v in values])


def ladder_figure(rows: pd.DataFrame, threshold: float) -> go.Figure:
    """Token accuracy against prefix length (log axis), one line per source; a failed length is an open marker."""
    fig = go.Figure()
    for i, (source, part) in enumerate(rows.groupby("source", sort=False)):
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        fig.add_scatter(
            x=part["length"], y=part["accuracy"], mode="lines+markers", name=plotly_text(source),
            line=dict(color=colour),
            marker=dict(size=9, symbol=["circle" if c else "circle-open" for c in part["converged"]]),
            customdata=part[["c_tokens", _positions(part), "steps"]].to_numpy(),
            hovertemplate="%{x} tokens<br>accuracy %{y:.3f}<br>C_tokens %{customdata[0]} of %{customdata[1]}"
                          "<br>%{customdata[2]} steps<extra>%{fullData.name}</extra>")
    fig.add_hline(y=threshold, line=dict(dash="dot", color="grey"), annotation_text=f"threshold {threshold:g}")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), title="Accuracy along the ladder",
                      xaxis=_lengths_axis("prefix length (tokens)", rows["length"]), yaxis=dict(range=[-0.02, 1.04]),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def information_figure(table: pd.DataFrame, ladder_keys: set[str]) -> go.Figure:
    """C_tokens against H_LM (nats): the ladder's entries and the rest of the cache, converged filled."""
    fig = go.Figure()
    for name, part in (("ladder", table[table["key"].isin(ladder_keys)]),
                       ("other cached entries", table[~table["key"].isin(ladder_keys)])):
        if part.empty:
            continue
        fig.add_scatter(
            x=part["h_lm"], y=part["c_tokens"], mode="markers", name=name,
            marker=dict(size=8 if name == "ladder" else 6, opacity=0.9 if name == "ladder" else 0.5,
                        symbol=["circle" if c else "circle-open" for c in part["converged"]]),
            text=[hover_text(t) for t in part["text"]], customdata=part[[_positions(part), "accuracy"]].to_numpy(),
            hovertemplate="H_LM %{x:.1f} nats<br>C_tokens %{y} of %{customdata[0]} (accuracy %{customdata[1]:.2f})"
                          "<br>%{text}<extra>%{fullData.name}</extra>")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), title="Tokens reconstructed against H_LM",
                      xaxis_title="H_LM: the text's own cross-entropy under the model (nats)",
                      yaxis_title="C_tokens (correct tokens)")
    return fig


def layouts_figure(summary: pd.DataFrame) -> go.Figure:
    """Mean accuracy per layout here beside the paper's (core.analyses.capacity.layout_summary)."""
    names = [PAPER_LAYOUT_NAMES[layout] for layout in summary["layout"]]
    fig = go.Figure()
    fig.add_bar(x=names, y=summary["mean accuracy"], name="this lab", text=summary["mean accuracy"].round(2),
                textposition="outside")
    fig.add_bar(x=names, y=summary["paper accuracy"], name=f"paper ({PAPER_LAYOUT_SETTING})",
                marker_color="black", opacity=0.5, text=summary["paper accuracy"], textposition="outside")
    fig.update_layout(barmode="group", height=360, margin=dict(l=10, r=10, t=40, b=10), title="Accuracy per layout",
                      yaxis=dict(range=[0, 1.12], title="mean token accuracy"), legend=dict(orientation="h", y=-0.25))
    return fig


_RATIO_TICKS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def speed_figure(timings: pd.DataFrame) -> go.Figure:
    """Decoding time over one-pass time against N, with the paper's average."""
    fig = go.Figure()
    fig.add_scatter(x=timings["n_tokens"], y=timings["ratio"], mode="lines+markers", name="here",
                    customdata=timings[["one_pass_s", "generate_s"]].to_numpy(),
                    hovertemplate="N %{x}<br>%{y:.1f}x<br>one pass %{customdata[0]:.3f} s, generate "
                                  "%{customdata[1]:.3f} s<extra></extra>")
    # a trace, not add_hline: on a log axis a shape's y would be read as an exponent
    ends = [float(timings["n_tokens"].min()), float(timings["n_tokens"].max())]
    fig.add_scatter(x=ends, y=[PAPER_SPEEDUP] * 2, mode="lines", line=dict(dash="dash", color="black"),
                    name=f"paper: {PAPER_SPEEDUP:g}x on average (their GPUs)", hoverinfo="name")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), title="Greedy decoding time / one-pass time",
                      xaxis=_lengths_axis("N (tokens)", timings["n_tokens"]),
                      yaxis=dict(title="ratio", type="log", tickvals=_RATIO_TICKS, ticktext=[f"{v:g}x" for v in _RATIO_TICKS]),
                      legend=dict(orientation="h", y=-0.25))
    return fig
