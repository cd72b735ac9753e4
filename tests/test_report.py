"""core.report: one self-contained HTML file for an entry or a set, and `python -m core report`."""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from core.__main__ import main
from core.analyses.attention import run_attention
from core.analyses.noise import NoiseSettings, run_noise
from core.engine.cache import ProtoCache
from core.engine.fit import fit_and_cache, preset
from core.engine.models import TINY_MODEL
from core.report import REFERENCES, ReportError, entry_report, find_entry, set_report

TEXTS = ["Hello <b>world</b> & more", "Rain on the bridge", "A cat on a mat"]
PLOTLY_MARKER = "plotly.js v"  # the banner at the top of the inlined library


@pytest.fixture(scope="module")
def stocked(tiny_lm, tmp_path_factory):
    cache = ProtoCache(tmp_path_factory.mktemp("report-cache"))
    outcomes = fit_and_cache(tiny_lm, TEXTS, preset("fast", max_steps=300), cache)
    return cache, [o.entry for o in outcomes]


def test_entry_report_holds_the_escaped_text_coloured_tokens_curves_settings_and_references(tiny_lm, stocked):
    cache, entries = stocked
    page = entry_report(tiny_lm, entries[0], cache)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "<b>world</b>" not in page and "Hello &lt;b&gt;world&lt;/b&gt; &amp; more" in page
    assert page.count(PLOTLY_MARKER) == 1  # plotly.js inline, once
    assert 'id="figure-1"' in page and "token accuracy" in page  # the fit curves
    assert "#1b7f3b" in page or "#c0392b" in page  # coloured tokens
    assert entries[0].key in page and tiny_lm.identity in page
    for paper, what, value in REFERENCES:  # every reference row, escaped like all text
        assert f"<td>{html.escape(paper)}</td><td>{html.escape(what)}</td><td>{html.escape(value)}</td>" in page
    # Nothing computed for it yet: the report says so instead of computing.
    assert "Not computed for this entry yet: run it on the Noise page" in page
    assert "Not computed for this entry yet: open it on the Attention page" in page
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?://', page)


def test_entry_report_shows_the_cached_noise_and_attention(tiny_lm, stocked):
    cache, entries = stocked
    run_noise(tiny_lm, [entries[1]], NoiseSettings(), cache=cache)
    run_attention(tiny_lm, entries[1], cache)
    page = entry_report(tiny_lm, entries[1], cache, publication=True)
    assert "Not computed" not in page
    assert page.count('id="figure-') == 4  # curves, noise accuracy, noise prefix, attention
    assert "Relative correct prefix" in page and "layer \\u00d7 position" in page  # plotly writes JSON escapes
    assert page.count(PLOTLY_MARKER) == 1
    assert '"colorway":["#0072B2"' in page.replace(" ", "")  # the publication palette


def test_a_report_refuses_an_entry_of_another_model(tiny_lm, stocked):
    from dataclasses import replace

    cache, entries = stocked
    with pytest.raises(ReportError, match="another model"):
        entry_report(tiny_lm, replace(entries[0], model="someone-else"), cache)


def test_set_report_lists_every_text_and_maps_the_fitted_ones(tiny_lm, stocked):
    cache, entries = stocked
    frame = pd.DataFrame({"text": [*TEXTS, "never fitted"], "group": ["a", "b", "a", "b"], "kind": "original"})
    rows = [*entries, None]
    converged = [e for e in entries if e.metrics.get("converged")]
    page = set_report(tiny_lm, "my <set>", frame, rows, cache)
    assert "set my &lt;set&gt;" in page and "never fitted" in page and "not fitted" in page
    assert f"4 texts, 3 fitted, {len(converged)} converged" in page
    if len(converged) >= 3:
        assert "2-D maps (pca" in page  # no cached map: a PCA one, made here
    with pytest.raises(ReportError, match="Nothing of the set"):
        set_report(tiny_lm, "empty", frame, [None] * 4, cache)


