"""The dashboard with input it must not trust: links naming bad entries, user text full of Markdown and HTML,
caches that cannot be written, unreadable cache files. AppTests on the tiny random model."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
from dataclasses import replace

import pytest

from core.engine.cache import ENTRY_DIR, CacheEntry, CacheWriteError, ProtoCache
from core.engine.fit import fit_and_cache, preset
from tests.conftest import REPO, open_page
from core.figures import hover_text, plotly_text
from ui.widgets import plain

# Markdown, LaTeX, a link, a remote image, HTML and Streamlit's own directives: all must show as typed.
NASTY = "$5 or $6 [link](http://x) ![img](http://x/a.png) <b>bold</b> **star**"
RECONSTRUCT, NOISE, ATTENTION = "pages/reconstruct.py", "pages/noise.py", "pages/attention.py"
EMBEDDINGS, REGULARISERS = "pages/embeddings.py", "pages/regularisers.py"
QUICK = preset("first-paper", max_steps=3)  # accuracy does not matter here


def _key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _values(elements) -> list[str]:
    return [str(element.value) for element in elements]


def _current(at) -> str | None:
    return at.session_state["current_entry"] if "current_entry" in at.session_state else None


def _select_cached_row(at, keys: list[str], key: str) -> None:
    """Select ``key``'s row of the Reconstruct page's cached-entries table (keys: the table's rows)."""
    widget = "cached_table_" + hashlib.sha256(" ".join(keys).encode()).hexdigest()[:12]  # as the page names it
    at.session_state[widget] = {"selection": {"rows": [keys.index(key)], "columns": []}}
    at.run()


def _figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _shown(markdown_source: str) -> str:
    """What a CommonMark renderer shows for ``markdown_source``, and the HTML tags it makes."""
    import markdown_it

    rendered = markdown_it.MarkdownIt("commonmark").enable("strikethrough").render(markdown_source)
    return html.unescape(re.sub(r"<[^>]+>", "", rendered)).replace("\u2060", "").strip()


def _markdown_elements(at) -> list[str]:
    """The sources of every element Streamlit renders as Markdown, main area and sidebar."""
    elements = [at.markdown, at.caption, at.info, at.warning, at.error, at.success,
                at.sidebar.markdown, at.sidebar.caption, at.sidebar.warning, at.sidebar.error]
    return [value for kind in elements for value in _values(kind)]


@pytest.fixture(scope="module")
def fitted_root(tiny_lm, tmp_path_factory):
    """Two entries of the tiny model (a plain text and NASTY), fitted once per module."""
    root = tmp_path_factory.mktemp("ui-trust-fit")
    fit_and_cache(tiny_lm, ["Hello world", NASTY], QUICK, ProtoCache(root))
    return root


@pytest.fixture
def entries(fitted_root, app_cache) -> dict[str, CacheEntry]:
    """The module's entries copied into this test's app cache, by text."""
    shutil.copytree(fitted_root / ENTRY_DIR, app_cache.root / ENTRY_DIR)
    return {meta.text: app_cache.get(meta.key) for meta in app_cache.list()}


# ---- 2. user text as text: the helpers ------------------------------------------------------------------

def test_plain_and_plotly_text_show_user_text_as_typed():
    pytest.importorskip("markdown_it")
    for text in (NASTY, ":smile: :material/home: :red[red] :blue-background[x]", "# heading", "- item",
                 "1. first", "> quote", "`code` ~~strike~~ &amp; back\\slash | a | b |", "<script>x</script>"):
        source = plain(text)
        assert _shown(source) == text, source
        assert "\\$" in plain("$x$") and "$" not in plain("$x$").replace("\\$", "")  # no LaTeX
        assert not re.search(r"(?<!\\):\w", source.replace("\u2060", "\\"))  # no :shortcode: or :directive[
    assert _shown(plain("two\n\n    lines")) == "two lines"  # no paragraph, no indented code block
    assert hover_text("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    assert "<br>" in hover_text("word " * 30) and "<" not in hover_text("a <b> " * 30).replace("<br>", "")
    assert plotly_text("<i>g</i> %{x}") == "&lt;i&gt;g&lt;/i&gt; %{x}"


# ---- 1. ?entry= in the URL --------------------------------------------------------------------------------

def test_bad_entry_links_show_a_notice_and_open_nothing(entries, app_cache):
    good = entries["Hello world"]
    other = replace(good, key=_key("other model"), model="someone/other-model@abc", model_name="Other <b>model</b>")
    app_cache.put(other)
    broken = replace(good, key=_key("nan"), e=good.e * float("nan"))
    app_cache.put(broken)
    narrow = replace(good, key=_key("narrow"), e=good.e[:16].clone(), m=good.m[:16].clone())  # "this" model, 16 wide
    app_cache.put(narrow)
    cases = [  # (link, words of the notice, whether the link stays in the URL)
        ("../../somewhere/x", "is not a cache key", False),
        ("a" * 5000, "is not a cache key", False),
        ("A" * 64, "is not a cache key", False),
        (_key("never fitted"), "is not in this cache", False),
        (broken.key, "is not in this cache", False),
        (narrow.key, "does not fit tiny-random-llama", False),
        (other.key, "was fitted with Other", True),
    ]
    for link, words, kept in cases:
        at = open_page(RECONSTRUCT, entry_key=link)
        assert not at.exception, (link[:40], at.exception)
        notices = [w for w in _values(at.warning) if words in _shown(w)]
        assert len(notices) == 1 and len(notices[0]) < 400, (link[:40], _values(at.warning))
        assert _current(at) is None
        assert not [s for s in at.subheader if s.value == "Current entry"]
        assert (at.query_params.get("entry") is not None) == kept, link[:40]
    # The broken entry's file is named in the sidebar, once, as text.
    at = open_page(RECONSTRUCT, entry_key=broken.key)
    named = [w for w in _values(at.sidebar.warning) if f"{broken.key}.safetensors" in _shown(w)]
    assert len(named) == 1 and "NaN" in _shown(named[0])
    # A good link still opens its entry.
    at = open_page(RECONSTRUCT, entry_key=good.key)
    assert not at.exception and not [w for w in _values(at.warning) if "link" in w]
    assert _current(at) == good.key
    assert [s for s in at.subheader if s.value == "Current entry"]


def test_a_deleted_entry_does_not_come_back(entries, app_cache, tiny_lm, tmp_path, monkeypatch):
    import ui.state

    shipped = ProtoCache(tmp_path / "shipped")
    [kept] = fit_and_cache(tiny_lm, ["Shipped text"], QUICK, shipped)
    monkeypatch.setattr(ui.state, "SHIPPED_ROOT", tmp_path / "shipped")
    page_cache = ProtoCache(app_cache.root, shipped=tmp_path / "shipped")  # what the page lists
    rows = [m.key for m in page_cache.list(tiny_lm.identity)]
    newest = rows[0]
    at = open_page(RECONSTRUCT, entry_key=newest)
    _select_cached_row(at, rows, newest)
    assert _current(at) == newest
    at.button(key="delete_entry").click().run()
    assert not at.exception, at.exception
    assert app_cache.get(newest) is None
    assert "entry" not in at.query_params and _current(at) is None
    at.run()  # the table's old selection must not make the entry that moved up the current one
    assert _current(at) is None and "entry" not in at.query_params

    # A pre-fitted (shipped) entry cannot be deleted: no button that deletes nothing and leaves it current.
    rows = [m.key for m in page_cache.list(tiny_lm.identity)]
    _select_cached_row(at, rows, kept.entry.key)
    assert not [b for b in at.button if b.key == "delete_entry"]
    assert any("cannot be deleted" in c for c in _values(at.caption))

    # Clearing the model's cache from the sidebar takes the current entry out of the URL too.
    own = next(key for key in rows if key != kept.entry.key)
    _select_cached_row(at, rows, own)
    assert at.query_params.get("entry") == own
    at.sidebar.button(key="clear_cache").click().run()
    at.sidebar.button(key="clear_yes").click().run()
    assert not at.exception, at.exception
    assert "entry" not in at.query_params and _current(at) is None
    assert app_cache.get(own) is None


# ---- 2. user text as text on the pages --------------------------------------------------------------------

def _assert_no_raw_markdown(at) -> None:
    for source in _markdown_elements(at):
        assert "<b>" not in source and "](http://x" not in source and "**star**" not in source, source
        if "5 or" in source:
            assert "\\$5 or \\$6" in source, source  # no LaTeX


def test_user_text_shows_as_typed_on_reconstruct_noise_and_attention(entries):
    nasty = entries[NASTY]
    at = open_page(RECONSTRUCT, entry_key=nasty.key)
    assert not at.exception, at.exception
    _assert_no_raw_markdown(at)
    label = next(c for c in _values(at.caption) if "from the cache" in c)
    assert NASTY in _shown(label)  # the caption shows the text literally
    assert at.get("code")  # the decoded text is shown as code, not Markdown

    at.switch_page(NOISE).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="noise_entry").format_func(nasty.key).startswith(NASTY)  # option labels: plain text
    at.number_input(key="noise_draws").set_value(1)
    at.text_input(key="noise_alphas").set_value("0").run()
    at.button(key="noise_run").click().run()
    assert not at.exception, at.exception
    _assert_no_raw_markdown(at)
    heatmap = _figures(at)[-1]["data"][0]
    labels = " ".join(heatmap["x"])
    assert "&lt;" in labels and "<" not in labels  # plotly reads tick labels as HTML

    at.switch_page(ATTENTION).run()
    assert not at.exception, at.exception
    _assert_no_raw_markdown(at)
    for figure in _figures(at)[:2]:
        trace = figure["data"][0]
        ticks = " ".join(figure["layout"]["xaxis"]["ticktext"]) + " ".join(map(str, trace["x"]))
        assert "&lt;" in ticks and "<" not in ticks
        notes = json.dumps(trace.get("customdata", ""))
        assert "<b" not in notes


def test_uploaded_texts_and_groups_show_as_typed_on_the_embeddings_maps(app_cache, tiny_lm, monkeypatch):
    import ui.state

    group = "<i>g</i> %{x} $1"
    texts = [NASTY, "Hi <b>cat</b>", "Go home", "Run now"]
    rows = [f'"{t}",{g},original' for t, g in zip(texts, [group, group, "home", "home"])]
    upload = ("text,group,kind\n" + "\n".join(rows) + "\n").encode()
    fit_and_cache(tiny_lm, texts, preset("first-paper", max_steps=5), app_cache)
    monkeypatch.setattr(ui.state, "fit_config", lambda: preset("first-paper", max_steps=5))
    at = open_page(RECONSTRUCT)
    at.switch_page(EMBEDDINGS).run()
    at.radio(key="emb_source").set_value("Upload").run()
    at.file_uploader(key="emb_upload").set_value(("my <b>file</b>.csv", upload, "text/csv")).run()
    at.slider(key="emb_min_acc").set_value(0.0).run()
    assert not at.exception, at.exception
    _assert_no_raw_markdown(at)
    maps = _figures(at)[0]
    points = [trace for trace in maps["data"] if trace.get("customdata")]
    assert points
    for trace in points:
        assert "<i>" not in trace["name"] and "%{x}" not in trace["hovertemplate"].replace("%{x:", "")
        hovers = json.dumps(trace["customdata"])
        assert "<b>" not in hovers and "<i>" not in hovers
    assert any("&lt;i&gt;g&lt;/i&gt;" in trace["name"] for trace in points)
    assert any("&lt;b&gt;bold&lt;/b&gt;" in json.dumps(trace["customdata"]) for trace in points)


# ---- 3. a cache that cannot be written --------------------------------------------------------------------

def _not_a_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(blocker))
    return blocker


