"""A report anyone can open: one self-contained HTML file for an entry or a set (``python -m core report``, and
the Report download of every page).

For an entry: its text, the one-pass reconstruction with every token coloured, the fit's curves and where it
started, the noise curves and the attention heatmap when the cache holds them (a report computes no analysis:
it shows what the pages have shown), its settings, its model's identity, and the papers' reference numbers. For a
set: its entries' table, their accuracy against length, and the 2-D maps of e, m (and the teacher) as the
Embeddings page last drew them (a PCA map where none is cached).

Interactive (plotly.js inline, once), it opens offline and makes no request to any network: every script, style
and figure is in the file. User text is escaped everywhere. No Streamlit.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from core.analyses.noise import PAPER_ACCURACY, PAPER_COUNT, PAPER_PREFIX_REL, PAPER_SETTING
from core.engine.cache import CacheEntry, ProtoCache
from core.engine.models import LoadedModel
from core.engine.reconstruct import COUNT_LABELS, count_note, reconstruct, stored_count
from core.figures import publication_style
from core.figures.reconstruct import curves_figure, tokens_html

REPORT_TITLE = "Proto-token lab report"
MAX_SET_ROWS = 2000  # rows of a set's table in the file; the maps hold every kept text

# The papers' numbers a reader compares against (docs/science.md, A.capacity and B.2).
REFERENCES: tuple[tuple[str, str, str], ...] = (
    ("Mezentsev & Oseledets, arXiv 2505.21189", "A text counts as reconstructed at token accuracy", ">= 0.99"),
    ("Mezentsev & Oseledets, arXiv 2505.21189", "Recipe", "e, m ~ N(0, 1); AdamW lr 0.01, betas (0.9, 0.9), "
                                                          "weight decay 0.01; up to 5000 steps"),
    ("Mezentsev & Oseledets, arXiv 2505.21189", "Longest text reconstructed, m per text / m shared (tokens)",
     "Pythia-160M 128 / 45; Pythia-410M 167 / 32; Pythia-1.4B 128 / 64; Llama-3.2-1B 362 / 181; "
     "Llama-3.2-3B 512 / 256; Llama-3.1-8B 724 / 362"),
    ("Mezentsev & Oseledets, arXiv 2505.21189", "Layouts at N = 256 on Llama-3.2-1B (accuracy)",
     "[e]xN 0.01; [e]x(N/2)[m]x(N/2) 0.01; [e,m]x(N/2) 0.17; [e][m]xN 0.97; [e][m]x(N-1) 0.99"),
    ("Mezentsev & Oseledets, arXiv 2505.21189", "One-step reconstruction vs autoregressive decoding",
     "279x the throughput on average"),
    ("Bondarenko, Palkin & Tikunov, arXiv 2602.18301", "Noise on e, mean token accuracy at alpha 0, 0.05, 0.1, "
                                                       f"0.2, 0.5, 1.0 ({PAPER_SETTING})",
     ", ".join(f"{v:g}" for v in PAPER_ACCURACY.values())),
    ("Bondarenko, Palkin & Tikunov, arXiv 2602.18301", f"Relative correct prefix under noise on e, alpha 0 / 1.0 "
                                                       f"({PAPER_SETTING})",
     " / ".join(f"{v:g}" for v in PAPER_PREFIX_REL.values())),
    ("Bondarenko, Palkin & Tikunov, arXiv 2602.18301", "Their code's fit",
     "bf16 vectors, N(0, 1); AdamW 0.01 / (0.9, 0.9) / 0.01; batches of 8 until every text's best accuracy reaches "
     "0.9, or 2000 steps; e scored against BOS (this lab's seed-paper preset)"),
    ("Bondarenko, Palkin & Tikunov, arXiv 2602.18301", "What the proto-tokens encode",
     "m carries semantic information more strongly than e; relational distillation transfers the teacher's "
     "relations into e without hurting reconstruction"),
)

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Arial, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #666; font-size: 0.9rem; } .text { white-space: pre-wrap; background: #f6f6f6; padding: 0.6rem;
      border-radius: 4px; } table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } .note { color: #666; font-style: italic; }
"""


class ReportError(ValueError):
    """A report could not be made (no such entry, an empty set): one line why."""


