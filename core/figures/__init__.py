"""Figures for slides and papers: a light "publication" style, and static SVG / PNG export through plotly's kaleido
with the system's Chromium (no download: where none is found, ``static_export_problem`` says so in one line).

Every page's figure goes through here for its SVG and PNG downloads (ui.widgets.download_figure), and the report
(core.report) uses the same style. No Streamlit.
"""

from __future__ import annotations

import copy
import functools
import html
import textwrap
import threading

import plotly.graph_objects as go
import plotly.io as pio

FORMATS = ("svg", "png")
MIME = {"svg": "image/svg+xml", "png": "image/png", "html": "text/html"}
# A 16:9 slide at 1280 x 720 CSS pixels; PNG at scale 2 (2560 x 1440), sharp on a projector and in a paper.
SLIDE_WIDTH, SLIDE_HEIGHT, PNG_SCALE = 1280, 720, 2
# Okabe & Ito's colour-blind-safe palette (Color Universal Design), black last.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
PUBLICATION_FONT = 18


def plotly_text(text: object) -> str:
    """``text`` for a plotly string that is read as HTML (hover texts, tick labels, legend names, titles)."""
    return html.escape(str(text), quote=False)


def hover_text(text: object, width: int = 60) -> str:
    """User text for a plotly hover: HTML-escaped and wrapped into lines of about ``width`` characters."""
    return "<br>".join(plotly_text(line) for line in textwrap.wrap(str(text), width)) or plotly_text(text)


def visible_token(token: str) -> str:
    """Whitespace made visible so a token made of spaces or newlines is still seen."""
    return token.replace("\n", "\u21b5").replace("\t", "\u2192") or "\u2205"


class ExportError(RuntimeError):
    """A static figure could not be made (no Chromium, kaleido missing, the browser failed): one line why."""


def publication_style(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` for a slide or a paper: white background, larger type, the Okabe-Ito palette for lines
    and markers (a heatmap keeps its own colour scale), thin grey grids."""
    out = go.Figure(copy.deepcopy(fig.to_dict()))
    out.update_layout(template="simple_white", paper_bgcolor="white", plot_bgcolor="white",
                      font=dict(size=PUBLICATION_FONT, family="Arial, Helvetica, sans-serif", color="black"),
                      colorway=list(OKABE_ITO), title_font=dict(size=PUBLICATION_FONT + 4))
    out.update_xaxes(showgrid=True, gridcolor="#e5e5e5", linecolor="black", ticks="outside")
    out.update_yaxes(showgrid=True, gridcolor="#e5e5e5", linecolor="black", ticks="outside")
    for i, trace in enumerate(out.data):  # explicit colours (the pages set many) move to the palette too
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        if trace.type in ("scatter", "scattergl", "bar"):
            if getattr(trace, "line", None) is not None and trace.line.color is not None:
                trace.line.color = colour
            marker = getattr(trace, "marker", None)
            if marker is not None and isinstance(marker.color, str):
                marker.color = colour
    return out


@functools.lru_cache(maxsize=1)
def _browser() -> str | None:
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def static_export_problem() -> str | None:
    """Why SVG / PNG export cannot run here, in one line; None when it can (kaleido and a Chromium are found)."""
    try:
        import kaleido  # noqa: F401  (only whether it is installed)
    except ImportError:
        return "SVG and PNG need the kaleido package (pip install -r requirements.txt)."
    if _browser() is None:
        return ("SVG and PNG need Chromium or Chrome, and none was found (install Debian's chromium, or set "
                "BROWSER_PATH to a Chrome binary).")
    return None


_export_lock = threading.Lock()  # one kaleido browser at a time: pages rerun in threads


def export_figure(fig: go.Figure, fmt: str, *, publication: bool = False, width: int = SLIDE_WIDTH,
                  height: int | None = None) -> bytes:
    """The figure as SVG or PNG bytes (PNG at PNG_SCALE x), in the publication style if asked. ``height``
    defaults to the figure's own height, else SLIDE_HEIGHT. Raises :class:`ExportError` with one line why."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown figure format {fmt!r}; use one of {', '.join(FORMATS)}.")
    problem = static_export_problem()
    if problem:
        raise ExportError(problem)
    shown = publication_style(fig) if publication else fig
    height = height or fig.layout.height or SLIDE_HEIGHT
    try:
        with _export_lock:
            return pio.to_image(shown, format=fmt, width=width, height=height,
                                scale=PNG_SCALE if fmt == "png" else 1)
    except Exception as exc:  # noqa: BLE001  kaleido raises many kinds; the user gets one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"The {fmt.upper()} export failed: {first}") from exc
