"""The Reconstruct page's figures (and the report's): the fit's loss and accuracy curves, tokens coloured by
whether the one-pass reconstruction got them right. Pure: data in, figure or HTML out."""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures import visible_token

CORRECT_COLOUR = "#1b7f3b"
WRONG_COLOUR = "#c0392b"
NEUTRAL_COLOUR = "#555"


def curves_figure(steps, loss, accuracy, threshold: float) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=steps, y=loss, name="loss", line=dict(color="#7f7f7f"), secondary_y=False)
    fig.add_scatter(x=steps, y=accuracy, name="token accuracy", line=dict(color="#1f77b4"), secondary_y=True)
    fig.add_hline(y=threshold, line=dict(dash="dot", color="#1f77b4"), secondary_y=True,
                  annotation_text=f"stop at {threshold:g}", annotation_position="bottom right")
    fig.update_yaxes(title_text="cross-entropy (log)", type="log", dtick="D2", secondary_y=False)
    # Fixed ticks and no grid of its own: by default plotly syncs this axis's ticks to the log axis's grid,
    # which gives labels like 0.792, 0.85, 0.898 crowded together.
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickmode="array", tickvals=[0, 0.25, 0.5, 0.75, 1],
                     showgrid=False, secondary_y=True)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      legend=dict(orientation="h", y=1.15))
    return fig


def tokens_html(tokens: list[str], correct: list[bool] | None = None, title: str | None = None) -> str:
    """Tokens as boxes, green when correct and red when wrong (neutral without ``correct``).

    Every token is HTML-escaped: texts come from users and from the model.
    """
    spans = []
    for i, token in enumerate(tokens):
        if correct is None:
            colour, background = NEUTRAL_COLOUR, "#f2f2f2"
        elif correct[i]:
            colour, background = CORRECT_COLOUR, "#e3f4e8"
        else:
            colour, background = WRONG_COLOUR, "#fbe4e1"
        spans.append(
            f'<span title="{i}" style="display:inline-block;margin:1px;padding:1px 3px;border-radius:3px;'
            f'font-family:monospace;white-space:pre;color:{colour};background:{background}">'
            f"{html.escape(visible_token(token))}</span>"
        )
    head = f'<div style="font-size:0.8em;color:#666;margin-top:4px">{html.escape(title)}</div>' if title else ""
    return f'{head}<div style="line-height:1.9">{"".join(spans)}</div>'
