"""Small drawing helpers shared by pages: user text shown as text, tokens as escaped HTML, errors in one line,
downloads of figures and tables."""

from __future__ import annotations

import html
import io
import json
import os
import re
from typing import Callable

import pandas as pd
import streamlit as st

from core.figures.reconstruct import tokens_html

DEBUG_ENV = "PROTOTOKENS_DEBUG"
# A page's own controls pass bind=URL: Streamlit keeps their value in the URL's query string (the widget key is the
# parameter; a default value leaves it out), so a copied link reopens the page as it was, controls and all.
URL = "query-params"
PUBLICATION_KEY = "publication"  # the sidebar's switch: downloaded figures and reports in core.figures' publication style

# Every ASCII punctuation character: CommonMark lets a backslash make any of them literal.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# Streamlit turns :name: into an emoji and :material/name: into an icon after Markdown is parsed, so an escaped
# colon still makes one; a word joiner (invisible) after a colon that starts a word breaks the pattern.
_SHORTCODE_START = re.compile(r"\\:(?=[\w/])")


def plain(text: object) -> str:
    """``text`` (user text, a file name, an error quoting either) made literal inside Streamlit Markdown.

    For every Markdown context: st.markdown / st.caption / st.info / st.warning / st.error / st.toast, widget
    labels, radio and select_slider options, progress and spinner texts. Markdown, LaTeX ($...$), HTML,
    links, images, :color[...] directives and :shortcodes: all show as typed; runs of whitespace (newlines
    included) become one space, so a text cannot start a heading, a list or a code block either.
    """
    one_line = " ".join(str(text).split())
    return _SHORTCODE_START.sub(lambda _: "\\:\u2060", _MARKDOWN_PUNCTUATION.sub(r"\\\1", one_line))


def debug_enabled() -> bool:
    """PROTOTOKENS_DEBUG=1 in the environment: errors show their traceback too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def show_error(message: object, exc: BaseException | None = None, traceback_text: str | None = None,
               warning: bool = False) -> None:
    """One line for the user (as text); the exception's traceback only with PROTOTOKENS_DEBUG=1."""
    (st.warning if warning else st.error)(plain(message))
    if debug_enabled():
        if exc is not None:
            st.exception(exc)
        elif traceback_text:
            st.code(traceback_text, language=None)


def show_tokens(tokens: list[str], correct: list[bool] | None = None, title: str | None = None) -> None:
    st.html(tokens_html(tokens, correct, title))


def download_csv(df: pd.DataFrame, filename: str, label: str | None = None, key: str | None = None) -> None:
    """A table as CSV, written when the button is pressed (40,000 map rows take a while: not at every rerun)."""
    st.download_button(label or f"Download {filename}", lambda: df.to_csv(index=False).encode(), filename,
                       "text/csv", key=key or f"dl_{filename}")


def download_json(obj, filename: str, label: str | None = None, key: str | None = None) -> None:
    st.download_button(label or f"Download {filename}", json.dumps(obj, indent=1, ensure_ascii=False).encode(),
                       filename, "application/json", key=key or f"dl_{filename}")


def download_figure(fig, filename: str, label: str | None = None, key: str | None = None) -> None:
    """A plotly figure's downloads, in a popover: a standalone HTML file (plotly.js included, opens offline), and
    SVG and PNG at a slide's size through kaleido (core.figures), in the publication style when the sidebar's
    switch is on. Each file is written when its button is pressed (a map of 10,000 points takes a while: not at
    every rerun). Without Chromium or kaleido the SVG and PNG buttons are disabled and say why."""
    from core.figures import FORMATS, MIME, ExportError, export_figure, publication_style, static_export_problem

    stem = filename.removesuffix(".html")
    key = key or f"dl_{stem}"
    publication = bool(st.session_state.get(PUBLICATION_KEY))

    def as_html() -> bytes:
        buffer = io.StringIO()
        (publication_style(fig) if publication else fig).write_html(buffer, include_plotlyjs=True, full_html=True)
        return buffer.getvalue().encode()

    def static(fmt: str) -> Callable[[], bytes]:
        def make() -> bytes:
            try:
                return export_figure(fig, fmt, publication=publication)
            except ExportError as exc:  # shown as a one-line file rather than a traceback in the page
                return f"{exc}\n".encode()
        return make

    problem = static_export_problem()
    with st.popover(label or f"Download {stem}"):
        st.download_button("HTML (interactive)", as_html, f"{stem}.html", MIME["html"], key=key)
        for fmt in FORMATS:
            st.download_button(fmt.upper(), static(fmt), f"{stem}.{fmt}", MIME[fmt], key=f"{key}_{fmt}",
                               disabled=problem is not None, help=problem or
                               f"{fmt.upper()} at a slide's size" + (", publication style" if publication else
                                                                   " (the sidebar switches to a publication style)"))
        if problem:
            st.caption(plain(problem))


def choose_text_set(key_prefix: str, names: list[str], load: Callable[[str], pd.DataFrame],
                    format_func: Callable[[str], str], default: int = 0) -> tuple[str | None, pd.DataFrame]:
    """The "Text set" chooser of the set pages: a built-in set by name, or an uploaded CSV / JSONL file.

    Returns (set name or None for an upload, the set's frame with text, group, kind). Stops the page with a
    message while nothing is uploaded or when the file cannot be read (the message names the row and column).
    """
    from core.texts.textsets import KINDS, MAX_ROWS, MAX_UPLOAD_MB, TextSetError, parse_text_set

    # One above the other, each the page's width: a set's label (what it holds, how much of it ships pre-fitted)
    # is a long line, and a column cut it.
    source = st.radio("Text set", ["Built-in", "Upload"], horizontal=True, key=f"{key_prefix}_source")
    if source == "Built-in":
        name = st.selectbox("Built-in set", names, index=default, key=f"{key_prefix}_set", format_func=format_func,
                            bind=URL)
        return name, load(name)
    upload = st.file_uploader(
        "CSV or JSONL with columns text, group, kind", type=["csv", "jsonl", "json", "txt"],
        key=f"{key_prefix}_upload",
        help=f"text is required; group (colour and silhouette label) and kind ({', '.join(KINDS)}; the marker) "
             f"are optional. CSV needs a header row; JSONL has one object per line. At most {MAX_UPLOAD_MB} MB and "
             f"{MAX_ROWS:,} texts per file.")
    if upload is None:
        st.info("Upload a file to use its texts here, or pick a built-in set.")
        st.stop()
    try:
        return None, parse_text_set(upload.getvalue(), upload.name)
    except TextSetError as exc:
        show_error(f"Cannot read this file: {exc}", exc)
        st.stop()


def download_report(make: Callable[[bool], str], filename: str, key: str, label: str = "Report (HTML)") -> None:
    """The self-contained HTML report (core.report) of what the page shows, made when the button is pressed:
    make(publication) returns the page, publication following the sidebar's switch. A report that cannot be made
    downloads as a one-line HTML page saying why."""
    from core.report import ReportError

    def data() -> bytes:
        try:
            return make(bool(st.session_state.get(PUBLICATION_KEY))).encode()
        except (ReportError, ValueError) as exc:
            return f"<!DOCTYPE html><p>No report: {html.escape(str(exc))}</p>\n".encode()

    st.download_button(label, data, filename, "text/html", key=key, icon=":material/description:",
                       help="One HTML file with everything shown here for it (figures interactive), its settings and "
                            "the papers' reference numbers; it opens offline, in any browser.")
