"""AppTest of the Reconstruct page with the tiny random model."""

import pytest

from tests.conftest import open_page


def _markdown_text(at) -> str:
    """Everything the page shows as text: HTML (the tokens), Markdown, and code (the decoded text)."""
    return "\n".join([*(str(getattr(el, "value", "")) for el in at.get("html")), *(m.value for m in at.markdown),
                      *(c.value for c in at.code)])


def test_page_renders_with_example(app_cache):
    at = open_page("pages/reconstruct.py")
    assert not at.exception
    assert at.title[0].value == "Reconstruct"
    from core.texts.textsets import load_examples

    # nothing cached for this model: the first example is in the box, and it fits the model's context
    assert at.text_area(key="text").value == load_examples()[0].text
    assert any("tokens of at most" in c.value for c in at.caption)


def test_fit_short_text_shows_reconstruction(app_cache):
    at = open_page("pages/reconstruct.py")
    at.text_area(key="text").set_value("Hello world")
    at.run()
    at.button[0].click()  # Fit
    at.run()
    job = at.session_state["job::" + "reconstruct-single"]
    snap = job.wait(120)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception
    assert at.subheader[0].value == "Current entry"
    assert any(m.label == "Token accuracy" and m.value == "1.000" for m in at.metric)
    assert [c.value for c in at.code] == ["Hello world"]  # the decoded line is the text, rebuilt


def test_cached_entry_renders_without_fitting(tiny_entry, monkeypatch):
    import core.engine.fit

    def no_fit(*a, **k):
        raise AssertionError("a cached entry must not be fitted again")

    monkeypatch.setattr(core.engine.fit, "fit_texts", no_fit)
    at = open_page("pages/reconstruct.py", entry_key=tiny_entry.key)
    assert not at.exception
    assert at.text_area(key="text").value == "Hello world"
    assert any("from the cache" in c.value for c in at.caption)
    assert any(m.label == "Token accuracy" and m.value == "1.000" for m in at.metric)


def test_bad_input_shows_errors(app_cache):
    at = open_page("pages/reconstruct.py")
    at.text_area(key="text").set_value("   ")
    at.run()
    assert any("empty" in e.value for e in at.error)
    at.text_area(key="text").set_value("word " * 200)
    at.run()
    assert any("tokens" in e.value and "at most" in e.value for e in at.error)
    assert not at.exception


def test_clearing_the_cache_keeps_the_shipped_entries(tiny_lm, app_cache, tmp_path, monkeypatch):
    import ui.state
    from core.engine.cache import ProtoCache
    from core.engine.fit import fit_and_cache, preset

    shipped = ProtoCache(tmp_path / "shipped")
    [kept] = fit_and_cache(tiny_lm, ["Shipped text"], preset("first-paper", max_steps=3), shipped)
    [own] = fit_and_cache(tiny_lm, ["Own text"], preset("first-paper", max_steps=3), app_cache)
    monkeypatch.setattr(ui.state, "SHIPPED_ROOT", tmp_path / "shipped")

    def cache_caption(at) -> str:
        return next(c.value for c in at.sidebar.caption if c.value.startswith("Cache:"))

    at = open_page("pages/reconstruct.py")
    assert cache_caption(at).startswith("Cache: 1 entry for this model + 1 pre-fitted")
    at.sidebar.button(key="clear_cache").click().run()
    assert any("Delete the 1 fitted entry" in w.value and "pre-fitted ones stay" in w.value for w in at.sidebar.warning)
    at.sidebar.button(key="clear_yes").click().run()
    assert not at.exception, at.exception
    assert app_cache.get(own.entry.key) is None and shipped.get(kept.entry.key) is not None
    assert cache_caption(at).startswith("Cache: 0 entries for this model + 1 pre-fitted")
    assert not [b for b in at.sidebar.button if b.key == "clear_cache"]


def test_reruns_keep_the_sidebar(app_cache):
    """A page run by its URL alone (Streamlit's old pages/ folder mode) reruns itself inside app.py."""
    at = open_page("pages/noise.py")
    for _ in range(2):
        at.run()
        assert not at.exception, at.exception
        assert at.title[0].value == "Noise"
        assert any(c.value.startswith("Cache:") for c in at.sidebar.caption)


def test_an_entry_that_was_redrawn_says_so(tiny_entry, app_cache):
    from dataclasses import replace

    redrawn = replace(tiny_entry, metrics={**tiny_entry.metrics, "redraws": 2})
    app_cache.put(redrawn)
    at = open_page("pages/reconstruct.py", entry_key=redrawn.key)
    assert not at.exception
    assert any("Started over from a new init 2 times" in c.value for c in at.caption)


