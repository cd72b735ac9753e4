"""The Geometry page's figures (and the report's): accuracy and loss along the straight line and the trained Bezier
curve between two solutions, the curve's training, and a fit's trajectory on its first two principal components.
Pure: data in, figure out; user text (decoded reconstructions) goes into hovers through hover_text."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures import hover_text

PATH_COLOURS = {"line": "#D55E00", "curve": "#0072B2"}
PATH_LABELS = {"line": "straight line", "curve": "Bezier curve (trained control point)"}


def path_figure(table: pd.DataFrame, title: str = "Between two solutions") -> go.Figure:
    """Accuracy (left) and loss (right) against t for each path of ``table`` (core.analyses.geometry.path_table:
    columns path, t, accuracy, loss, text); the hover shows the reconstruction at that point."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Token accuracy", "Loss (cross-entropy per token)"),
                        horizontal_spacing=0.08)
    for name, rows in table.groupby("path", sort=False):
        rows = rows.sort_values("t")
        hovers = [hover_text(text) for text in rows["text"]]
        for col, metric in ((1, "accuracy"), (2, "loss")):
            fig.add_scatter(
                x=rows["t"].tolist(), y=rows[metric].tolist(), mode="lines+markers", name=PATH_LABELS.get(name, str(name)),
                legendgroup=str(name), showlegend=col == 1, line=dict(color=PATH_COLOURS.get(name, "#444")),
                customdata=hovers, hovertemplate=f"t %{{x:.2f}}<br>{metric} %{{y:.3f}}<br>%{{customdata}}"
                                                 "<extra>%{fullData.name}</extra>", row=1, col=col)
    fig.update_xaxes(title_text="t (0: solution A, 1: solution B)", range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.04], row=1, col=1)
    fig.update_layout(height=400, margin=dict(l=10, r=10, t=60, b=10), title=title,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def training_figure(history: Sequence[float]) -> go.Figure:
    """The control point's training: the mean loss at the points t sampled at each step."""
    fig = go.Figure()
    fig.add_scatter(x=list(range(1, len(history) + 1)), y=list(history), mode="lines", name="sampled path loss",
                    line=dict(color=PATH_COLOURS["curve"]),
                    hovertemplate="step %{x}<br>loss %{y:.3f}<extra></extra>")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title="Training the control point",
                      xaxis_title="step", yaxis_title="mean loss on the sampled points")
    return fig


def trajectory_figure(table: pd.DataFrame, shares: Sequence[float], title: str = "The fit's trajectory") -> go.Figure:
    """The recorded points of a fit (columns step, pc1, pc2, accuracy, text: TrajectoryResult.table) on its first two
    principal components, joined in order and coloured by accuracy; start and end marked; the hover shows the step,
    the accuracy and the reconstruction there. ``shares``: share of variance per component, for the axis titles."""
    share = [float(s) for s in shares] + [0.0, 0.0]
    hovers = [hover_text(text) for text in table["text"]]
    fig = go.Figure()
    x, y = table["pc1"].tolist(), table["pc2"].tolist()
    fig.add_scatter(x=x, y=y, mode="lines", line=dict(color="#bbbbbb", width=1),
                    hoverinfo="skip", showlegend=False)
    fig.add_scatter(
        x=x, y=y, mode="markers", name="recorded point",
        marker=dict(color=table["accuracy"].tolist(), colorscale="Viridis", cmin=0, cmax=1, size=8,
                    colorbar=dict(title="accuracy"), line=dict(width=0.5, color="white")),
        customdata=[[int(s), float(a), h] for s, a, h in zip(table["step"], table["accuracy"], hovers)],
        hovertemplate="step %{customdata[0]}<br>accuracy %{customdata[1]:.3f}<br>%{customdata[2]}<extra></extra>")
    if len(table):
        ends = table.iloc[[0, -1]]
        fig.add_scatter(x=ends["pc1"].tolist(), y=ends["pc2"].tolist(), mode="markers+text", text=["start", "end"],
                        textposition="top center", marker=dict(color="black", size=12, symbol=["circle-open", "x"]),
                        name="start and end", hoverinfo="skip")
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=50, b=10), title=title,
                      xaxis_title=f"PC1 ({share[0]:.1%} of the variance)",
                      yaxis_title=f"PC2 ({share[1]:.1%} of the variance)", legend=dict(orientation="h", y=-0.2))
    return fig


def shares_figure(shares: Sequence[float]) -> go.Figure:
    """Share of variance per principal component, and the cumulative share."""
    values = [float(s) for s in shares]
    cumulative = [sum(values[: i + 1]) for i in range(len(values))]
    labels = [f"PC{i + 1}" for i in range(len(values))]
    fig = go.Figure()
    fig.add_bar(x=labels, y=values, name="share", marker_color=PATH_COLOURS["curve"],
                hovertemplate="%{x}: %{y:.1%}<extra></extra>")
    fig.add_scatter(x=labels, y=cumulative, mode="lines+markers", name="cumulative", line=dict(color="#444"),
                    hovertemplate="up to %{x}: %{y:.1%}<extra></extra>")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title="Share of variance",
                      yaxis=dict(range=[0, 1.04], tickformat=".0%"), legend=dict(orientation="h", y=-0.25))
    return fig