@dataclass
class _Figures:
    """Figures to HTML: plotly.js goes inline with the first one only, so the file carries it once."""

    publication: bool
    count: int = 0

    def html(self, fig: go.Figure) -> str:
        shown = publication_style(fig) if self.publication else fig
        self.count += 1
        return shown.to_html(full_html=False, include_plotlyjs=self.count == 1, include_mathjax=False,
                             config={"displaylogo": False, "responsive": True}, default_width="100%",
                             div_id=f"figure-{self.count}")


def _esc(value: object) -> str:
    return html.escape(str(value))


def _table(rows: Sequence[tuple[object, object]] | pd.DataFrame) -> str:
    if isinstance(rows, pd.DataFrame):
        head = "".join(f"<th>{_esc(c)}</th>" for c in rows.columns)
        body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>"
                       for row in rows.itertuples(index=False))
        return f"<table><tr>{head}</tr>{body}</table>"
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows) + "</table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "" if value is None else str(value)


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f'<body><h1>{_esc(title)}</h1><div class="meta">{_esc(subtitle)} · made {made} by Proto-token lab'
            f'</div>{"".join(sections)}</body></html>\n')


def _references() -> str:
    rows = "".join(f"<tr><td>{_esc(paper)}</td><td>{_esc(what)}</td><td>{_esc(value)}</td></tr>"
                   for paper, what, value in REFERENCES)
    return ("<h2>The papers' reference numbers</h2><table><tr><th>paper</th><th>what</th><th>value</th></tr>"
            f"{rows}</table>")


def entry_report(lm: LoadedModel, entry: CacheEntry, cache: ProtoCache | None = None, *,
                 publication: bool = False, count: str = "text") -> str:
    """The HTML report of one entry (see the module docstring). One forward pass (the reconstruction); the noise
    and attention sections show what the cache holds for it, with the pages' default settings. count: how accuracy
    and the correct prefix are counted (core.engine.reconstruct.COUNTS, the sidebar's choice)."""
    from core.analyses.attention import load_attention
    from core.analyses.noise import NoiseSettings, counted_table, load_noise, summarize_noise
    from core.figures.attention import layer_position_figure
    from core.figures.noise import accuracy_figure, prefix_figure

    if entry.model != lm.identity:
        raise ReportError(f"The entry {entry.key[:12]} was fitted on another model ({entry.model}), not {lm.name}.")
    figures = _Figures(publication)
    rec = reconstruct(lm, entry.e, entry.m, list(entry.token_ids), entry.layout)
    target = list(entry.token_ids)
    sections = [f'<h2>Text</h2><div class="text">{_esc(entry.text)}</div>']
    metrics = rec.counted(count)
    over = (f"over {metrics.n_tokens} positions, e's BOS prediction first ({'right' if rec.bos_correct else 'wrong'})"
            if metrics.n_tokens != rec.metrics.n_tokens else f"over the {metrics.n_tokens} text positions")
    sections.append(
        "<h2>One-pass reconstruction</h2>"
        f"<p>Token accuracy {metrics.accuracy:.3f} ({metrics.c_tokens} of {metrics.n_tokens} correct, C_tokens, "
        f"{over}); correct prefix {metrics.correct_prefix}. Green tokens are right, red wrong.</p>"
        + tokens_html(lm.token_strings(rec.token_ids), [p == t for p, t in zip(rec.token_ids, target)],
                      "reconstruction")
        + tokens_html(lm.token_strings(target), None, "target"))
    history = entry.history or {}
    if history.get("step"):
        threshold = float(entry.config.get("threshold", 0.99))
        start = entry.metrics.get("start") or {}
        if start.get("kind") == "nearest":
            began = (f"The fit began from the vectors of the nearest cached text (cosine "
                     f"{float(start.get('similarity', float('nan'))):.2f}): {_esc(start.get('text', ''))}.")
        elif start.get("kind"):
            began = f"The fit began from {_esc(start.get('text') or start.get('kind'))}."
        else:
            began = "The fit began from a random draw."
        sections.append(f"<h2>Fit</h2><p>{entry.metrics.get('steps', '?')} steps, status "
                        f"{_esc(entry.metrics.get('status', '?'))}, {float(entry.metrics.get('wall_time', 0)):.1f} s. "
                        f"{began}</p>" + figures.html(curves_figure(history["step"], history["loss"],
                                                                   history["accuracy"], threshold)))
    noise = load_noise(lm, [entry], NoiseSettings(), cache) if cache is not None else None
    if noise is not None and len(noise):
        summary = summarize_noise(counted_table(noise, count))
        sections.append("<h2>Noise on e</h2><p>The Noise page's default sweep (the seed paper's alphas and four "
                        f"noise types, this lab's protocol, counted over {_esc(COUNT_LABELS[count])}), beside the "
                        f"seed paper's curve ({_esc(PAPER_SETTING)}, counted over "
                        f"{_esc(COUNT_LABELS[PAPER_COUNT])}).</p>"
                        + figures.html(accuracy_figure(summary)) + figures.html(prefix_figure(summary)))
    else:
        sections.append('<h2>Noise on e</h2><p class="note">Not computed for this entry yet: run it on the Noise '
                        "page, then make the report again.</p>")
    attention = load_attention(lm, entry, cache) if cache is not None else None
    if attention is not None:
        sections.append("<h2>Attention to e</h2>" + figures.html(layer_position_figure(attention, "proto", "mean")))
    else:
        sections.append('<h2>Attention to e</h2><p class="note">Not computed for this entry yet: open it on the '
                        "Attention page, then make the report again.</p>")
    sections.append("<h2>Settings and model</h2>" + _table([
        ("model", lm.name), ("model identity", entry.model), ("entry key", entry.key),
        ("tokens", entry.n_tokens), *sorted(entry.config.items()),
        *((f"metric: {k}", v) for k, v in sorted(entry.metrics.items()) if k != "start")]))
    sections.append(_references())
    return _page(REPORT_TITLE, f"{lm.name} · entry {entry.key[:12]}", sections)


