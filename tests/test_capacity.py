"""core.analyses.capacity and the layouts it ablates: the ladder's stopping rule, H_LM, the five arrangements, the
one-pass timing. Unit tests on the tiny random model; one short ladder on the embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analyses import capacity as cap
from core.engine.fit import fit_texts, preset
from core.engine.reconstruct import (ABLATION_LAYOUTS, LAYOUTS, PAPER_LAYOUT_ORDER, build_inputs, e_positions,
                                     information_content, reconstruct, sequence_length)
from tests.conftest import fake_entry


def test_the_paper_lengths_grow_by_root_two():
    assert cap.PAPER_LENGTHS[:13] == (4, 5, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181, 256)
    ratios = [b / a for a, b in zip(cap.PAPER_LENGTHS[4:], cap.PAPER_LENGTHS[5:])]
    assert all(abs(r - 2 ** 0.5) < 0.05 for r in ratios)
    assert cap.ladder_lengths(50, 181) == [4, 5, 8, 11, 16, 22, 32, 45]
    assert cap.ladder_lengths(300, 30) == [4, 5, 8, 11, 16, 22]
    with pytest.raises(ValueError):
        cap.LadderSettings(max_length=2)


@pytest.mark.parametrize("layout,expected", [
    ("e*N", "eeeee"), ("e*N/2+m*N/2", "eeemm"), ("(e,m)*N/2", "ememe"), ("e+m*N", "emmmmm"), ("e+m*(N-1)", "emmmm")])
def test_each_layout_places_e_and_m_as_the_paper_arranges_them(layout, expected):
    assert "".join("e" if flag else "m" for flag in e_positions(5, layout)) == expected
    e, m = torch.ones(2, 3), -torch.ones(2, 3)
    inputs, mask = build_inputs(e, m, [5, 3], layout)
    assert inputs.shape[1] == sequence_length(5, layout) == len(expected)
    assert "".join("e" if float(v) > 0 else "m" for v in inputs[0, :, 0]) == expected
    short = "".join("e" if flag else "m" for flag in e_positions(3, layout))
    assert "".join("e" if float(v) > 0 else "m" for v in inputs[1, : len(short), 0]) == short
    assert mask[1].tolist() == [1] * sequence_length(3, layout) + [0] * (inputs.shape[1] - sequence_length(3, layout))
    assert set(PAPER_LAYOUT_ORDER) == set(LAYOUTS + ABLATION_LAYOUTS)


@pytest.mark.parametrize("layout", ABLATION_LAYOUTS)
def test_a_text_fitted_in_an_ablation_layout_reconstructs_in_it(tiny_lm, layout):
    """The fit and the one-pass reconstruction read the same positions (most of these layouts fail, as in the paper:
    what is checked is that the accuracy the fit kept is the one the layout's reconstruction gives)."""
    config = preset("first-paper", layout=layout, max_steps=60, threshold=1.0)
    [r] = fit_texts(tiny_lm, ["Hi you"], config)
    rebuilt = reconstruct(tiny_lm, r.e, r.m, r.token_ids, layout)
    assert rebuilt.metrics.accuracy == pytest.approx(r.accuracy) and r.accuracy > 1 / 6


def test_h_lm_is_the_sum_of_the_texts_own_next_token_losses(tiny_lm):
    ids = tiny_lm.encode("Hello there")
    direct = 0.0
    with torch.no_grad():
        for i in range(1, len(ids)):  # the tiny tokenizer has no BOS: the first token has no context
            logits = tiny_lm.model(input_ids=torch.tensor([ids[:i]])).logits[0, -1]
            direct -= float(torch.log_softmax(logits.float(), -1)[ids[i]])
    assert information_content(tiny_lm, ids) == pytest.approx(direct, rel=1e-5)
    assert information_content(tiny_lm, ids[:1]) == 0.0


def test_every_fitted_entry_stores_its_h_lm_and_older_ones_get_it_cached(tiny_lm, tmp_cache, monkeypatch):
    from core.engine.fit import fit_and_cache

    [outcome] = fit_and_cache(tiny_lm, ["Hello there"], preset("first-paper", max_steps=3), tmp_cache)
    entry = outcome.entry
    assert entry.metrics["h_lm"] == pytest.approx(information_content(tiny_lm, entry.token_ids))
    old = entry.__class__(**{**entry.__dict__, "metrics": {k: v for k, v in entry.metrics.items() if k != "h_lm"}})
    first = cap.entry_information(tiny_lm, old, tmp_cache)
    monkeypatch.setattr(cap, "information_content", lambda *_: pytest.fail("a cached H_LM must not be recomputed"))
    assert cap.entry_information(tiny_lm, old, tmp_cache) == first == pytest.approx(entry.metrics["h_lm"])
    table = cap.information_table(tiny_lm, [entry], tmp_cache)
    assert table["h_lm"].tolist() == [pytest.approx(entry.metrics["h_lm"])] and table["n_tokens"].tolist() == [11]


def _fake_fit(converged_up_to: dict[str, int], calls: list):
    """A fit for _ladder: a prefix converges while its length is at most the source's limit."""
    def fit(texts, config):
        calls.append(list(texts))
        out = []
        for text in texts:
            source, length = text.split(":")
            ok = int(length) <= converged_up_to[source]
            out.append(fake_entry(f"{source}{length}", text, np.zeros(4), np.zeros(4), accuracy=1.0 if ok else 0.5))
        return out
    return fit


def test_the_ladder_stops_each_source_at_its_first_failing_length(tiny_lm, monkeypatch):
    monkeypatch.setattr(cap, "prefix", lambda lm, text, length: f"{text}:{length}")
    monkeypatch.setattr(tiny_lm, "encode", lambda text: [0] * 60)  # both sources are 60 tokens long
    calls = []
    result = cap._ladder(tiny_lm, {"a": "a", "b": "b"}, cap.LadderSettings(max_length=64), preset("fast"),
                         _fake_fit({"a": 11, "b": 32}, calls))
    assert result.longest == {"a": 11, "b": 32} and result.mean_longest == 21.5 and result.complete
    # a leaves after its failing 16; b climbs alone to its failing 45; 64 is longer than the texts
    assert calls[-3:] == [["b:22"], ["b:32"], ["b:45"]] and ["a:16", "b:16"] in calls
    assert result.rows[result.rows["source"] == "a"]["length"].tolist() == [4, 5, 8, 11, 16]
    assert not result.rows.set_index(["source", "length"]).loc[("a", 16), "converged"]


def test_a_ladder_missing_from_the_cache_is_incomplete(tiny_lm, monkeypatch):
    monkeypatch.setattr(cap, "prefix", lambda lm, text, length: f"{text}:{length}")
    monkeypatch.setattr(tiny_lm, "encode", lambda text: [0] * 20)
    fit = _fake_fit({"a": 99}, [])
    result = cap._ladder(tiny_lm, {"a": "a"}, cap.LadderSettings(), preset("fast"),
                         lambda texts, cfg: [None] if texts == ["a:11"] else fit(texts, cfg))
    assert not result.complete and result.longest == {"a": 8}


def test_a_short_ladder_runs_and_loads_back_from_the_cache(tiny_lm, tmp_cache):
    sources = {"hi": "Hello there, my friend"}
    settings = cap.LadderSettings(max_length=8)
    config = preset("fast", max_steps=300)
    ran = cap.run_ladder(tiny_lm, sources, settings, config, tmp_cache)
    assert ran.rows["length"].tolist() == [4, 5, 8][: len(ran.rows)] and ran.complete
    loaded = cap.load_ladder(tiny_lm, sources, settings, config, tmp_cache)
    assert loaded.longest == ran.longest and loaded.rows["key"].tolist() == ran.rows["key"].tolist()
    assert all(tiny_lm.encode(t) == tiny_lm.encode(sources["hi"])[:n] for t, n in zip(ran.rows["text"],
                                                                                      ran.rows["length"]))
    table = cap.capacity_table(ran, tiny_lm.name, shared_m=False)
    assert "Pythia-160M (paper)" in table["model"].tolist() and (table["texts"] == "mean").sum() == 1
    assert table[table["model"] == "Pythia-160M (paper)"]["longest (tokens)"].tolist() == [128]
    shared = cap.capacity_table(ran, tiny_lm.name, shared_m=True)
    assert shared[shared["model"] == "Pythia-160M (paper)"]["longest (tokens)"].tolist() == [45]


def test_a_shared_m_ladder_fits_each_length_with_one_m(tiny_lm, tmp_cache):
    sources = {"a": "Hello there", "b": "Good night"}
    result = cap.run_ladder(tiny_lm, sources, cap.LadderSettings(max_length=5, shared_m=True),
                            preset("fast", max_steps=200), tmp_cache)
    entries = [tmp_cache.get(k, tiny_lm.hidden_size) for k in result.rows["key"]]
    by_length = {}
    for row, entry in zip(result.rows.itertuples(), entries):
        by_length.setdefault(row.length, []).append(entry)
    for group in by_length.values():
        assert len(group) == 2 and torch.equal(group[0].m, group[1].m) and group[0].group == group[1].group


def test_the_layout_ablation_fits_every_layout_and_loads_back(tiny_lm, tmp_cache):
    texts = ["Hi you"]
    config = preset("first-paper", max_steps=15)
    rows = cap.run_layouts(tiny_lm, texts, config, tmp_cache)
    assert rows["layout"].tolist() == list(PAPER_LAYOUT_ORDER)
    assert cap.load_layouts(tiny_lm, texts, config, tmp_cache)["key"].tolist() == rows["key"].tolist()
    summary = cap.layout_summary(rows)
    assert summary["paper accuracy"].tolist() == [0.01, 0.01, 0.17, 0.97, 0.99]


def test_one_pass_and_generation_are_timed_and_cached(tiny_lm, tmp_cache, monkeypatch):
    from core.engine.fit import fit_and_cache

    [outcome] = fit_and_cache(tiny_lm, ["Hello there"], preset("first-paper", max_steps=2), tmp_cache)
    timing = cap.time_generation(tiny_lm, outcome.entry, tmp_cache, repeats=2)
    assert timing.n_tokens == 11 and timing.one_pass_s > 0 and timing.generate_s > 0
    assert timing.ratio == pytest.approx(timing.generate_s / timing.one_pass_s)
    monkeypatch.setattr(cap, "_median_time", lambda *_: pytest.fail("a cached timing must not be measured again"))
    assert cap.load_generation_timing(tiny_lm, outcome.entry, tmp_cache, repeats=2) == timing
    assert cap.time_generation(tiny_lm, outcome.entry, tmp_cache, repeats=2) == timing


def test_the_built_in_long_texts_are_long(embedded_lm):
    texts = cap.load_long_texts()
    assert len(texts) >= 3
    assert all(len(embedded_lm.encode(t.text)) >= 181 for t in texts)
    for t in texts:
        piece = cap.prefix(embedded_lm, t.text, 45)
        assert embedded_lm.encode(piece) == embedded_lm.encode(t.text)[: len(embedded_lm.encode(piece))]
        assert 44 <= len(embedded_lm.encode(piece)) <= 45


@pytest.mark.embedded
def test_a_short_ladder_on_the_embedded_model_reconstructs_a_built_in_source(embedded_lm, tmp_path):
    """The ladder end to end on the real model: a built-in source's 4- and 5-token prefixes, fitted in order, each
    reconstructed in one pass, with C_tokens and H_LM recorded, and read back from the cache without fitting."""
    from core.engine.cache import ProtoCache

    cache = ProtoCache(tmp_path / "cache")
    source = cap.load_long_texts()[0]
    settings, config = cap.LadderSettings(max_length=5), preset("fast", max_steps=300)
    ran = cap.run_ladder(embedded_lm, {source.name: source.text}, settings, config, cache)
    assert ran.complete and ran.longest == {source.name: 5}
    assert ran.rows["length"].tolist() == [4, 5] and ran.rows["converged"].all()
    assert (ran.rows["c_tokens"] == ran.rows["length"]).all()
    for key, n in zip(ran.rows["key"], ran.rows["length"]):
        entry = cache.get(key, embedded_lm.hidden_size)
        assert reconstruct(embedded_lm, entry.e, entry.m, entry.token_ids, entry.layout).metrics.accuracy == 1.0
        assert len(entry.token_ids) == n and entry.metrics["h_lm"] > 0
    loaded = cap.load_ladder(embedded_lm, {source.name: source.text}, settings, config, cache)
    assert loaded.complete and loaded.rows["key"].tolist() == ran.rows["key"].tolist()


def test_the_shipped_ladder_is_recorded_compact_and_resumes(tiny_lm, tmp_path):
    from core.engine.cache import ProtoCache
    from core.shipped.ladder import load_ladder_record, ship_ladder

    config = preset("fast", max_steps=30)
    record = ship_ladder(tmp_path, lm=tiny_lm, max_length=5, config=config, quiet=True)
    assert record == load_ladder_record(tmp_path) and record["settings"] == {"max_length": 5, "shared_m": False}
    assert [row["length"] for row in record["rows"]][:3] == [4, 4, 4] and len(record["keys"]) == len(record["rows"])
    cache = ProtoCache(tmp_path, shipped="")
    assert all(not cache.get(k, tiny_lm.hidden_size).snapshots for k in record["keys"])
    again = ship_ladder(tmp_path, lm=tiny_lm, max_length=5, config=config, quiet=True)
    assert again["wall_time_s"] == record["wall_time_s"] and again["keys"] == record["keys"]  # nothing refitted


def test_ladder_rows_count_es_bos_prediction_where_it_is_recorded():
    import pandas as pd

    rows = pd.DataFrame({"accuracy": [1.0, 0.5, 0.75], "c_tokens": [4, 2, 3], "n_tokens": [4, 4, 4],
                         "bos_correct": [False, True, None]})
    counted, uncounted = cap.counted_rows(rows, "bos")
    assert counted["accuracy"].tolist() == [0.8, 0.6, 0.75] and counted["c_tokens"].tolist() == [4, 3, 3]
    assert counted["positions"].tolist() == [5, 5, 4] and uncounted == 1
    assert counted["n_tokens"].tolist() == [4, 4, 4]  # the length is the text's
    same, none = cap.counted_rows(rows, "text")
    assert same["accuracy"].tolist() == [1.0, 0.5, 0.75] and same["positions"].tolist() == [4, 4, 4] and none == 0
    with pytest.raises(ValueError):
        cap.counted_rows(rows, "tokens")