def test_the_sidebar_compute_setting_reaches_the_fit_config(app_cache):
    """Fit settings > Compute the steps in: bfloat16 is a FitConfig override (and so part of the cache key), and
    the Embeddings page's shared m, which cannot take it, still opens."""
    at = open_page("pages/reconstruct.py")
    name = at.session_state["preset"]
    box = at.sidebar.selectbox(key=f"compute_{name}")
    assert box.value == "" and "the model's dtype" in box.options
    box.select("bfloat16").run()
    assert not at.exception
    assert at.session_state["fit_overrides"]["compute"] == "bfloat16"
    emb = open_page("pages/embeddings.py", session_state={"fit_overrides": {"compute": "bfloat16"}, "emb_shared_m": True})
    assert not emb.exception and not [e for e in emb.error if "compute" in e.value]


def test_an_entry_fitted_from_a_learned_start_shows_where_it_began_and_the_steps_saved(tiny_lm, tiny_entry, app_cache):
    """The Reconstruct page of an entry with metrics["start"]: the neighbour's text, the one pass from the start
    (the step-0 snapshot) with its accuracy, and the steps against draw-fitted texts of about its length."""
    from dataclasses import replace

    from core.engine.cache import cache_key
    from ui.widgets import plain

    n = tiny_entry.n_tokens
    for k, steps in enumerate((100, 300, 300, 300, 500)):  # same length, fitted from a draw, the entry's preset:
        app_cache.put(replace(tiny_entry, key=cache_key("draw", k), text=f"draw {k}",  # with tiny_entry, median 300
                              metrics={**tiny_entry.metrics, "steps": steps}))
    start = {"kind": "nearest", "key": tiny_entry.key, "text": "Hello <b>world</b>", "similarity": 0.9123}
    vocab = tiny_lm.model.config.vocab_size
    first = tiny_entry.token_ids[:1] + [(t + 1) % vocab for t in tiny_entry.token_ids[1:]]  # only the first right
    warm = replace(tiny_entry, key=cache_key("warm"), config={**tiny_entry.config, "start": "nearest"},
                   metrics={**tiny_entry.metrics, "steps": 12, "start": start},
                   snapshots=[{"step": 0, "tokens": first}, *tiny_entry.snapshots[1:]])
    app_cache.put(warm)
    at = open_page("pages/reconstruct.py", entry_key=warm.key)
    assert not at.exception
    [caption] = [c.value for c in at.caption if "Learned start" in c.value]
    assert plain("Hello <b>world</b>") in caption  # shown as text, never as HTML
    caption = caption.replace("\\", "")  # Markdown escapes
    assert "0.9123" in caption and "took 12 steps" in caption
    assert "median of 300 steps, so the start saved about 288" in caption
    assert f"before any step: accuracy {1 / n:.3f}" in _markdown_text(at)
    drawn = open_page("pages/reconstruct.py", entry_key=tiny_entry.key)
    assert not [c for c in drawn.caption if "Learned start" in c.value]


def test_the_sidebar_start_setting_reaches_the_fit_config(app_cache):
    at = open_page("pages/reconstruct.py")
    at.sidebar.radio(key="preset").set_value("fast").run()
    box = at.sidebar.selectbox(key="start_fast")
    assert box.value == "mean" and "the nearest cached text" in box.options
    box.select("nearest").run()
    assert not at.exception and at.session_state["fit_overrides"]["start"] == "nearest"
    emb = open_page("pages/embeddings.py", session_state={"preset": "fast", "emb_shared_m": True,
                                                          "fit_overrides": {"start": "nearest"}})
    assert not emb.exception and not [e for e in emb.error if "start" in e.value]


def test_bf16_steps_on_a_cpu_without_a_bf16_unit_fail_in_one_line(app_cache, monkeypatch):
    """A CPU where bf16 products are slow (an AVX2-only EPYC: 0.28 against 83 GFLOP/s): the fit says why in one line
    and nothing is stored."""
    import core.engine.cost as cost_mod

    monkeypatch.setattr(cost_mod, "bf16_rates", lambda device="cpu": (0.28, 83.0))
    at = open_page("pages/reconstruct.py", session_state={"fit_overrides": {"compute": "bfloat16"}})
    at.sidebar.selectbox(key=f"compute_{at.session_state['preset']}").select("bfloat16").run()
    at.text_area(key="text").set_value("Hello world").run()
    at.button[0].click().run()
    snap = at.session_state["job::" + "reconstruct-single"].wait(60)
    assert snap.state == "failed" and "bfloat16 are refused" in snap.error and "\n" not in snap.error
    at.run()
    assert not at.exception
    assert any("0.3 GFLOP/s against 83" in e.value.replace("\\", "") for e in at.error), [e.value for e in at.error]
    assert app_cache.count()[0] == 0


