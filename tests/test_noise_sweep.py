"""core.analyses.noise sweeps: batched decoding, alpha 0, seeding, the table's shape, caching, flip rates."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

import core.analyses.noise
from core.engine.cache import ProtoCache
from core.engine.fit import fit_and_cache, preset
from core.analyses.noise import (
    ANALYSIS_KIND,
    NOISE_TYPES,
    PAPER_ALPHAS,
    NOISE_COLUMNS,
    NoiseSettings,
    load_noise,
    flip_rates,
    run_noise,
    parse_alphas,
    summarize_noise,
)
from core.engine.reconstruct import reconstruct

TEXT = "Hello world"
# Too few steps to converge on purpose: the entry then has wrong tokens of its own at alpha 0, which the
# flip-rate baseline must show; the other properties hold either way.
FIT_STEPS = 40


def sweep(lm, entries, kinds=NOISE_TYPES, alphas=PAPER_ALPHAS, draws=8, target="e", seed=0, progress=None,
          cache=None, *, batched=True):
    """run_noise with the grid spelled out, as these tests vary it."""
    settings = NoiseSettings(kinds=tuple(kinds), alphas=tuple(alphas), draws=draws, target=target, seed=seed)
    return run_noise(lm, entries, settings, progress, cache, batched=batched)


@pytest.fixture(scope="module")
def fitted(tiny_lm, tmp_path_factory):
    """One tiny-model entry, fitted once for the module, with the cache it lives in."""
    cache = ProtoCache(tmp_path_factory.mktemp("noise-sweep-cache"))
    [outcome] = fit_and_cache(tiny_lm, [TEXT], preset("fast", max_steps=FIT_STEPS), cache)
    return outcome.entry, cache


def test_table_columns_and_row_count(tiny_lm, fitted):
    entry, _ = fitted
    kinds, alphas, draws = ("gaussian", "sinusoidal"), (0.0, 0.1, 0.5), 3
    df = sweep(tiny_lm, [entry, entry], kinds, alphas, draws, target="e", seed=0)
    assert tuple(df.columns) == NOISE_COLUMNS
    assert len(df) == 2 * len(kinds) * len(alphas) * draws
    counts = df.groupby(["type", "alpha"]).size()
    assert (counts == 2 * draws).all() and len(counts) == len(kinds) * len(alphas)
    assert all(len(tokens) == entry.n_tokens for tokens in df["tokens"])
    assert df["accuracy"].between(0, 1).all() and df["correct_prefix_rel"].between(0, 1).all()
    assert (df["correct_prefix_rel"] * df["n_tokens"]).round().astype(int).eq(df["correct_prefix"]).all()


def test_batched_and_one_by_one_agree(tiny_lm, fitted):
    entry, _ = fitted
    settings = dict(kinds=("gaussian", "sinusoidal"), alphas=(0.3, 1.0), draws=3, seed=3)
    for target in ("e", "both"):
        batched = sweep(tiny_lm, [entry], target=target, **settings)
        single = sweep(tiny_lm, [entry], target=target, batched=False, **settings)
        pd.testing.assert_frame_equal(batched, single)


def test_one_forward_pass_per_type_and_alpha(tiny_lm, fitted, monkeypatch):
    entry, _ = fitted
    calls = []
    original = core.analyses.noise.predict_with_e

    def counting(lm, e, m, n_tokens, layout, with_e=True):
        calls.append(tuple(e.shape))
        return original(lm, e, m, n_tokens, layout, with_e)

    monkeypatch.setattr(core.analyses.noise, "predict_with_e", counting)
    sweep(tiny_lm, [entry], ("gaussian", "uniform"), (0.0, 0.2, 1.0), draws=5)
    # Alpha 0 is decoded once for the entry; every other (type, alpha) in one batch of all its draws.
    assert calls == [(1, entry.e.shape[0])] + [(5, entry.e.shape[0])] * 4
    assert len(calls) == NoiseSettings(("gaussian", "uniform"), (0.0, 0.2, 1.0), draws=5).passes_per_entry


def test_alpha_zero_is_the_entrys_own_reconstruction(tiny_lm, fitted):
    entry, _ = fitted
    df = sweep(tiny_lm, [entry], NOISE_TYPES, (0.0,), draws=3, target="both")
    own = reconstruct(tiny_lm, entry.e, entry.m, entry.token_ids, entry.layout)
    assert (df["accuracy"] == own.metrics.accuracy).all()
    # The fit stores its accuracy through float32, hence approx.
    assert df["accuracy"].tolist() == pytest.approx([entry.metrics["accuracy"]] * len(df))
    assert all(tokens == own.token_ids for tokens in df["tokens"])


def test_same_seed_same_table_different_seed_different(tiny_lm, fitted):
    entry, _ = fitted
    args = (tiny_lm, [entry], ("gaussian", "uniform"), (0.3, 1.0), 4)
    first = sweep(*args, seed=1)
    pd.testing.assert_frame_equal(first, sweep(*args, seed=1))
    assert first["tokens"].tolist() != sweep(*args, seed=2)["tokens"].tolist()


def test_cache_hit_returns_equal_table_without_forward_passes(tiny_lm, fitted, tmp_cache, monkeypatch):
    entry, _ = fitted
    args = (tiny_lm, [entry], ("gaussian", "signed_exponential"), (0.0, 0.2), 2)
    fractions = []
    first = sweep(*args, target="m", cache=tmp_cache, progress=fractions.append)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 4
    stored = list((tmp_cache.root / "analyses" / ANALYSIS_KIND).glob("*"))
    assert [p.suffix for p in stored] == [".json"]  # JSON only: no pickle, no tensors needed

    def no_forward_pass(*_, **__):
        raise AssertionError("a cached sweep must not run the model")

    monkeypatch.setattr(core.analyses.noise, "predict_with_e", no_forward_pass)
    second = sweep(*args, target="m", cache=tmp_cache)
    pd.testing.assert_frame_equal(first, second)
    settings = NoiseSettings(kinds=args[2], alphas=args[3], draws=2, target="m")
    pd.testing.assert_frame_equal(load_noise(tiny_lm, [entry], settings, tmp_cache), first)
    # Another setting is another key: a miss, which now needs the model.
    assert load_noise(tiny_lm, [entry], NoiseSettings(kinds=args[2], alphas=args[3], draws=2), tmp_cache) is None
    with pytest.raises(AssertionError, match="cached sweep"):
        sweep(*args, target="e", cache=tmp_cache)


def test_corrupt_cached_table_is_a_miss(tiny_lm, fitted, tmp_cache):
    entry, _ = fitted
    args = (tiny_lm, [entry], ("uniform",), (0.5,), 2)
    first = sweep(*args, cache=tmp_cache)
    [path] = (tmp_cache.root / "analyses" / ANALYSIS_KIND).glob("*.json")
    path.write_text("{not json")
    pd.testing.assert_frame_equal(sweep(*args, cache=tmp_cache), first)


def test_flip_rates_shape_and_values(tiny_lm, fitted):
    entry, _ = fitted
    alphas = (0.0, 0.1, 1.0)
    df = sweep(tiny_lm, [entry], ("gaussian", "uniform"), alphas, draws=4)
    rates = flip_rates(df, entry)
    assert rates.shape == (entry.n_tokens, len(alphas))
    assert list(rates.columns) == list(alphas) and list(rates.index) == list(range(entry.n_tokens))
    assert ((rates >= 0) & (rates <= 1)).all().all()
    own = reconstruct(tiny_lm, entry.e, entry.m, entry.token_ids, entry.layout).token_ids
    expected_baseline = [float(p != t) for p, t in zip(own, entry.token_ids)]
    assert rates[0.0].tolist() == expected_baseline
    # Mean flip rate over positions is one minus the mean accuracy of the same rows.
    for alpha in alphas:
        accuracy = df.loc[df["alpha"] == alpha, "accuracy"].mean()
        assert rates[alpha].mean() == pytest.approx(1 - accuracy)
    assert flip_rates(df, entry, kinds=["gaussian"]).shape == rates.shape


def test_summary_statistics(tiny_lm, fitted):
    entry, _ = fitted
    df = sweep(tiny_lm, [entry], ("gaussian", "sinusoidal"), (0.0, 0.5), draws=3)
    summary = summarize_noise(df)
    assert len(summary) == 4 and (summary["rows"] == 3).all()
    row = summary[(summary["type"] == "gaussian") & (summary["alpha"] == 0.5)].iloc[0]
    values = df[(df["type"] == "gaussian") & (df["alpha"] == 0.5)]["accuracy"]
    assert row["accuracy_mean"] == pytest.approx(values.mean())
    assert row["accuracy_std"] == pytest.approx(values.std(ddof=0))
    assert (row["accuracy_min"], row["accuracy_max"]) == (values.min(), values.max())
    assert (summary[summary["alpha"] == 0.0]["accuracy_std"] == 0).all()


def test_bad_settings_and_entries(tiny_lm, fitted):
    entry, _ = fitted
    with pytest.raises(ValueError, match="noise type"):
        sweep(tiny_lm, [entry], (), (0.1,), 2)
    with pytest.raises(ValueError, match="unknown noise type"):
        sweep(tiny_lm, [entry], ("pink",), (0.1,), 2)
    with pytest.raises(ValueError, match="alpha"):
        sweep(tiny_lm, [entry], ("gaussian",), (-0.1,), 2)
    with pytest.raises(ValueError, match="draws"):
        sweep(tiny_lm, [entry], ("gaussian",), (0.1,), 0)
    with pytest.raises(ValueError, match="target"):
        sweep(tiny_lm, [entry], ("gaussian",), (0.1,), 2, target="x")
    with pytest.raises(ValueError, match="no entries"):
        sweep(tiny_lm, [], ("gaussian",), (0.1,), 2)
    foreign = type(entry)(**{**entry.__dict__, "model": "another-model"})
    with pytest.raises(ValueError, match="fitted on"):
        sweep(tiny_lm, [foreign], ("gaussian",), (0.1,), 2)


def test_parse_alphas():
    assert parse_alphas("0, 0.05, 0.1, 0.2, 0.5, 1.0") == PAPER_ALPHAS
    assert parse_alphas(" 1.0 0.5;0.5,0 ") == (0.0, 0.5, 1.0)
    for bad, message in [("", "at least one"), ("0, abc", "'abc' is not a number"), ("0.1, -1", "out of range"),
                         ("nan", "out of range"), ("inf", "out of range")]:
        with pytest.raises(ValueError, match=message):
            parse_alphas(bad)
    settings = NoiseSettings(kinds=("uniform", "gaussian", "uniform"), alphas=(0.5, 0, 0.5))
    assert settings.kinds == ("uniform", "gaussian") and settings.alphas == (0.0, 0.5)


@pytest.mark.embedded
def test_embedded_sweep_accuracy_falls_with_alpha(embedded_lm, embedded_fitted):
    entries = [outcome.entry for outcome in embedded_fitted]
    df = sweep(embedded_lm, entries, ("gaussian", "sinusoidal"), (0.0, 0.2, 1.0), draws=4)
    assert len(df) == len(entries) * 2 * 3 * 4
    mean = df.groupby("alpha")["accuracy"].mean()
    assert mean[0.0] == 1.0
    # a monotone fall, to near nothing at alpha 1 (measured 0.06): 100x too little noise would keep it high
    assert mean[0.0] > mean[0.2] > mean[1.0], mean.to_dict()
    assert mean[1.0] < 0.25, mean.to_dict()
    assert torch.tensor(df["accuracy"].tolist()).isfinite().all()


def test_noise_key_names_every_setting_the_entry_and_the_device(tiny_lm, fitted, tmp_cache):
    """A change of any grid setting (each NoiseSettings field in turn), of the entry or of the device is another
    table: a sweep cached under one seed must not be shown for another (the Noise page reads by this key)."""
    import dataclasses

    from core.analyses.noise import noise_key

    entry, _ = fitted
    base = NoiseSettings(kinds=("gaussian",), alphas=(0.0, 0.1), draws=2, target="e", seed=0)
    changed = {"kinds": ("uniform",), "alphas": (0.0, 0.2), "draws": 3, "target": "m", "seed": 1, "protocol": "authors"}
    assert set(changed) == {f.name for f in dataclasses.fields(NoiseSettings)}, "a new setting: vary it here too"
    key = noise_key(tiny_lm, entry, base)
    assert noise_key(tiny_lm, entry, NoiseSettings(**dataclasses.asdict(base))) == key
    for name, value in changed.items():
        assert noise_key(tiny_lm, entry, dataclasses.replace(base, **{name: value})) != key, name
    assert noise_key(dataclasses.replace(tiny_lm, device=torch.device("meta")), entry, base) != key
    assert noise_key(tiny_lm, dataclasses.replace(entry, key="0" * 64), base) != key
    # and through the cache: the seed-0 table is no answer for seed 1
    sweep(tiny_lm, [entry], base.kinds, base.alphas, base.draws, cache=tmp_cache)
    assert load_noise(tiny_lm, [entry], base, tmp_cache) is not None
    assert load_noise(tiny_lm, [entry], dataclasses.replace(base, seed=1), tmp_cache) is None


def test_the_summary_and_the_flip_rates_of_rows_in_any_order():
    """Hand-made rows, shuffled: the summary comes out sorted by type and alpha, with its named columns and exact
    values; the flip rates are a float [position x alpha] table with named axes, alphas ascending, and `kinds`
    keeps only those types' rows."""
    from tests.conftest import fake_entry

    entry = fake_entry("k" * 64, "abc", [0.0], [0.0])  # target tokens [1, 2, 3]
    rows = pd.DataFrame([
        # type, alpha, accuracy, correct_prefix_rel, tokens
        ("uniform", 0.5, 1 / 3, 0.0, [9, 2, 9]),
        ("gaussian", 0.5, 0.0, 0.0, [9, 9, 9]),
        ("uniform", 0.0, 1.0, 1.0, [1, 2, 3]),
        ("gaussian", 0.1, 2 / 3, 2 / 3, [1, 2, 9]),
        ("gaussian", 0.5, 2 / 3, 1 / 3, [1, 9, 3]),
        ("gaussian", 0.0, 1.0, 1.0, [1, 2, 3]),
    ], columns=["type", "alpha", "accuracy", "correct_prefix_rel", "tokens"]).assign(entry=entry.key)

    summary = summarize_noise(rows)
    assert list(summary.columns) == ["type", "alpha", "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max",
                                     "correct_prefix_rel_mean", "correct_prefix_rel_std", "correct_prefix_rel_min",
                                     "correct_prefix_rel_max", "rows"]
    assert list(zip(summary["type"], summary["alpha"])) == [("gaussian", 0.0), ("gaussian", 0.1), ("gaussian", 0.5),
                                                            ("uniform", 0.0), ("uniform", 0.5)]
    two = summary.iloc[2]  # gaussian at 0.5: accuracies 0 and 2/3, prefixes 0 and 1/3
    assert (two["rows"], two["accuracy_mean"], two["accuracy_std"]) == (2, pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert (two["correct_prefix_rel_min"], two["correct_prefix_rel_max"]) == (0.0, pytest.approx(1 / 3))
    assert summarize_noise(rows, by=["alpha"])["alpha"].tolist() == [0.0, 0.1, 0.5]

    rates = flip_rates(rows, entry)
    assert rates.index.equals(pd.RangeIndex(3, name="position")) and rates.columns.name == "alpha"
    assert list(rates.columns) == [0.0, 0.1, 0.5] and (rates.dtypes == "float64").all()
    assert rates[0.5].tolist() == [pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert rates[0.1].tolist() == [0.0, 0.0, 1.0] and rates[0.0].tolist() == [0.0, 0.0, 0.0]
    only_uniform = flip_rates(rows, entry, kinds=["uniform"])
    assert list(only_uniform.columns) == [0.0, 0.5] and only_uniform[0.5].tolist() == [1.0, 0.0, 1.0]


def test_a_stored_sweep_names_its_entry_and_settings_and_a_malformed_one_is_a_miss(tiny_lm, fitted, tmp_cache, caplog):
    """The file a sweep leaves in the cache says what it is (version, entry, settings: JSON a person and a
    migration can read); two entries load as one table indexed 0..n-1; a file whose columns are not a table is a
    miss with a warning naming the sweep, never a crash."""
    import json
    import logging

    from core.analyses.noise import NOISE_VERSION, noise_key

    entry, _ = fitted
    settings = NoiseSettings(kinds=("uniform",), alphas=(0.0, 0.5), draws=2)
    run_noise(tiny_lm, [entry], settings, cache=tmp_cache)
    key = noise_key(tiny_lm, entry, settings)
    meta = json.loads((tmp_cache.root / "analyses" / ANALYSIS_KIND / f"{key}.json").read_text())
    assert (meta["version"], meta["entry"]) == (NOISE_VERSION, entry.key)
    assert meta["settings"] == {"kinds": ["uniform"], "alphas": [0.0, 0.5], "draws": 2, "target": "e", "seed": 0,
                                "protocol": "lab"}

    both = load_noise(tiny_lm, [entry, entry], settings, tmp_cache)
    assert both.index.equals(pd.RangeIndex(8)) and len(both) == 2 * 2 * 2

    for columns in (None, 7, ["entry", "type"]):
        tmp_cache.put_analysis(ANALYSIS_KIND, key, {**meta, "columns": columns})
        with caplog.at_level(logging.WARNING, logger="core.analyses.noise"):
            caplog.clear()
            assert load_noise(tiny_lm, [entry], settings, tmp_cache) is None
        assert f"Ignoring malformed noise sweep {key[:8]} in the cache" in caplog.text


def test_the_sweep_decodes_each_type_alpha_and_target_s_own_noise(tiny_lm, fitted, monkeypatch):
    """Every (type, alpha) of a sweep decodes exactly noisy_pair's vectors for that spec, with the entry's own
    seed: a sweep that used one type, one alpha or another target for all would show wrong curves."""
    from core.analyses.noise import NoiseSpec, entry_seed, noisy_pair

    entry, _ = fitted
    seen = []
    real = core.analyses.noise._decode_draws

    def recording(lm, entry_, noisy_e, noisy_m, batched):
        seen.append((noisy_e.clone(), noisy_m.clone()))
        return real(lm, entry_, noisy_e, noisy_m, batched)

    monkeypatch.setattr(core.analyses.noise, "_decode_draws", recording)
    kinds, alphas = ("uniform", "sinusoidal"), (0.2, 0.7)
    sweep(tiny_lm, [entry], kinds, alphas, draws=2, target="m", seed=5)
    expected = [noisy_pair(entry.e, entry.m, NoiseSpec(kind=k, alpha=a, draws=2, seed=entry_seed(5, entry.key),
                                                       target="m")) for k in kinds for a in alphas]
    assert len(seen) == len(expected) == 4
    for (e, m), (want_e, want_m) in zip(seen, expected):
        assert torch.equal(e, want_e) and torch.equal(m, want_m)


def test_an_entry_s_noise_seed_and_a_sweep_s_key_are_pinned():
    """The seed derivation decides every stored sweep's numbers while its key stays: changing it must bump
    NOISE_VERSION. The key moves with the version, the model's identity, the device and the settings."""
    from types import SimpleNamespace

    from core.analyses.noise import entry_seed, noise_key
    from tests.conftest import fake_entry

    assert (entry_seed(0, "a" * 64), entry_seed(5, "b" * 64)) == (3563297203, 689059282)
    entry = fake_entry("c" * 64, "abc", [0.0], [0.0])
    lm = SimpleNamespace(identity="model-a", device=torch.device("cpu"))
    key = noise_key(lm, entry, NoiseSettings())
    assert noise_key(SimpleNamespace(identity="model-b", device=lm.device), entry, NoiseSettings()) != key
    assert noise_key(lm, entry, NoiseSettings(draws=2)) != key
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core.analyses.noise, "NOISE_VERSION", f"{core.analyses.noise.NOISE_VERSION}-next")
        assert noise_key(lm, entry, NoiseSettings()) != key


def test_sweep_settings_take_their_bounds_and_name_what_is_wrong(tiny_lm, fitted):
    from core.analyses.noise import MAX_ALPHAS, MAX_DRAWS

    assert NoiseSettings(draws=1).draws == 1 and NoiseSettings(draws=MAX_DRAWS).draws == MAX_DRAWS
    loose = NoiseSettings(draws=3.0, seed=2.0)
    assert (type(loose.draws), type(loose.seed)) == (int, int)
    assert len(NoiseSettings(alphas=tuple(i / 100 for i in range(MAX_ALPHAS))).alphas) == MAX_ALPHAS
    for bad, message in ((dict(draws=0), f"draws must be between 1 and {MAX_DRAWS}, got 0"),
                         (dict(draws=MAX_DRAWS + 1), f"draws must be between 1 and {MAX_DRAWS}, got {MAX_DRAWS + 1}"),
                         (dict(alphas=tuple(i / 100 for i in range(MAX_ALPHAS + 1))),
                          f"{MAX_ALPHAS + 1} alphas given; at most {MAX_ALPHAS}"),
                         (dict(alphas=()), "give at least one alpha"), (dict(kinds=()), "choose at least one noise type"),
                         (dict(target="x"), "unknown noise target 'x'; valid targets: e, m, both")):
        with pytest.raises(ValueError) as raised:
            NoiseSettings(**bad)
        assert str(raised.value) == message
    entry, _ = fitted
    with pytest.raises(ValueError, match="^no entries to sweep: choose at least one fitted entry$"):
        run_noise(tiny_lm, [], NoiseSettings())
    other = dataclasses.replace(entry, model="another", model_name="")
    with pytest.raises(ValueError, match=rf"^entry {entry.key[:8]} was fitted on 'another', not on .*; proto-tokens only "
                                         "mean something to the model they were fitted for$"):
        run_noise(tiny_lm, [other], NoiseSettings())
    narrow = dataclasses.replace(entry)
    object.__setattr__(narrow, "m", entry.m[:-1])  # only m of another width (a CacheEntry's own check refuses it)
    with pytest.raises(ValueError, match=rf"^entry {entry.key[:8]} has width \({tiny_lm.hidden_size},\), the model "):
        run_noise(tiny_lm, [narrow], NoiseSettings())


def test_progress_counts_each_type_and_alpha_once(tiny_lm, fitted):
    entry, _ = fitted
    fractions = []
    sweep(tiny_lm, [entry, entry], ("uniform",), (0.0, 0.1, 0.5), draws=1, progress=fractions.append)
    assert fractions == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])