def test_find_entry_takes_a_key_or_a_unique_prefix(tiny_lm, stocked):
    cache, entries = stocked
    assert find_entry(cache, tiny_lm, entries[0].key).key == entries[0].key
    assert find_entry(cache, tiny_lm, entries[0].key[:12].upper()).key == entries[0].key
    with pytest.raises(ReportError, match="No entry of"):
        find_entry(cache, tiny_lm, "0" * 8 if not entries[0].key.startswith("0" * 8) else "f" * 8)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_find_entry_rejects_anything_but_hex_keys_without_reading_a_file(tiny_lm, tmp_path_factory, raw):
    cache = ProtoCache(tmp_path_factory.mktemp("report-empty"))
    key = raw.strip().lower()
    try:
        find_entry(cache, tiny_lm, raw)
    except ReportError as exc:
        assert "\n" not in str(exc)
        well_formed = 8 <= len(key) <= 64 and all(c in "0123456789abcdef" for c in key)
        assert ("is not an entry key" in str(exc)) != well_formed
    else:
        pytest.fail("an empty cache found an entry")


def test_cli_report_writes_the_file_and_says_why_in_one_line(tiny_lm, stocked, tmp_path, capsys):
    cache, entries = stocked
    out = tmp_path / "r.html"
    assert main(["report", "--model", TINY_MODEL, "--cache", str(cache.root), "--entry", entries[0].key[:10],
                 "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8").count(PLOTLY_MARKER) == 1
    assert main(["report", "--model", TINY_MODEL, "--cache", str(cache.root), "--text", TEXTS[2], "--preset", "fast",
                 "-o", str(out)]) == 2  # cached with max_steps=300, not with the preset's own settings
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: This text is not cached with the fast preset")
    assert main(["report", "--model", TINY_MODEL, "--cache", str(cache.root), "--entry", "../../etc/passwd",
                 "-o", str(out)]) == 2
    assert "is not an entry key" in capsys.readouterr().err
    assert main(["report", "--model", TINY_MODEL, "--cache", str(cache.root), "-o", str(out)]) == 2
    assert "give one of --entry" in capsys.readouterr().err
    assert main(["report", "--model", TINY_MODEL, "--cache", str(cache.root), "--set", "nope", "-o", str(out)]) == 2
    assert "No set named 'nope'" in capsys.readouterr().err


def test_figures_report_shows_a_page_s_figures_tables_and_settings(tiny_lm):
    import plotly.graph_objects as go

    from core.report import figures_report

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    fig.update_layout(title="Trade-off of <script>")
    page = figures_report(tiny_lm, "a sweep of <set>", [("Trade-off", fig), ("The sweep", pd.DataFrame({"λ": [0.1]})),
                                                       ("Note", "<b>plain</b>")], settings=[("teacher", "MiniLM")])
    assert page.count(PLOTLY_MARKER) == 1 and 'id="figure-1"' in page and "<td>0.1</td>" in page
    assert "sweep of &lt;set&gt;" in page and "&lt;b&gt;plain&lt;/b&gt;" in page and "<td>MiniLM</td>" in page
    assert "<script>" not in page.split("</script>")[-1]  # after the inlined library, no raw user markup


def test_reports_count_as_asked_es_bos_prediction_included(bos_lm, tmp_path):
    cache = ProtoCache(tmp_path / "bos-report")
    [outcome] = fit_and_cache(bos_lm, ["Hi"], preset("fast", max_steps=300), cache)
    entry = outcome.entry
    n, hit = entry.n_tokens, entry.metrics["bos_correct"]
    lab = entry_report(bos_lm, entry, cache)
    seed = entry_report(bos_lm, entry, cache, count="bos")
    assert f"over the {n} text positions" in lab and "BOS prediction first" not in lab
    assert f"of {n + 1} correct" in seed and f"e's BOS prediction first ({'right' if hit else 'wrong'})" in seed
    frame = pd.DataFrame({"text": ["Hi"], "group": ["g"], "kind": ["original"]})
    expected = (entry.metrics["accuracy"] * n + hit) / (n + 1)
    assert f"mean accuracy {expected:.3f}. Accuracy over N + 1" in set_report(bos_lm, "s", frame, [entry], cache,
                                                                             count="bos")
