"""core.analyses.regularisers and the regularised fit underneath it, on the tiny random model with few steps."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import core.engine.fit
from core.engine.cache import ProtoCache
from core.engine.fit import entry_keys, fit_and_cache, fit_texts, preset
from core.engine.reconstruct import scored_logits
from core.analyses.regularisers import (
    RegulariserError,
    RegulariserJob,
    RegulariserSetting,
    default_settings,
    load_regularisers,
    parse_lambdas,
    run_regularisers,
    summarize_regularisers,
)
from core.shipped.default_sweep import load_default_sweep, load_default_sweep_manifest, prefit_default_sweep
from core.engine.teacher import RegularizerConfig, regularizer_loss

TEXTS = ["ab cd", "ab ce", "xy zw", "xy zv"]
GROUPS = ["a", "a", "x", "x"]
STEPS = 12


def _teacher(n: int = len(TEXTS), width: int = 16, seed: int = 0) -> torch.Tensor:
    # Two clear clusters, like paraphrases of two sources, so the silhouette and alignment are defined.
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, width, generator=g) * 3
    return centres[[0, 0, 1, 1][:n]] + torch.randn(n, width, generator=g) * 0.3


def _config(**overrides):
    return preset("first-paper", **{"max_steps": STEPS, **overrides})


def _no_fit(*args, **kwargs):
    raise AssertionError("a cached setting must not be fitted again")


def test_lambda_zero_is_the_unregularised_fit(tiny_lm, tmp_cache):
    plain = _config()
    zero = replace(plain, regularizer=RegularizerConfig("anchor", 0.0))
    targets = [tiny_lm.validate_text(t) for t in TEXTS[:2]]
    assert entry_keys(tiny_lm, targets, zero) == entry_keys(tiny_lm, targets, plain)
    assert RegulariserSetting("relational", 0.0).normalised() == RegulariserSetting()
    assert RegulariserSetting("anchor", 0.0).regularizer() is None

    first = fit_and_cache(tiny_lm, TEXTS[:2], plain, tmp_cache)
    second = fit_and_cache(tiny_lm, TEXTS[:2], zero, tmp_cache)
    assert [o.cached for o in second] == [True, True]
    assert [o.entry.key for o in first] == [o.entry.key for o in second]
    # Not only the key: fitting with lambda 0 gives the very same vectors.
    again = fit_texts(tiny_lm, TEXTS[:2], zero)
    for outcome, result in zip(first, again):
        assert torch.equal(outcome.entry.e, result.e) and torch.equal(outcome.entry.m, result.m)


@pytest.mark.parametrize("kind", ["anchor", "relational"])
def test_regularised_loss_reaches_only_the_proto_tokens(tiny_lm, kind):
    lengths = [len(tiny_lm.validate_text(t)) for t in TEXTS]
    hidden = tiny_lm.hidden_size
    e = torch.nn.Parameter(torch.randn(len(TEXTS), hidden))
    m = torch.nn.Parameter(torch.randn(len(TEXTS), hidden))
    logits = scored_logits(tiny_lm, e, m, lengths, "e+m*N")
    targets = [torch.tensor(tiny_lm.validate_text(t)) for t in TEXTS]
    cross_entropy = sum(F.cross_entropy(logits[i, :n], targets[i]) for i, n in enumerate(lengths))
    penalty = regularizer_loss(RegularizerConfig(kind, 1.0), e, _teacher())
    assert penalty.item() > 0
    (cross_entropy + penalty).backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_lm.model.parameters())
    assert e.grad is not None and torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0
    assert m.grad is not None and torch.isfinite(m.grad).all()

    # The penalty alone moves e only (target "e"): m gets nothing from it.
    e2 = torch.nn.Parameter(torch.randn(len(TEXTS), hidden))
    m2 = torch.nn.Parameter(torch.randn(len(TEXTS), hidden))
    regularizer_loss(RegularizerConfig(kind, 1.0), e2, _teacher()).backward()
    assert e2.grad is not None and e2.grad.abs().sum() > 0 and m2.grad is None


def test_regularised_fit_leaves_the_model_untouched(tiny_lm):
    before = [p.detach().clone() for p in tiny_lm.model.parameters()]
    fit_texts(tiny_lm, TEXTS, _config(regularizer=RegularizerConfig("relational", 1.0)), teacher_embeddings=_teacher())
    for p, q in zip(tiny_lm.model.parameters(), before):
        assert p.grad is None and torch.equal(p, q)


def test_sweep_of_two_settings_then_cache_hit(tiny_lm, tmp_cache, monkeypatch):
    settings = [RegulariserSetting(), RegulariserSetting("relational", 1.0)]
    seen = []
    result = run_regularisers(tiny_lm, TEXTS, GROUPS, settings, _config(), tmp_cache, progress=seen.append,
                       teacher_emb=_teacher())
    assert result.complete and not result.stopped
    table = summarize_regularisers(result)
    assert table["setting"].tolist() == ["none", "relational λ=1"]
    for column in ("accuracy", "alignment_e", "alignment_m", "silhouette_e", "silhouette_m", "wall_time_s"):
        assert np.isfinite(table[column].to_numpy(dtype=float)).all(), column
    assert ((table["accuracy"] >= 0) & (table["accuracy"] <= 1)).all()
    assert not table["cached"].any()
    assert {p.index for p in seen} == {0, 1} and any(p.fit is not None for p in seen)
    assert result.results[1].e.shape == (len(TEXTS), tiny_lm.hidden_size)
    # the seed paper's count: the tiny tokenizer has no BOS token, so N positions, and the page is told so
    assert summarize_regularisers(result, "bos")["accuracy"].equals(table["accuracy"])
    assert [r.bos_uncounted for r in result.results] == [len(TEXTS)] * 2
    counted = replace(result.results[0], bos_accuracy=0.25)
    assert counted.accuracy_in("bos") == 0.25 and counted.accuracy_in("text") == result.results[0].accuracy
    with pytest.raises(ValueError):
        counted.accuracy_in("tokens")

    monkeypatch.setattr(core.engine.fit, "fit_texts", _no_fit)
    again = run_regularisers(tiny_lm, TEXTS, GROUPS, settings, _config(), tmp_cache, teacher_emb=_teacher())
    assert summarize_regularisers(again)["cached"].all()
    assert summarize_regularisers(again).drop(columns="cached").equals(table.drop(columns="cached"))
    # Nothing fitted, nothing asked of the teacher: the stored metrics are enough.
    loaded = load_regularisers(tiny_lm, TEXTS, GROUPS, settings, _config(), tmp_cache)
    assert len(loaded.results) == 2 and np.array_equal(loaded.results[1].e, result.results[1].e)


def test_regulariser_changes_e(tiny_lm, tmp_cache, monkeypatch):
    import core.engine.fit

    draws = []  # every initial vector drawn, in order: (seed, vector)
    original = core.engine.fit._init_vector

    def recording(hidden, distribution, seed):
        vector = original(hidden, distribution, seed)
        draws.append((seed, vector.clone()))
        return vector

    monkeypatch.setattr(core.engine.fit, "_init_vector", recording)
    settings = [RegulariserSetting(), RegulariserSetting("anchor", 1.0), RegulariserSetting("relational", 1.0)]
    results, first_draws = [], []
    for setting in settings:  # one at a time, to tell whose draws are whose
        draws.clear()
        [one] = run_regularisers(tiny_lm, TEXTS, GROUPS, [setting], _config(), tmp_cache, teacher_emb=_teacher()).results
        results.append(one)
        first_draws.append(draws[: 2 * len(TEXTS)])  # e and m of every text (a redraw may follow)
    none, anchor, relational = results
    assert not np.allclose(none.e, anchor.e) and not np.allclose(none.e, relational.e)
    assert len({tuple(r.keys) for r in results}) == 3
    # Same init, so the difference is the regulariser's doing, not the seed's.
    for other in first_draws[1:]:
        assert len(other) == 2 * len(TEXTS)
        assert [seed for seed, _ in other] == [seed for seed, _ in first_draws[0]]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(other, first_draws[0]))


def test_stop_keeps_finished_settings(tiny_lm, tmp_cache):
    settings = [RegulariserSetting(), RegulariserSetting("anchor", 1.0)]
    cancel = threading.Event()

    def stop_in_second(p):
        if p.index == 1 and p.fit is not None:
            cancel.set()

    result = run_regularisers(tiny_lm, TEXTS, GROUPS, settings, _config(max_steps=40, threshold=1.0), tmp_cache,
                       progress=stop_in_second, cancel=cancel, teacher_emb=_teacher())
    assert result.stopped and [r.setting.label for r in result.results] == ["none"]
    assert result.missing == [RegulariserSetting("anchor", 1.0)]
    resumed = run_regularisers(tiny_lm, TEXTS, GROUPS, settings, _config(max_steps=40, threshold=1.0), tmp_cache,
                        teacher_emb=_teacher())
    assert resumed.complete and resumed.results[0].cached and not resumed.results[1].cached


def test_sweep_job_runs_in_background(tiny_lm, tmp_cache):
    job = RegulariserJob(tiny_lm, TEXTS, GROUPS, [RegulariserSetting(), RegulariserSetting("relational", 0.5)], _config(), tmp_cache)
    # The job asks the cache for the teacher embeddings: put them there so no teacher is loaded.
    from core.analyses.embeddings import TEACHER_ANALYSIS, teacher_key

    tmp_cache.put_analysis(TEACHER_ANALYSIS, teacher_key(TEXTS), {}, {"embeddings": _teacher()})
    snap = job.start().wait(120)
    assert snap.state == "done", snap.error
    assert snap.status == ["done", "done"] and snap.fraction == 1.0
    assert [r.setting.label for r in snap.result.results] == ["none", "relational λ=0.5"]


def test_parse_lambdas_and_settings():
    assert parse_lambdas("1, 0.1 0.1;0.5") == (0.1, 0.5, 1.0)
    for bad, words in [("", "at least one"), ("0.1, abc", "'abc' is not a number"), ("0", "> 0"),
                       ("-1", "> 0"), ("nan", "finite"), ("1 2 3 4 5 6 7 8 9", "at most")]:
        with pytest.raises(RegulariserError, match=words):
            parse_lambdas(bad)
    labels = [s.label for s in default_settings(["anchor", "relational"], [1.0, 0.1], target="m")]
    assert labels == ["none", "anchor λ=0.1 on m", "anchor λ=1 on m", "relational λ=0.1 on m", "relational λ=1 on m"]
    with pytest.raises(ValueError):
        RegulariserSetting("dropout", 0.1)  # type: ignore[arg-type]


def test_bad_inputs_raise_sweep_errors(tiny_lm, tmp_cache):
    with pytest.raises(RegulariserError, match="groups"):
        run_regularisers(tiny_lm, TEXTS, GROUPS[:2], [RegulariserSetting()], _config(), tmp_cache)
    with pytest.raises(RegulariserError, match="repeats"):
        run_regularisers(tiny_lm, [TEXTS[0], TEXTS[0]], ["a", "b"], [RegulariserSetting()], _config(), tmp_cache)


def test_prefit_default_sweep_writes_a_compact_shipped_sweep(tiny_lm, tmp_path):
    import pandas as pd

    shipped = ProtoCache(tmp_path / "shipped", shipped="")
    frame = pd.DataFrame({"text": TEXTS, "group": GROUPS, "kind": ["original", "semantic"] * 2})
    settings = [RegulariserSetting(), RegulariserSetting("relational", 0.1)]
    first = prefit_default_sweep(shipped, quiet=True, lm=tiny_lm, frame=frame, settings=settings,
                                 base_config=_config(snapshot_every=1))
    assert first.complete
    for key in first.results[1].keys:
        entry = shipped.get(key)
        assert entry.snapshots == [] and len(entry.history["step"]) <= 40
    manifest = load_default_sweep_manifest(shipped)
    assert manifest.model == tiny_lm.identity and manifest.texts == TEXTS
    assert set(manifest.wall_time_s) == {"none", "relational λ=0.1"}
    assert all(w is not None and w > 0 for w in manifest.wall_time_s.values())

    # A fresh install: an empty user cache that falls back on the shipped one finds the sweep, fitting nothing.
    user = ProtoCache(tmp_path / "user", shipped=tmp_path / "shipped")
    found = load_default_sweep(tiny_lm, user)
    assert found is not None and found[1].complete
    assert summarize_regularisers(found[1])["accuracy"].tolist() == summarize_regularisers(first)["accuracy"].tolist()
    # Idempotent: a second pre-fit reuses everything and keeps the measured wall times.
    again = prefit_default_sweep(shipped, quiet=True, lm=tiny_lm, frame=frame, settings=settings,
                                 base_config=_config(snapshot_every=1))
    assert all(r.cached for r in again.results)
    assert load_default_sweep_manifest(shipped).wall_time_s == manifest.wall_time_s
    assert math.isclose(load_default_sweep_manifest(shipped).total_wall_time_s, manifest.total_wall_time_s)