def test_fit_on_an_unwritable_cache_says_why_at_once(app_cache, tmp_path, monkeypatch):
    blocker = _not_a_folder(tmp_path, monkeypatch)
    at = open_page(RECONSTRUCT)
    at.text_area(key="text").set_value("Hi there").run()
    at.button[0].click().run()  # Fit
    assert not at.exception, at.exception
    [error] = [e for e in _values(at.error) if "cannot be written" in e]
    assert str(blocker) in _shown(error) and "\n" not in error
    assert "job::reconstruct-single" not in at.session_state  # nothing ran

    for page, button in ((EMBEDDINGS, "emb_fit"), (REGULARISERS, "reg_fit")):
        at.switch_page(page).run()
        if page == EMBEDDINGS:
            at.selectbox(key="emb_set").set_value("syntax").run()  # the default set is too long for the tiny model
        at.button(key=button).click().run()
        assert not at.exception, (page, at.exception)
        assert [e for e in _values(at.error) if "cannot be written" in e], page

    # With PROTOTOKENS_DEBUG=1 the traceback shows too.
    monkeypatch.setenv("PROTOTOKENS_DEBUG", "1")
    at.button(key="reg_fit").click().run()
    assert [e for e in _values(at.error) if "cannot be written" in e]
    assert [exc for exc in at.exception if exc.proto.type == "CacheWriteError"]