def set_report(lm: LoadedModel, name: str, frame: pd.DataFrame, entries: Sequence[CacheEntry | None],
               cache: ProtoCache | None = None, *, publication: bool = False, count: str = "text") -> str:
    """The HTML report of a set: frame (text, group, kind) and its entries, row for row (None: not fitted); accuracy
    counted in one of core.engine.reconstruct.COUNTS (stored_count)."""
    from core.analyses import embeddings as emb

    fitted = [e for e in entries if e is not None]
    if not fitted:
        raise ReportError(f"Nothing of the set {name!r} is fitted for {lm.name}: there is nothing to report.")
    figures = _Figures(publication)
    counts = {e.key: stored_count(e.metrics, e.n_tokens, count) for e in fitted}
    table = pd.DataFrame([{
        "text": text, "group": group, "tokens": e.n_tokens if e else None,
        "accuracy": counts[e.key].accuracy if e else None, "steps": e.metrics.get("steps") if e else None,
        "status": e.metrics.get("status") if e else "not fitted", "key": e.key[:12] if e else "",
    } for text, group, e in zip(frame["text"], frame["group"], entries)])
    converged = sum(bool(e.metrics.get("converged")) for e in fitted)
    sections = [f"<h2>Set</h2><p>{len(frame)} texts, {len(fitted)} fitted, {converged} converged (token accuracy "
                f">= 0.99), mean accuracy {sum(c.accuracy for c in counts.values()) / len(fitted):.3f}."
                + _esc(count_note(count, sum(c.count != count for c in counts.values()))) + "</p>"]
    scatter = go.Figure(go.Scatter(
        x=[e.n_tokens for e in fitted], y=[counts[e.key].accuracy for e in fitted], mode="markers",
        text=[html.escape(e.text[:80]) for e in fitted], hovertemplate="%{text}<br>%{x} tokens, accuracy %{y:.3f}"
                                                                      "<extra></extra>"))
    scatter.update_layout(title="Token accuracy against length", xaxis_title="tokens", yaxis_title="accuracy",
                          height=380, yaxis=dict(range=[-0.02, 1.04]))
    sections.append(figures.html(scatter))
    teacher = emb.load_teacher_embeddings(frame["text"].tolist(), cache) if cache is not None else None
    vectors = emb.assemble_set(frame, list(entries), min_accuracy=emb.DEFAULT_MIN_ACCURACY, teacher=teacher,
                               count=count)
    if vectors.n >= 3:
        maps = emb.load_projections(vectors, vectors.spaces, emb.DEFAULT_METHOD,
                                    perplexity=emb.DEFAULT_PERPLEXITY, cache=cache)
        method = emb.DEFAULT_METHOD
        if maps is None:
            maps, method = emb.project_spaces(vectors, vectors.spaces, "pca"), "pca"
        coords = emb.coordinates_frame(vectors, maps)
        sections.append(f"<h2>2-D maps ({method}, texts fitted to >= {emb.DEFAULT_MIN_ACCURACY})</h2>")
        for space in vectors.spaces:
            part = coords[coords["space"] == space]
            fig = go.Figure()
            for group, rows in part.groupby("group", sort=False):
                fig.add_scatter(x=rows["x"], y=rows["y"], mode="markers", name=html.escape(str(group)),
                                text=[html.escape(t[:80]) for t in rows["text"]],
                                hovertemplate="%{text}<extra>%{fullData.name}</extra>")
            fig.update_layout(title=f"{space}", height=420, xaxis=dict(showticklabels=False),
                              yaxis=dict(showticklabels=False))
            sections.append(figures.html(fig))
        scores = emb.silhouette_table(vectors)
        if len(scores):
            sections.append("<h2>Silhouettes by source text (cosine)</h2>" + _table(scores))
    sections.append("<h2>Entries</h2>" + _table(table.head(MAX_SET_ROWS))
                    + (f'<p class="note">The first {MAX_SET_ROWS} of {len(table)} rows.</p>'
                       if len(table) > MAX_SET_ROWS else ""))
    sections.append(_references())
    return _page(REPORT_TITLE, f"{lm.name} · set {name}", sections)


