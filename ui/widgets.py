"""Small drawing helpers shared by pages: user text shown as text, tokens as escaped HTML, errors in one line,
downloads of figures and tables."""

from __future__ import annotations

import html
import io
import json
import os
import re
import textwrap
from typing import Callable

import pandas as pd
import streamlit as st

CORRECT_COLOUR = "#1b7f3b"
WRONG_COLOUR = "#c0392b"
NEUTRAL_COLOUR = "#555"
DEBUG_ENV = "PROTOTOKENS_DEBUG"

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


def plotly_text(text: object) -> str:
    """``text`` for a plotly string that is read as HTML (hover texts, tick labels, legend names, titles)."""
    return html.escape(str(text), quote=False)


def hover_text(text: object, width: int = 60) -> str:
    """User text for a plotly hover: HTML-escaped and wrapped into lines of about ``width`` characters."""
    return "<br>".join(plotly_text(line) for line in textwrap.wrap(str(text), width)) or plotly_text(text)


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


def visible_token(token: str) -> str:
    """Whitespace made visible so a token made of spaces or newlines is still seen."""
    return token.replace("\n", "\u21b5").replace("\t", "\u2192") or "\u2205"


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
    """A plotly figure as a standalone HTML file (plotly.js included, opens offline), written when the button is
    pressed (a map of 10,000 points takes a while to write: not at every rerun)."""
    def html() -> bytes:
        buffer = io.StringIO()
        fig.write_html(buffer, include_plotlyjs=True, full_html=True)
        return buffer.getvalue().encode()

    st.download_button(label or f"Download {filename}", html, filename, "text/html", key=key or f"dl_{filename}")


def choose_text_set(key_prefix: str, names: list[str], load: Callable[[str], pd.DataFrame],
                    format_func: Callable[[str], str], default: int = 0) -> tuple[str | None, pd.DataFrame]:
    """The "Text set" chooser of the set pages: a built-in set by name, or an uploaded CSV / JSONL file.

    Returns (set name or None for an upload, the set's frame with text, group, kind). Stops the page with a
    message while nothing is uploaded or when the file cannot be read (the message names the row and column).
    """
    from core.texts.textsets import KINDS, MAX_ROWS, MAX_UPLOAD_MB, TextSetError, parse_text_set

    c_source, c_set = st.columns([1, 3])
    source = c_source.radio("Text set", ["Built-in", "Upload"], horizontal=True, key=f"{key_prefix}_source")
    if source == "Built-in":
        name = c_set.selectbox("Built-in set", names, index=default, key=f"{key_prefix}_set", format_func=format_func)
        return name, load(name)
    upload = c_set.file_uploader(
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