def test_a_write_that_fails_mid_fit_keeps_the_result_for_download(app_cache, monkeypatch):
    import ui.state

    def full_disk(self, entry):
        raise CacheWriteError(f"Could not write {entry.key[:12]}... to the cache at {self.root}: No space left.")

    monkeypatch.setattr(ProtoCache, "put", full_disk)
    monkeypatch.setattr(ui.state, "fit_config", lambda: preset("first-paper", max_steps=5))
    at = open_page(RECONSTRUCT)
    at.text_area(key="text").set_value("Hi there").run()
    at.button[0].click().run()  # Fit
    snap = at.session_state["job::reconstruct-single"].wait(120)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    [warning] = [w for w in _values(at.warning) if "Not saved to the cache" in w]
    assert _shown(warning).endswith("No space left.; download e and m below.")
    assert [s for s in at.subheader if s.value == "Current entry"]
    labels = [b.proto.label for b in at.get("download_button")]
    assert {"e and m (safetensors)", "Metrics and history (JSON)", "History (CSV)"} <= set(labels)
    assert "Report (HTML)" not in labels  # a report reads the cache, which does not hold this entry
    assert "entry" not in at.query_params  # a link to it would open nothing


# ---- 4. the sidebar's warnings ------------------------------------------------------------------------------

def test_unreadable_cache_files_are_named_once_in_the_sidebar(entries, app_cache, tmp_path, monkeypatch):
    import ui.state

    bad = app_cache.entries_dir / f"{_key('bad')}.json"
    bad.write_text("{not json")
    shipped = tmp_path / "shipped" / ENTRY_DIR
    shipped.mkdir(parents=True)
    bad_shipped = shipped / f"{_key('bad shipped')}.json"
    bad_shipped.write_text(json.dumps({"key": bad_shipped.stem, "text": "no metrics"}))
    monkeypatch.setattr(ui.state, "SHIPPED_ROOT", tmp_path / "shipped")
    at = open_page(RECONSTRUCT)
    at.run()
    assert not at.exception, at.exception
    warnings = _values(at.sidebar.warning)
    for name in (bad.name, bad_shipped.name):
        assert len([w for w in warnings if name in _shown(w)]) == 1, (name, warnings)
    assert len(warnings) == len(set(warnings)) == 2