def find_entry(cache: ProtoCache, lm: LoadedModel, key: str) -> CacheEntry:
    """The entry a report names by its key or the key's first characters (8 or more hex digits, one match);
    nothing but a well-formed key is ever looked up."""
    key = key.strip().lower()
    if not (8 <= len(key) <= 64 and all(c in "0123456789abcdef" for c in key)):
        raise ReportError(f"{key[:70]!r} is not an entry key (8 to 64 hex digits; `python -m core list` shows them).")
    if len(key) < 64:
        matches = [row.key for row in cache.list(lm.identity) if row.key.startswith(key)]
        if len(matches) != 1:
            raise ReportError(f"No entry of {lm.name} has a key starting with {key}." if not matches else
                              f"{len(matches)} entries have keys starting with {key}: give more of the key.")
        key = matches[0]
    entry = cache.get(key, lm.hidden_size)
    if entry is None or entry.model != lm.identity:
        raise ReportError(f"No readable entry {key[:12]} of {lm.name} is in the cache.")
    return entry


def named_set(lm: LoadedModel, name: str, cache: ProtoCache) -> tuple[pd.DataFrame, list[CacheEntry | None]]:
    """A set listed for this model by the shipped manifest or the cache's own (a corpus), its texts and entries."""
    from core.engine.sets import corpus_sets, load_manifest, set_frame
    from core.shipped.prefit import EXAMPLES_SET, prefit_frame
    from core.texts.textsets import BUILTIN_SETS

    listed = {**({n: r for n, r in load_manifest(cache.shipped.root).items() if r.model == lm.identity}
                 if cache.shipped is not None else {}), **corpus_sets(cache.root, lm.identity)}
    record = listed.get(name)
    if record is None:
        known = ", ".join(sorted(listed)) or "none"
        raise ReportError(f"No set named {name!r} is listed for {lm.name} (sets: {known}).")
    frame = (prefit_frame(name) if name in BUILTIN_SETS or name == EXAMPLES_SET else set_frame(record))
    by_text = dict(zip(record.texts, record.keys))
    found = cache.get_many([by_text[t] for t in frame["text"] if t in by_text], lm.hidden_size)
    return frame, [found.get(by_text.get(t, "")) for t in frame["text"]]


def figures_report(lm: LoadedModel, title: str, sections: Sequence[tuple[str, go.Figure | pd.DataFrame | str]], *,
                   settings: Sequence[tuple[object, object]] = (), publication: bool = False) -> str:
    """A report of what a page drew, as it drew it: (heading, figure, table or plain text) sections, the settings
    the page ran with, the model's identity and the papers' reference numbers (the Regularisers page's sweep)."""
    figures = _Figures(publication)
    body = []
    for heading, content in sections:
        if isinstance(content, go.Figure):
            shown = figures.html(content)
        elif isinstance(content, pd.DataFrame):
            shown = _table(content)
        else:
            shown = f"<p>{_esc(content)}</p>"
        body.append(f"<h2>{_esc(heading)}</h2>{shown}")
    body.append("<h2>Settings and model</h2>" + _table([("model", lm.name), ("model identity", lm.identity),
                                                         *settings]))
    body.append(_references())
    return _page(REPORT_TITLE, f"{lm.name} · {title}", body)