def _recorded_specs(monkeypatch) -> list:
    specs = []
    original = core.analyses.noise.noisy_pair

    def recording(e, m, spec):
        specs.append(spec)
        return original(e, m, spec)

    monkeypatch.setattr(core.analyses.noise, "noisy_pair", recording)
    return specs


def test_the_authors_protocol_draws_once_per_alpha_in_fresh_directions(tiny_lm, fitted, monkeypatch):
    entry, _ = fitted
    specs = _recorded_specs(monkeypatch)
    alphas = (0.0, 0.1, 0.5, 1.0)
    lab = run_noise(tiny_lm, [entry], NoiseSettings(("gaussian",), alphas, draws=4))
    lab_seeds = {s.seed for s in specs}
    specs.clear()
    authors = run_noise(tiny_lm, [entry], NoiseSettings(("gaussian",), alphas, draws=4, protocol="authors"))
    assert len(lab_seeds) == 1 and len({s.seed for s in specs}) == 3  # the same directions, or one per alpha > 0
    assert {s.draws for s in specs} == {1} and NoiseSettings(draws=8, protocol="authors").draws == 1
    assert len(authors) == len(alphas) and len(lab) == 4 * len(alphas)
    with pytest.raises(ValueError):
        NoiseSettings(protocol="paper")


