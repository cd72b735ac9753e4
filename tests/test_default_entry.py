"""The default current entry (issue 13): while nobody has chosen an entry, the pages show the model's shipped demo
entry, without putting it in the URL; a link or a choice wins over it, and a model nothing ships for gets none.
AppTests on the tiny random model, with a shipped folder of its own."""

from __future__ import annotations

from dataclasses import replace

import pytest

import core.shipped.demo
from core.engine.cache import ProtoCache
from core.engine.fit import fit_and_cache, preset
from core.engine.sets import PrefitSet, write_manifest
from core.shipped.demo import DEMO_SET, demo_entry
from tests.conftest import open_page

RECONSTRUCT, NOISE, ATTENTION = "pages/reconstruct.py", "pages/noise.py", "pages/attention.py"
DEMO, UNCONVERGED, OTHER, MINE = "Hello world", "Go home now", "Good night", "My own text"


@pytest.fixture(scope="module")
def fitted(tiny_lm, tmp_path_factory):
    """Entries of the tiny model, text -> entry: DEMO, OTHER and MINE marked converged, UNCONVERGED not.

    One step each, then marked: which entry is the default depends on its metrics, not on how good its vectors
    are, and a real fit to convergence costs minutes on a loaded 2-core machine."""
    cache = ProtoCache(tmp_path_factory.mktemp("default-entry-fit"), shipped="")
    done = fit_and_cache(tiny_lm, [DEMO, OTHER, MINE, UNCONVERGED], preset("first-paper", max_steps=1), cache)
    entries = {o.entry.text: o.entry for o in done}
    for text in (DEMO, OTHER, MINE):
        entries[text] = replace(entries[text], metrics={**entries[text].metrics, "converged": True})
    assert not entries[UNCONVERGED].metrics["converged"]
    return entries


def _ship(root, lm, entries, texts) -> None:
    """A shipped folder holding ``texts``' entries, listed (in that order) by a manifest set named DEMO_SET."""
    cache = ProtoCache(root, shipped="")
    for text in texts:
        cache.put(entries[text])
    write_manifest(root, PrefitSet(name=DEMO_SET, model=lm.identity, model_name=lm.name, config={},
                                   texts=list(texts), keys=[entries[t].key for t in texts], n_fitted=len(texts)))


@pytest.fixture
def shipped(fitted, tiny_lm, app_cache, tmp_path, monkeypatch):
    """The app (tiny model, empty user cache) with a shipped folder whose demo text is DEMO; returns the entries."""
    import ui.state

    entries = fitted
    root = tmp_path / "shipped"
    _ship(root, tiny_lm, entries, [UNCONVERGED, OTHER, DEMO])
    monkeypatch.setattr(core.shipped.demo, "DEMO_TEXT", DEMO)
    monkeypatch.setattr(ui.state, "SHIPPED_ROOT", root)  # where the app's cache finds its shipped part
    return entries


def _current(at) -> str | None:
    return at.session_state["current_entry"] if "current_entry" in at.session_state else None


def test_a_fresh_session_shows_the_demo_entry_without_a_link(shipped):
    demo = shipped[DEMO]
    at = open_page(RECONSTRUCT)
    assert not at.exception, at.exception
    assert _current(at) == demo.key
    assert "entry" not in at.query_params  # links stay clean until the user picks something
    assert [s for s in at.subheader if s.value == "Current entry"]
    assert any("pre-fitted example" in c.value for c in at.caption)
    assert at.text_area(key="text").value == DEMO  # the text box holds the text shown below
    at.run()  # and a rerun keeps it so
    assert _current(at) == demo.key and "entry" not in at.query_params
    for page in (NOISE, ATTENTION):
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        assert _current(at) == demo.key and "entry" not in at.query_params


def test_a_valid_link_wins_over_the_default_and_a_bad_one_falls_back_to_it(shipped, app_cache):
    mine = shipped[MINE]
    app_cache.put(mine)
    at = open_page(RECONSTRUCT, entry_key=mine.key)
    assert not at.exception and _current(at) == mine.key and at.query_params.get("entry") == mine.key
    assert not any("pre-fitted example" in c.value for c in at.caption)
    at = open_page(RECONSTRUCT, entry_key="f" * 64)  # well-formed, not in the cache: a notice, then the default
    assert any("is not in this cache" in w.value for w in at.warning)
    assert _current(at) == shipped[DEMO].key and "entry" not in at.query_params


def test_a_choice_of_the_user_wins_over_the_default(shipped):
    other = shipped[OTHER]
    at = open_page(ATTENTION)
    assert _current(at) == shipped[DEMO].key
    at.selectbox(key="attention_entry").set_value(other.key).run()
    assert not at.exception, at.exception
    assert _current(at) == other.key and at.query_params.get("entry") == other.key
    at.switch_page(NOISE)
    at.run()
    assert _current(at) == other.key
    # Chosen before the first run (as a page does when a fit finishes): kept too.
    at = open_page(NOISE, session_state={"current_entry": other.key})
    assert _current(at) == other.key


def test_the_first_converged_shipped_entry_when_the_demo_text_does_not_ship(fitted, tiny_lm, tmp_path, monkeypatch):
    entries = fitted
    root = tmp_path / "shipped"
    _ship(root, tiny_lm, entries, [UNCONVERGED, OTHER, DEMO])
    reader = ProtoCache(tmp_path / "user", shipped=root)
    monkeypatch.setattr(core.shipped.demo, "DEMO_TEXT", "a text that ships nowhere")
    assert demo_entry(tiny_lm.identity, reader, tiny_lm.hidden_size, root=root).key == entries[OTHER].key
    monkeypatch.setattr(core.shipped.demo, "DEMO_TEXT", DEMO)
    assert demo_entry(tiny_lm.identity, reader, tiny_lm.hidden_size, root=root).key == entries[DEMO].key
    assert demo_entry("another/model@1", reader, root=root) is None


def test_a_model_with_nothing_shipped_gets_no_default(app_cache):
    # The real data/prefit ships entries of the embedded model only; the app runs the tiny one here.
    at = open_page(RECONSTRUCT)
    assert not at.exception, at.exception
    assert _current(at) is None and "entry" not in at.query_params
    assert not [s for s in at.subheader if s.value == "Current entry"]
    assert any("Press **Fit**" in i.value for i in at.info)
    at.switch_page(NOISE)
    at.run()
    assert any("Nothing fitted yet" in i.value for i in at.info)
