"""AppTests of what presenting needs: the fast preset first, examples marked when fitted, shared links that carry
a page's controls, presentation mode, and the figure and report downloads."""

from __future__ import annotations

from core.engine.fit import preset
from tests.conftest import open_page


def test_the_sidebar_opens_on_the_fast_preset_with_the_paper_s_recipe_named(app_cache):
    at = open_page("pages/reconstruct.py")
    radio = at.sidebar.radio(key="preset")
    assert radio.value == "fast" and radio.options[0].startswith("fast")
    assert any("Mezentsev & Oseledets" in option for option in radio.options)
    assert any("preset fast" in c.value for c in at.caption)


def test_an_example_cached_with_the_sidebar_s_settings_is_marked_and_opens_at_once(tiny_lm, app_cache, monkeypatch):
    import torch

    import core.engine.fit
    from core.engine.cache import CacheEntry
    from core.engine.fit import entry_keys
    from core.texts.textsets import load_examples

    first = load_examples()[0]
    ids = tiny_lm.encode(first.text)
    config = preset("fast")
    [key], _ = entry_keys(tiny_lm, [ids], config)  # where a fit with the sidebar's default settings is cached
    app_cache.put(CacheEntry(key=key, model=tiny_lm.identity, text=first.text, token_ids=ids, config=config.as_dict(),
                             metrics={"accuracy": 0.75, "converged": False, "steps": 9, "status": "max_steps"},
                             history={"step": [0, 9], "loss": [2.0, 1.0], "accuracy": [0.1, 0.75]},
                             e=torch.randn(tiny_lm.hidden_size), m=torch.randn(tiny_lm.hidden_size)))

    monkeypatch.setattr(core.engine.fit, "fit_texts", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fit")))
    at = open_page("pages/reconstruct.py")
    box = at.selectbox(key="example")
    labels = box.options
    assert labels[0] == first.title + " · fitted, accuracy 0.75" and "fitted" not in labels[1]
    box.select(first.title).run()
    assert not at.exception
    assert at.text_area(key="text").value == first.text
    assert any(m.label == "Token accuracy" for m in at.metric)
    assert any(first.text[:30] in c.value for c in at.caption)


def test_a_link_with_controls_reopens_them_and_a_bad_value_falls_back(tiny_entry):
    at = open_page("pages/noise.py", tiny_entry.key, query={"noise_draws": "3", "noise_target": "m",
                                                            "noise_alphas": "0, 0.3", "noise_seed": "not a number"})
    assert not at.exception
    assert at.number_input(key="noise_draws").value == 3
    assert at.radio(key="noise_target").value == "m"
    assert at.text_input(key="noise_alphas").value == "0, 0.3"
    assert at.number_input(key="noise_seed").value == 0  # not a number: the default, and out of the link
    assert "noise_seed" not in at.query_params and at.query_params["noise_draws"] == "3"


def test_a_link_with_attention_controls_reopens_the_layer(tiny_entry):
    from core.figures.attention import VIEW_LABELS

    # A choice travels as the label the page shows for it (Streamlit's binding).
    at = open_page("pages/attention.py", tiny_entry.key,
                   query={"attention_layer": "1", "attention_view": VIEW_LABELS["baseline"]})
    assert not at.exception
    assert at.slider(key="attention_layer").value == 1
    assert at.radio(key="attention_view").value == "baseline"
    assert any("position in layer 1\"" in chart.proto.spec for chart in at.get("plotly_chart"))


def test_presentation_mode_hides_the_controls_and_a_button_ends_it(app_cache):
    at = open_page("pages/reconstruct.py")
    assert not any("stSidebar" in str(el.proto) for el in at.get("html"))
    at.sidebar.toggle(key="present").set_value(True).run()
    styles = [str(el.proto) for el in at.get("html") if "stSidebar" in str(el.proto)]
    assert styles and "display: none" in styles[0] and "font-size: 20px" in styles[0]
    assert not any("tokens of at most" in c.value for c in at.caption)  # the controls' own notes go too
    exit_button = at.button(key="present_exit_button")
    exit_button.click().run()
    assert not at.exception
    assert at.session_state["present"] is False
    assert not any("stSidebar" in str(el.proto) for el in at.get("html"))


def test_a_link_opens_in_presentation_mode(app_cache):
    at = open_page("pages/reconstruct.py", query={"present": "true"})
    assert not at.exception
    assert any("stSidebar" in str(el.proto) for el in at.get("html"))
    assert at.sidebar.toggle(key="present").value is True


def test_the_current_entry_downloads_its_report_and_its_figures(tiny_entry):
    at = open_page("pages/reconstruct.py", entry_key=tiny_entry.key)
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Report (HTML)" in labels
    assert {"HTML (interactive)", "SVG", "PNG"} <= set(labels)  # the curves figure's popover