def test_typing_a_cached_text_opens_its_fit_without_fitting(app_cache, monkeypatch):
    """A text cached with the sidebar's settings opens as soon as it is typed (no Fit click, no fitting); an
    uncached one does not show it."""
    import core.engine.fit

    [outcome] = _fit_on_page(open_page("pages/reconstruct.py"), "Hello world").outcomes  # the sidebar's settings
    key = outcome.entry.key

    def no_fit(*a, **k):
        raise AssertionError("a cached text must open without fitting")

    monkeypatch.setattr(core.engine.fit, "fit_texts", no_fit)
    fresh = open_page("pages/reconstruct.py")  # another visitor: nothing current, an example in the box
    assert not any("from the cache" in c.value for c in fresh.caption)
    fresh.text_area(key="text").set_value("Hello world").run()
    assert not fresh.exception, fresh.exception
    assert fresh.subheader[0].value == "Current entry"
    assert any("from the cache" in c.value for c in fresh.caption)
    assert any(m.label == "Token accuracy" for m in fresh.metric)
    assert fresh.session_state["current_entry"] == key and fresh.query_params["entry"] == key
    fresh.text_area(key="text").set_value("Hello there world").run()  # not cached: the entry shown stays
    assert fresh.session_state["current_entry"] == key
    assert next(b for b in fresh.button if b.label == "Refit").disabled


def _fit_on_page(at, text: str, button: str = "Fit"):
    """Type ``text`` and press Fit (or Refit); the finished job's snapshot, after the page's next run."""
    at.text_area(key="text").set_value(text).run()
    next(b for b in at.button if b.label == button).click().run()
    snap = at.session_state["job::reconstruct-single"].wait(120)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    return snap


def test_a_fit_writes_its_entry_into_the_url_and_refit_fits_again(app_cache):
    """After a fit the link names its entry (?entry=); Refit is off for an uncached text, and on a cached one
    fits it again (a new entry under the same key, with a later creation time)."""
    at = open_page("pages/reconstruct.py")
    at.text_area(key="text").set_value("Hello world").run()
    assert next(b for b in at.button if b.label == "Refit").disabled  # nothing cached to fit again
    [outcome] = _fit_on_page(at, "Hello world").outcomes
    key = outcome.entry.key
    assert at.query_params["entry"] == key and at.session_state["current_entry"] == key
    assert any("fitted in this session" in c.value for c in at.caption)
    created = app_cache.get(key).created
    refit = next(b for b in at.button if b.label == "Refit")
    assert not refit.disabled
    [again] = _fit_on_page(at, "Hello world", "Refit").outcomes
    assert again.entry.key == key and not again.cached and app_cache.get(key).created > created


def test_stop_keeps_the_best_vectors_so_far(app_cache):
    """Stop during a fit: the job ends cancelled and the page shows the entry with the best vectors so far."""
    import time

    at = open_page("pages/reconstruct.py", session_state={"thr_fast": 1.0, "steps_fast": 20000})
    at.text_area(key="text").set_value("Hello world, this text takes a while").run()
    next(b for b in at.button if b.label == "Fit").click().run()
    job = at.session_state["job::reconstruct-single"]
    deadline = time.monotonic() + 60
    while job.snapshot().step < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    at.run()
    next(b for b in at.button if b.label == "Stop").click().run()
    snap = job.wait(60)
    at.run()
    assert not at.exception, at.exception
    [outcome] = snap.outcomes
    assert outcome.entry.metrics["status"] == "cancelled" and outcome.entry.metrics["steps"] >= 3
    assert at.session_state["current_entry"] == outcome.entry.key
    assert any("Stopped by the user" in w.value for w in at.warning)
    assert not [b for b in at.button if b.label == "Stop"]


