"""The Noise page's figures (and the report's): accuracy and prefix curves against alpha, beside the seed paper's,
and the per-position flip heatmap. Pure: data in, figure out."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative

from core.analyses.noise import NOISE_TYPES, PAPER_ACCURACY, PAPER_MODEL, PAPER_PREFIX_REL, PAPER_SETTING
from core.figures import plotly_text, visible_token

TYPE_LABELS = {"gaussian": "gaussian", "uniform": "uniform", "signed_exponential": "signed exponential",
               "sinusoidal": "sinusoidal"}
TYPE_COLOURS = dict(zip(NOISE_TYPES, qualitative.Plotly))
# The paper's curve in a legend, with its setting in short (PAPER_SETTING in full on hover and in the page's caption)
PAPER_LEGEND = f"seed paper: {PAPER_MODEL}, ~130 texts at >= 0.9, 1 draw, N + 1 count"


def band_colour(hex_colour: str, opacity: float) -> str:
    r, g, b = hex_to_rgb(hex_colour)
    return f"rgba({r},{g},{b},{opacity})"


def curve_figure(summary: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """Mean per noise type with a min-max band; summary has one row per (type, alpha)."""
    fig = go.Figure()
    for kind, rows in summary.groupby("type", sort=False):
        rows = rows.sort_values("alpha")
        alphas = rows["alpha"].tolist()
        colour = TYPE_COLOURS.get(kind, "#444")
        fig.add_scatter(
            x=alphas + alphas[::-1], y=rows[f"{metric}_max"].tolist() + rows[f"{metric}_min"].tolist()[::-1],
            mode="lines", fill="toself", fillcolor=band_colour(colour, 0.15), line=dict(width=0), hoverinfo="skip",
            legendgroup=kind, showlegend=False)
        fig.add_scatter(
            x=alphas, y=rows[f"{metric}_mean"], name=TYPE_LABELS.get(kind, kind), legendgroup=kind,
            mode="lines+markers", line=dict(color=colour), customdata=rows[[f"{metric}_std", f"{metric}_min",
                                                                            f"{metric}_max"]].to_numpy(),
            hovertemplate="alpha %{x:g}<br>mean %{y:.3f} ± %{customdata[0]:.3f}<br>"
                          "min %{customdata[1]:.3f}, max %{customdata[2]:.3f}<extra>%{fullData.name}</extra>")
    largest = float(summary["alpha"].max()) or 1.0
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), title=title,
                      xaxis=dict(title="alpha", range=[-0.04 * largest, 1.04 * largest]),
                      yaxis=dict(range=[-0.02, 1.04]), legend=dict(orientation="h", y=-0.2))
    return fig


def accuracy_figure(summary: pd.DataFrame) -> go.Figure:
    fig = curve_figure(summary, "accuracy", "Token accuracy")
    fig.add_scatter(x=list(PAPER_ACCURACY), y=list(PAPER_ACCURACY.values()), mode="lines+markers",
                    name=PAPER_LEGEND, line=dict(color="black", dash="dash"), marker=dict(symbol="diamond"),
                    hovertemplate=f"alpha %{{x:g}}<br>%{{y:.2f}}<br>{PAPER_SETTING}<extra>seed paper</extra>")
    return fig


def prefix_figure(summary: pd.DataFrame) -> go.Figure:
    fig = curve_figure(summary, "correct_prefix_rel", "Relative correct prefix")
    fig.add_scatter(x=list(PAPER_PREFIX_REL), y=list(PAPER_PREFIX_REL.values()), mode="markers+text",
                    name=f"{PAPER_LEGEND} (2 points reported)",
                    hovertemplate=f"alpha %{{x:g}}<br>%{{y:.2f}}<br>{PAPER_SETTING}<extra>seed paper</extra>",
                    text=[f"paper {v:g}" for v in PAPER_PREFIX_REL.values()],
                    # Inward of each point, so neither label is cut off at the plot's edge.
                    textposition=["middle right" if alpha == 0 else "top left" for alpha in PAPER_PREFIX_REL],
                    marker=dict(color="black", symbol="diamond", size=10))
    return fig


def entries_figure(curves: pd.DataFrame, labels: dict[str, str]) -> go.Figure:
    """One accuracy line per entry (core.analyses.noise.entry_curves), named with its text and final loss."""
    fig = go.Figure()
    for key, rows in curves.groupby("entry", sort=False):
        rows = rows.sort_values("alpha")
        first = rows.iloc[0]
        loss = f"final loss {first['final_loss']:.3f}" if pd.notna(first["final_loss"]) else "final loss unknown"
        name = f"{plotly_text(labels.get(key, key[:8])[:40])} · {loss}"
        fig.add_scatter(x=rows["alpha"], y=rows["accuracy_mean"], mode="lines+markers", name=name,
                        customdata=rows[["n_tokens", "steps"]].to_numpy(),
                        hovertemplate="alpha %{x:g}<br>accuracy %{y:.3f}<br>%{customdata[0]} tokens, "
                                      "%{customdata[1]} steps<extra>%{fullData.name}</extra>")
    largest = float(curves["alpha"].max()) or 1.0
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10), title="Token accuracy, entry by entry",
                      xaxis=dict(title="alpha", range=[-0.04 * largest, 1.04 * largest]),
                      yaxis=dict(range=[-0.02, 1.04], title="mean accuracy"), legend=dict(font=dict(size=10)))
    return fig


def flip_figure(rates: pd.DataFrame, tokens: list[str], title: str) -> go.Figure:
    """rates [position x alpha] -> heatmap with alpha on y (one row per grid value) and "i:token" on x."""
    # Plotly reads tick labels as HTML, so a token like "<b" must be escaped to show as typed.
    labels = [f"{i}:{plotly_text(visible_token(token))}" for i, token in enumerate(tokens)]
    alpha_labels = [f"{alpha:g}" for alpha in rates.columns]
    fig = go.Figure(go.Heatmap(
        z=rates.T.to_numpy(), x=labels, y=alpha_labels, zmin=0, zmax=1, colorscale="Reds",
        colorbar=dict(title="flipped"),
        hovertemplate="token %{x}<br>alpha %{y}<br>wrong in %{z:.0%} of draws<extra></extra>"))
    fig.update_layout(height=160 + 28 * len(alpha_labels), margin=dict(l=10, r=10, t=40, b=10), title=title,
                      xaxis=dict(title="position:token", type="category", tickangle=-60),
                      yaxis=dict(title="alpha", type="category"))
    return fig
