"""AppTests of the Embeddings page on the tiny random model: shipped sets, uploads, fitting from the page."""

from __future__ import annotations

import json

import pytest

from core.engine.fit import preset
from tests.conftest import REPO
from ui.widgets import plain

PAGE = "pages/embeddings.py"
# Generous: the first run imports torch and transformers and loads a model, which on the shared 2-core
# machine has taken longer than the suite's usual 120 s.
TIMEOUT = 600


def open_page(page: str = PAGE):
    """An AppTest of app.py switched to the Embeddings page, run once."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page)
    at.run()
    return at

# Six short texts in three groups: the tiny model (byte tokens, 128-token context) fits them in seconds.
UPLOAD = ("text,group,kind\n"
          "Hi cat,cats,original\nHey cat,cats,semantic\nHi cta,cats,lexical\n"
          "Go home,home,original\nGo hom,home,lexical\nRun now,run,original\n").encode()


def _charts(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _errors(at) -> str:
    return " ".join(e.value for e in at.error)


@pytest.fixture
def shipped_syntax(tiny_lm, tmp_path, monkeypatch, app_cache):
    """The "syntax" set pre-fitted on the tiny model into a shipped folder the app reads."""
    import core.engine.sets
    import ui.state
    from core.shipped.prefit import prefit_builtin

    root = tmp_path / "shipped"
    monkeypatch.setattr(core.engine.sets, "SHIPPED_ROOT", root)  # where the page reads the manifest
    monkeypatch.setattr(ui.state, "SHIPPED_ROOT", root)
    return prefit_builtin(quiet=True, root=root, sets=("syntax",), lm=tiny_lm,
                          config=preset("fast", max_steps=3, restarts=1), sweep=False)["syntax"]


def test_a_shipped_set_shows_at_once_with_maps_scores_and_neighbours(shipped_syntax):
    at = open_page()
    # The page opens on the set the shipped pre-fit covers, and says so in the set's label.
    assert at.selectbox(key="emb_set").value == "syntax"
    assert "pre-fitted, " in at.selectbox(key="emb_set").format_func("syntax")
    at.run()
    assert not at.exception and not _errors(at)
    # The sidebar shows the paper preset, yet the shipped entries are found through the manifest.
    assert "pre-fitted settings" in str(at.radio(key="emb_config").options[0])
    assert any("70 fitted" in c.value for c in at.caption)
    at.slider(key="emb_min_acc").set_value(0.0)  # three steps on a random model reach no accuracy to speak of
    at.run()
    assert not at.exception
    charts = _charts(at)
    assert len(charts) == 2  # the 2-D maps (one figure, a panel per space) and the silhouette bars
    maps = charts[0]
    titles = [a["text"] for a in maps["layout"]["annotations"]]
    assert [t.split(" ·")[0] for t in titles] == ["e (first proto-token)", "m (repeated proto-token)",
                                                  "e‖m (both, concatenated)", "teacher sentence embedding"]
    points = [t for t in maps["data"] if t.get("customdata")]
    assert sum(len(t["customdata"]) for t in points) == 4 * 70  # x and y come base64-packed
    assert "accuracy" in points[0]["hovertemplate"]
    scores = at.dataframe[0].value
    assert list(scores.index) == ["e", "m", "e‖m", "teacher"]
    assert scores["all"].notna().all()
    assert any("Showing **70** of 70" in c.value for c in at.caption)
    # Nearest neighbours: one table per space, for the selected text.
    assert len(at.dataframe) == 1 + 4
    at.number_input(key="emb_k").set_value(3)
    at.run()
    assert len(at.dataframe[1].value) == 3

    # Another projection: other coordinates; the perplexity (t-SNE's only) is off.
    assert not at.number_input(key="emb_perplexity").disabled
    at.radio(key="emb_method").set_value("PCA").run()
    assert not at.exception, at.exception
    pca = [t for t in _charts(at)[0]["data"] if t.get("customdata")]
    assert len(pca) == len(points) and pca != points
    assert at.number_input(key="emb_perplexity").disabled

def test_a_bad_upload_names_the_row_and_column(app_cache):
    at = open_page()
    at.radio(key="emb_source").set_value("Upload")
    at.run()
    assert "At most 20 MB and 10,000 texts per file" in at.file_uploader(key="emb_upload").help  # the caps, said
    at.file_uploader(key="emb_upload").set_value(("mine.csv", b"text,kind\nfine,original\nbad,poem\n", "text/csv"))
    at.run()
    assert not at.exception
    # Shown as text: the message quotes the file, so it is escaped for Markdown.
    assert plain('unknown kind "poem" in row 3 (column "kind")') in _errors(at)
    assert not at.get("plotly_chart")


def _quick_sidebar(monkeypatch, max_steps: int) -> None:
    """The sidebar's fit settings with few steps (AppTest does not reach the sidebar's widgets)."""
    import ui.state

    monkeypatch.setattr(ui.state, "fit_config", lambda: preset("first-paper", max_steps=max_steps))


def test_an_unfitted_set_offers_fit_and_the_fit_fills_the_page(app_cache, monkeypatch):
    _quick_sidebar(monkeypatch, 20)
    at = open_page()
    at.radio(key="emb_source").set_value("Upload")
    at.run()
    at.file_uploader(key="emb_upload").set_value(("mine.csv", UPLOAD, "text/csv"))
    at.run()
    assert not at.exception
    assert any("needs fitting" in i.value for i in at.info)
    fit = at.button(key="emb_fit")
    assert "6 missing texts" in fit.label
    fit.click()
    at.run()
    job = at.session_state["job::embeddings-set"]
    assert job.wait(TIMEOUT).state == "done"
    at.run()  # AppTest does not tick the polling fragment: one more run shows the finished fit
    at.slider(key="emb_min_acc").set_value(0.0)
    at.run()
    assert not at.exception and not _errors(at)
    assert any("6 fitted" in c.value for c in at.caption)
    assert len(_charts(at)) == 2
    assert at.dataframe[0].value.index.tolist() == ["e", "m", "e‖m", "teacher"]
    # Everything is cached now: no Fit button any more.
    assert not [b for b in at.button if b.key == "emb_fit"]


def test_shared_m_draws_only_e_and_the_teacher(app_cache, tiny_lm, monkeypatch):
    from core.engine.fit import fit_and_cache
    from core.texts.textsets import parse_text_set

    texts = parse_text_set(UPLOAD, "mine.csv")["text"].tolist()
    fit_and_cache(tiny_lm, texts, preset("first-paper", max_steps=5, shared_m=True), app_cache)
    _quick_sidebar(monkeypatch, 5)
    at = open_page()
    at.radio(key="emb_source").set_value("Upload")
    at.run()
    at.file_uploader(key="emb_upload").set_value(("mine.csv", UPLOAD, "text/csv"))
    at.run()  # the shared-m checkbox is drawn only once the upload is read
    at.checkbox(key="emb_shared_m").check()
    at.run()  # the shared-m entries decide what is drawn below
    at.slider(key="emb_min_acc").set_value(0.0)
    at.run()
    assert not at.exception and not _errors(at)
    assert at.dataframe[0].value.index.tolist() == ["e", "teacher"]


def test_a_corpus_fitted_with_core_fit_opens_as_a_set(app_cache, tiny_lm, tmp_path):
    """`python -m core fit --file corpus.txt` lists the corpus in the cache's manifest; the page offers it as a
    set and finds its entries through the manifest whatever the sidebar says."""
    path = tmp_path / "notes.txt"
    path.write_text("Hi cat\nGo home\nRun now\nHey dog\n", encoding="utf-8")
    from core.__main__ import main

    assert main(["fit", "--file", str(path), "--cache", str(app_cache.root), "--model", "tiny-random-llama",
                 "--preset", "fast", "--max-steps", "5", "--quiet"]) == 0
    at = open_page()
    assert any(o.startswith("notes: a corpus fitted with core fit (4 texts") for o in at.selectbox(key="emb_set").options)
    at.selectbox(key="emb_set").set_value("notes")
    at.run()
    assert not at.exception and not _errors(at)
    assert any("4 fitted" in c.value for c in at.caption)
    at.slider(key="emb_min_acc").set_value(0.0)
    at.run()
    points = [t for t in _charts(at)[0]["data"] if t.get("customdata")]
    assert points and sum(len(t["customdata"]) for t in points) % 4 == 0


def test_a_large_set_is_mapped_in_the_background_then_drawn_with_webgl_from_the_cache(app_cache, tiny_lm, tmp_path,
                                                                                       monkeypatch):
    """Above BACKGROUND_POINTS the maps (and the missing teacher embeddings) are made by a MapJob while the scores
    and neighbours draw at once; when it is done the maps come from the cache, as WebGL scatters, and a new visit
    draws them without starting a job."""
    import core.analyses.embeddings as emb

    monkeypatch.setattr(emb, "BACKGROUND_POINTS", 3)
    monkeypatch.setattr(emb, "WEBGL_POINTS", 3)
    path = tmp_path / "big.txt"
    path.write_text("Hi cat\nGo home\nRun now\nHey dog\nSit down\nBe kind\n", encoding="utf-8")
    from core.__main__ import main

    assert main(["fit", "--file", str(path), "--cache", str(app_cache.root), "--model", "tiny-random-llama",
                 "--preset", "fast", "--max-steps", "5", "--quiet"]) == 0
    at = open_page()
    at.selectbox(key="emb_set").set_value("big")
    at.run()
    at.slider(key="emb_min_acc").set_value(0.0)
    at.run()
    assert not at.exception and not _errors(at)
    job = at.session_state["job::embeddings-maps"]
    assert any("being made in the background" in i.value for i in at.info)
    assert not [c for c in _charts(at) if any(t.get("customdata") for t in c["data"])]  # no map yet
    assert at.dataframe  # the silhouette table is there meanwhile
    snap = job.wait(300)
    assert snap.state == "done" and snap.done == snap.total == 5  # teacher, then e, m, e‖m and teacher maps
    at.run()
    maps = [c for c in _charts(at) if any(t.get("customdata") for t in c["data"])]
    assert maps and {t["type"] for t in maps[0]["data"] if t.get("customdata")} == {"scattergl"}
    assert sum(len(t["customdata"]) for t in maps[0]["data"] if t.get("customdata")) == 6 * 4
    again = open_page()  # a new visit: the maps and the teacher come from the cache
    again.selectbox(key="emb_set").set_value("big")
    again.run()
    again.slider(key="emb_min_acc").set_value(0.0)
    again.run()
    assert "job::embeddings-maps" not in again.session_state
    assert [c for c in _charts(again) if any(t.get("customdata") for t in c["data"])]


def test_the_seed_papers_group_selection_and_the_finding_line(shipped_syntax):
    at = open_page()
    at.slider(key="emb_min_acc").set_value(0.0)
    at.radio(key="emb_selection").set_value("groups").run()
    assert not at.exception, at.exception
    assert any("more left out with a group" in c.value for c in at.caption)
    assert any(plain("neither e nor m groups the texts") in m.value and plain("the seed paper (Llama-3.2-1B") in m.value
               for m in at.markdown)
    at.slider(key="emb_min_acc").set_value(1.0).run()  # three steps reach no such accuracy: every group goes
    assert not at.exception
    assert any("Fewer than 2 texts" in w.value for w in at.warning)


def test_the_sidebars_seed_paper_count_is_the_selections_and_says_what_it_could_not_count(shipped_syntax):
    at = open_page()
    shown = next(c.value for c in at.caption if c.value.startswith("Showing"))
    assert "N + 1" not in shown
    at.sidebar.radio(key="count").set_value("bos").run()
    assert not at.exception, at.exception
    shown = next(c.value for c in at.caption if c.value.startswith("Showing"))
    # the tiny tokenizer has no BOS token: every fitted text keeps its N positions, and the caption says so
    assert "Accuracy over N + 1, e's BOS prediction included" in shown
    assert "without e's BOS prediction recorded count N positions" in shown
