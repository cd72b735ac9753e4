"""Every shipped result resolves with today's code: the pre-fitted sets, their teacher embeddings and default
maps, and the regulariser sweep (issue 13). A change that moves a cache key fails here, not on a user's
fresh install."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.analyses.projection import MAP_ANALYSIS
from core.engine.cache import SHIPPED_ROOT, ProtoCache
from core.shipped.migrate import current_key, rekey
from core.engine.sets import load_manifest


@pytest.fixture(scope="module")
def shipped():
    return ProtoCache(SHIPPED_ROOT, shipped="")


# Known shipped entries, keyed once and written down: (set, text, key). A refactor that moves any key of the
# fit (a field, a default, the hashing, the tokenisation) fails here, whatever the files now say.
PINNED = (
    ("variants", "A thick fog rolled in from the sea this morning, so the ferries stayed in the harbour until the "
     "sky cleared at noon.", "ff9a28339c8bd63c32fd1cad1dd0b7f53a23c0d2f8f7176edc4247b920de27d1"),
    ("variants", "Water boils at a lower temperature on a high mountain because the air pressure there is much "
     "weaker than at sea level.", "3c98abf03c017aa073b0892b5cc6adc51c9b94d8f57d79be8ac3738f2f3737db"),
    ("syntax", "Anna disappeared at the crowded market.",
     "185986edc1c0d9f043eda5f24bcb3699fc58b08b03ea245dc07eb75a69849cb3"),
)


@pytest.mark.parametrize("set_name, text, key", PINNED, ids=[p[2][:8] for p in PINNED])
def test_pinned_shipped_keys_do_not_move(shipped, set_name, text, key):
    record = load_manifest()[set_name]
    assert dict(zip(record.texts, record.keys))[text] == key
    entry = shipped.get(key)
    assert entry is not None and entry.text == text
    assert current_key(entry.meta()) == key, "today's code keys this shipped entry elsewhere"


@pytest.mark.embedded
def test_pinned_shipped_keys_are_what_a_page_looks_up(embedded_lm, tmp_path):
    """Today's tokeniser and key code, from the text alone, find each pinned entry (the Reconstruct page's path)."""
    from core.engine.fit import config_from_dict, lookup

    user = ProtoCache(tmp_path / "user", shipped=SHIPPED_ROOT)
    for set_name, text, key in PINNED:
        config = config_from_dict(load_manifest()[set_name].config)
        [entry] = lookup(embedded_lm, [text], config, user)
        assert entry is not None and entry.key == key, f"{text[:30]!r} now keys elsewhere"


def test_every_shipped_entry_is_valid_and_keyed_as_today_s_code_keys_it(shipped):
    files = sorted(shipped.entries_dir.glob("*.json"))
    metas = shipped.list()
    assert len(metas) == len(files) > 200 and not shipped.warnings
    for meta in metas:
        assert current_key(meta.meta) == meta.key, f"{meta.key} moved: its stored settings now key elsewhere"
    assert rekey(shipped, dry_run=True).moved == {}


def test_every_manifest_key_resolves(shipped):
    manifest = load_manifest()
    assert set(manifest) >= {"syntax", "variants", "variants-small"}
    on_disk = {p.stem for p in shipped.entries_dir.glob("*.json")}
    for name, record in manifest.items():
        assert len(record.keys) == len(record.texts) == record.n_fitted, name
        missing = [k for k in record.keys if k not in on_disk or shipped.get(k) is None]
        assert not missing, f"{name}: {len(missing)} listed entries do not resolve"
        for key, text in zip(record.keys, record.texts):
            assert shipped.get(key).text == text


def test_the_shipped_sweep_lists_only_entries_that_resolve(shipped):
    from core.analyses.regularisers import REGULARISER_ANALYSIS, setting_key
    from core.shipped.default_sweep import MANIFEST_ANALYSIS, load_default_sweep_manifest as load_sweep_manifest

    manifest = load_sweep_manifest(shipped)
    assert manifest is not None and len(manifest.settings) == 5
    folder = shipped.root / "analyses" / REGULARISER_ANALYSIS
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert len(records) == len(manifest.settings)
    for record in records:
        assert setting_key(record["keys"], record["groups"], record["teacher"]) == record["key"]
        entries = [shipped.get(k) for k in record["keys"]]
        assert all(e is not None for e in entries), record["label"]
        assert [e.text for e in entries] == manifest.texts
    assert shipped.get_analysis(MANIFEST_ANALYSIS, "default") is not None


@pytest.mark.embedded
def test_with_today_s_code_every_shipped_view_resolves_without_fitting(embedded_lm, tmp_path):
    """What the pages ask for on a fresh install, asked the way they ask it, from an empty user cache."""
    from core.analyses import embeddings as emb
    from core.engine.fit import config_from_dict, entry_keys
    from core.shipped.default_sweep import load_default_sweep
    from core.shipped.prefit import prefit_frame

    user = ProtoCache(tmp_path / "fresh", shipped=SHIPPED_ROOT)
    for name, record in load_manifest().items():
        assert record.model == embedded_lm.identity, name
        config = config_from_dict(record.config)
        keys, _ = entry_keys(embedded_lm, [embedded_lm.validate_text(t, config.layout) for t in record.texts], config)
        assert keys == record.keys, f"{name}: today's code keys the set's texts elsewhere"
        assert record.teacher_key == emb.teacher_key(record.texts)
        stored = user.get_analysis(emb.TEACHER_ANALYSIS, record.teacher_key, with_tensors=True)
        assert stored is not None and stored[1]["embeddings"].shape[0] == len(record.texts), name
        frame = prefit_frame(name)
        entries = [user.get(k, embedded_lm.hidden_size) for k in keys]
        teacher = stored[1]["embeddings"].double().numpy()
        kept = emb.assemble_set(frame, entries, min_accuracy=emb.DEFAULT_MIN_ACCURACY, teacher=teacher)
        for space in kept.spaces:
            key = emb.projection_key(kept, space, emb.DEFAULT_METHOD, "cosine", 0, emb.DEFAULT_PERPLEXITY)
            assert user.get_analysis(MAP_ANALYSIS, key) is not None, f"{name}: no shipped {space} map"
    found = load_default_sweep(embedded_lm, user)
    assert found is not None
    _, result = found
    assert result.missing == [] and len(result.results) == 5 and all(r.cached for r in result.results)
    assert all(np.isfinite(r.accuracy) for r in result.results)
    assert not (tmp_path / "fresh").exists(), "resolving the shipped views wrote to the user's cache"


@pytest.mark.embedded
def test_the_demo_entry_and_its_noise_and_attention_views_resolve_without_computing(embedded_lm, tmp_path):
    """The entry the pages open on while nothing is chosen (ui.state.default_entry), with the Noise page's default
    sweep and the Attention page's analysis of it, read from the shipped folder the way the pages read them."""
    from core.analyses.attention import run_attention
    from core.analyses.noise import PAPER_ALPHAS, NoiseSettings, load_noise, parse_alphas
    from core.shipped.demo import DEMO_SET, DEMO_TEXT, demo_entry

    user = ProtoCache(tmp_path / "fresh", shipped=SHIPPED_ROOT)
    record = load_manifest()[DEMO_SET]
    entry = demo_entry(embedded_lm.identity, user, embedded_lm.hidden_size)
    assert entry is not None and entry.text == DEMO_TEXT and entry.key == record.keys[record.texts.index(DEMO_TEXT)]
    assert entry.metrics["converged"] and 20 <= entry.n_tokens <= 35
    # The Noise page's default grid (its alpha box shows PAPER_ALPHAS) is NoiseSettings(): the shipped sweep's key.
    settings = NoiseSettings(alphas=parse_alphas(", ".join(f"{a:g}" for a in PAPER_ALPHAS)))
    assert settings == NoiseSettings()
    table = load_noise(embedded_lm, [entry], settings, user)
    assert table is not None and len(table) == settings.rows_per_entry and set(table["entry"]) == {entry.key}
    clean = table[table["alpha"] == 0]
    assert (clean["accuracy"] == entry.metrics["accuracy"]).all()
    result = run_attention(embedded_lm, entry, user)
    assert result.from_cache and result.n_tokens == entry.n_tokens
    assert tuple(result.to_e.shape[:2]) == (embedded_lm.num_layers, embedded_lm.num_heads)
    assert not (tmp_path / "fresh").exists(), "resolving the demo views wrote to the user's cache"