def test_the_authors_protocol_keeps_entries_fitted_to_point_nine(fitted):
    from core.analyses.noise import authors_entries

    entry, _ = fitted
    good = dataclasses.replace(entry, key="a" * 64, metrics={**entry.metrics, "accuracy": 0.9})
    bad = dataclasses.replace(entry, key="b" * 64, metrics={**entry.metrics, "accuracy": 0.89})
    assert authors_entries([good, bad]) == [good]


def test_a_table_counted_over_n_plus_one_includes_e_s_bos_prediction():
    from core.analyses.noise import _table, counted_table

    rows = [{"entry": "k", "type": "gaussian", "alpha": 0.1, "draw": d, "accuracy": 0.75, "c_tokens": 3,
             "correct_prefix": 2, "correct_prefix_rel": 0.5, "n_tokens": 4, "tokens": [1, 2, 3, 4], "bos_correct": b}
            for d, b in enumerate((1, 0, -1))]
    table = counted_table(_table(rows), "bos")
    assert table["accuracy"].tolist() == [0.8, 0.6, 0.75]
    assert table["correct_prefix"].tolist() == [3, 0, 2] and table["n_tokens"].tolist() == [5, 5, 4]
    assert counted_table(_table(rows), "text").equals(_table(rows))
    with pytest.raises(ValueError):
        counted_table(_table(rows), "tokens")


def test_an_old_table_without_the_bos_column_is_a_miss(tiny_lm, fitted, tmp_path):
    from core.analyses.noise import NOISE_VERSION

    entry, _ = fitted
    assert NOISE_VERSION == "noise-sweep-v2"
    cache = ProtoCache(tmp_path / "c")
    settings = NoiseSettings(("gaussian",), (0.0, 0.1), draws=2)
    run_noise(tiny_lm, [entry], settings, cache=cache)
    [path] = (cache.root / "analyses" / ANALYSIS_KIND).glob("*.json")
    import json

    meta = json.loads(path.read_text())
    del meta["columns"]["bos_correct"]
    path.write_text(json.dumps(meta))
    assert load_noise(tiny_lm, [entry], settings, cache) is None