def test_the_batch_tab_fits_every_line_and_opens_a_picked_row(app_cache):
    at = open_page("pages/reconstruct.py")
    at.text_area(key="batch_text").set_value("Hello world\n\nHi there cat").run()
    at.button(key="fit_batch").click().run()
    snap = at.session_state["job::reconstruct-batch"].wait(180)
    assert snap.state == "done", snap.error
    at.run()
    table = at.dataframe[0].value
    assert table["text"].tolist() == ["Hello world", "Hi there cat"]  # the empty line is no text
    keys = [o.entry.key for o in snap.outcomes]
    assert all(app_cache.get(k) is not None for k in keys)
    at.session_state["batch_table"] = {"selection": {"rows": [1], "columns": []}}
    at.run()
    assert at.session_state["current_entry"] == keys[1]
    assert any(c.value.startswith("Hi there cat") for c in at.caption)


def test_a_bad_batch_line_says_which_line(app_cache):
    at = open_page("pages/reconstruct.py")
    at.text_area(key="batch_text").set_value("Hello world\n" + "word " * 200).run()
    at.button(key="fit_batch").click().run()
    assert any(e.value.startswith("Line 2") and "at most" in e.value for e in at.error), [e.value for e in at.error]
    assert "job::reconstruct-batch" not in at.session_state or at.session_state["job::reconstruct-batch"] is None


def test_the_replay_slider_shows_the_reconstruction_at_the_step_chosen(tiny_entry):
    """The replay slider's first snapshot is the start (mostly wrong), its last the fitted text."""
    at = open_page("pages/reconstruct.py", entry_key=tiny_entry.key)
    slider = at.select_slider(key=f"replay_{tiny_entry.key}")
    steps = [s["step"] for s in tiny_entry.snapshots]
    assert slider.value == steps[-1]

    slider.set_value(steps[0]).run()
    assert not at.exception
    from core.engine.reconstruct import token_metrics

    first = token_metrics(tiny_entry.snapshots[0]["tokens"], tiny_entry.token_ids).accuracy
    assert f"step {steps[0]}: accuracy {first:.3f}" in _markdown_text(at)
    at.select_slider(key=f"replay_{tiny_entry.key}").set_value(steps[-1]).run()
    assert f"step {steps[-1]}: accuracy 1.000" in _markdown_text(at)


def test_the_downloads_hold_the_entry_s_vectors_metrics_and_history(tiny_entry, monkeypatch):
    """What a person gets from the three downloads of the current entry: its e and m (safetensors), its metadata
    (JSON: key, text, tokens, metrics, history; no snapshots), its history (CSV, one row a step)."""
    import io
    import json
    from pathlib import PurePosixPath

    import pandas as pd
    import streamlit.testing.v1.app_test as app_test
    import torch
    from safetensors.torch import load as load_safetensors

    managers = []

    class Recording(app_test.MediaFileManager):  # AppTest makes one per run; keep them to read the files back
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            managers.append(self)

    monkeypatch.setattr(app_test, "MediaFileManager", Recording)
    at = open_page("pages/reconstruct.py", entry_key=tiny_entry.key)
    assert not at.exception
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    manager = managers[-1]

    def content(label: str) -> bytes:
        proto = buttons[label]
        url = proto.url or manager.execute_deferred(proto.deferred_file_id)  # a callable's data: made on click
        return manager.read_file(PurePosixPath(url).name).content

    key = tiny_entry.key
    vectors = load_safetensors(content("e and m (safetensors)"))
    assert set(vectors) == {"e", "m"}
    assert torch.equal(vectors["e"], tiny_entry.e) and torch.equal(vectors["m"], tiny_entry.m)

    meta = json.loads(content("Metrics and history (JSON)"))
    assert meta["key"] == key and meta["text"] == tiny_entry.text and meta["token_ids"] == tiny_entry.token_ids
    assert meta["metrics"]["accuracy"] == tiny_entry.metrics["accuracy"]
    assert meta["history"] == tiny_entry.history and "snapshots" not in meta

    history = pd.read_csv(io.BytesIO(content("History (CSV)")))
    assert list(history.columns) == list(tiny_entry.history)
    assert history["step"].tolist() == tiny_entry.history["step"]
    assert history["accuracy"].tolist() == pytest.approx(tiny_entry.history["accuracy"])
    assert history["loss"].tolist() == pytest.approx(tiny_entry.history["loss"])


def test_the_sidebar_count_says_how_accuracy_is_counted(tiny_entry, app_cache):
    at = open_page("pages/reconstruct.py", tiny_entry.key)
    assert any("over the 11 text positions" in c.value for c in at.caption)
    at.sidebar.radio(key="count").set_value("bos").run()
    assert not at.exception
    assert any("has no BOS token" in c.value for c in at.caption)