def test_the_learned_starts_of_the_shipped_entries_ship_with_them(shipped, monkeypatch):
    """A fresh install's first fit with a learned start (the fast preset's mean, or the nearest text) reads the
    shipped candidates' teacher embeddings and mean: no teacher run for the cache's texts, no vectors read."""
    import core.engine.teacher as teacher_mod
    from core.engine.start import candidate_embeddings, candidates, mean_start

    def no_teacher(*args, **kwargs):
        raise AssertionError("the shipped candidates were embedded again")

    monkeypatch.setattr(teacher_mod, "load_teacher", no_teacher)
    monkeypatch.setattr(ProtoCache, "get_many", lambda *a, **k: no_teacher())
    model = json.loads(next((shipped.root / "prototokens").glob("*.json")).read_text())["model"]
    rows = candidates(shipped, model, "e+m*N")
    assert len(rows) >= 150
    assert candidate_embeddings(shipped, model, rows).shape == (len(rows), 384)
    start = mean_start(shipped, model, 576)
    assert start is not None and start.text == f"the mean of {len(rows)} cached solutions"


@pytest.mark.embedded
def test_the_examples_ship_fitted_with_the_sidebar_s_default_settings_and_their_replay(embedded_lm, tmp_path):
    """The Reconstruct page's examples resolve with the settings the sidebar opens on, replay included, so picking
    one on a fresh install shows its fit at once (and the list marks it)."""
    from core.engine.fit import UI_PRESETS, lookup, preset
    from core.shipped.prefit import EXAMPLES_SET, examples_config
    from core.texts.textsets import load_examples

    record = load_manifest()[EXAMPLES_SET]
    assert record.config == examples_config().as_dict() == preset(UI_PRESETS[0]).as_dict()
    user = ProtoCache(tmp_path / "fresh", shipped=SHIPPED_ROOT)
    found = lookup(embedded_lm, [ex.text for ex in load_examples()], preset(UI_PRESETS[0]), user)
    assert [e.key if e else None for e in found] == record.keys
    converged = [e for e in found if e is not None and e.metrics.get("converged")]
    assert len(converged) >= len(found) - 1, [e.metrics.get("accuracy") for e in found if e]
    assert all(len(e.snapshots) > 1 and len(e.history["step"]) == e.metrics["steps"] + 1 for e in converged)
