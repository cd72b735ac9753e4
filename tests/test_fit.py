"""core.engine.fit on the tiny random model: layouts, batching, per-text stopping, shared m, cancel, bad input."""

import json
import math
import threading

import pytest
import torch

from core.engine.fit import FitConfig, FitError, config_from_dict, fit_texts, preset, text_seed
from core.engine.models import TextError
from core.engine.reconstruct import (build_inputs, first_scored_position, predict_tokens, reconstruct, scored_logits,
                              token_metrics)

SHORT = "Hello world"
OTHER = "Hi there, cat."


def test_paper_preset_is_the_published_recipe():
    c = preset("first-paper")
    assert (c.lr, c.betas, c.weight_decay, c.max_steps, c.threshold, c.init, c.layout) == (
        0.01, (0.9, 0.9), 0.01, 5000, 0.99, "normal", "e+m*N")
    assert c == FitConfig()
    with pytest.raises(FitError):
        preset("nope")


@pytest.mark.parametrize("layout,seq_extra", [("e+m*N", 1), ("e+m*(N-1)", 0)])
def test_layout_shapes_and_alignment(layout, seq_extra):
    e = torch.full((2, 4), 1.0)
    m = torch.full((2, 4), 2.0)
    inputs, mask = build_inputs(e, m, [3, 5], layout)
    assert inputs.shape == (2, 5 + seq_extra, 4)
    assert torch.all(inputs[:, 0] == 1.0) and torch.all(inputs[:, 1:] == 2.0)
    assert mask[0].tolist() == [1] * (3 + seq_extra) + [0] * 2
    assert mask[1].sum() == 5 + seq_extra
    assert first_scored_position(layout) == seq_extra


@pytest.mark.parametrize("layout", ["e+m*N", "e+m*(N-1)"])
def test_fit_reaches_full_accuracy_and_reconstructs(tiny_lm, layout):
    [r] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=600, layout=layout))
    assert r.converged and r.status == "converged" and r.accuracy >= 0.99
    assert r.e.dtype == torch.float32 and r.e.shape == (tiny_lm.hidden_size,)
    rec = reconstruct(tiny_lm, r.e, r.m, r.token_ids, layout)
    assert rec.metrics.accuracy == r.accuracy
    assert rec.text == SHORT
    assert r.history["accuracy"][-1] == r.accuracy
    assert r.snapshots[-1]["tokens"] == r.token_ids


def test_batch_matches_single_and_stops_each_text(tiny_lm):
    cfg = preset("first-paper", max_steps=600)
    single = fit_texts(tiny_lm, [SHORT], cfg)[0]
    batch = fit_texts(tiny_lm, [OTHER, SHORT], cfg)
    # Same init and an independent gradient per text: the batch follows the single run.
    assert batch[1].steps == single.steps
    assert torch.allclose(batch[1].e, single.e, atol=1e-4)
    # Each text stopped on its own: the two step counts differ and each history ends at its own stop.
    assert batch[0].steps != batch[1].steps
    for r in batch:
        assert r.history["step"][-1] == r.steps


def test_converged_text_is_frozen_while_others_continue(tiny_lm):
    seen = {}

    def callback(p):
        seen[p.step] = (list(p.done), list(p.best_accuracy))

    results = fit_texts(tiny_lm, [SHORT, OTHER], preset("first-paper", max_steps=600), callback=callback, callback_every=1)
    first = min(results, key=lambda r: r.steps)
    idx = results.index(first)
    later = [s for s, (done, _) in seen.items() if s > first.steps]
    assert later, "the other text should still be fitting"
    assert all(seen[s][0][idx] for s in later)
    rec = reconstruct(tiny_lm, first.e, first.m, first.token_ids, "e+m*N")
    assert rec.metrics.accuracy >= 0.99


def test_shared_m_returns_one_m(tiny_lm):
    results = fit_texts(tiny_lm, [SHORT, "Hello cat"], preset("first-paper", max_steps=400, shared_m=True))
    assert torch.equal(results[0].m, results[1].m)
    assert not torch.equal(results[0].e, results[1].e)


def test_init_is_seeded_and_scaled(tiny_lm):
    a = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=1))[0]
    b = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=1))[0]
    c = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=1, seed=1))[0]
    assert torch.equal(a.e, b.e) and not torch.equal(a.e, c.e)
    emb = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=1, init="embedding"))[0]
    ratio = emb.e.std() / a.e.std()
    assert math.isclose(float(ratio), tiny_lm.embedding_std, rel_tol=0.3)
    assert text_seed(0, [1, 2]) != text_seed(0, [2, 1])


def test_cancel_returns_best_so_far_not_converged(tiny_lm):
    cancel = threading.Event()

    def callback(p):
        if p.step >= 20:
            cancel.set()

    [r] = fit_texts(tiny_lm, [OTHER], preset("first-paper", max_steps=5000), callback=callback, callback_every=1, cancel=cancel)
    assert r.status == "cancelled" and not r.converged
    assert 20 <= r.steps < 30
    assert r.accuracy == max(r.history["accuracy"])
    rec = reconstruct(tiny_lm, r.e, r.m, r.token_ids, "e+m*N")
    assert rec.metrics.accuracy == pytest.approx(r.accuracy)


def test_nan_loss_stops_with_a_message_and_keeps_best(tiny_lm, monkeypatch):
    import core.engine.fit as fit_mod

    real = fit_mod.scored_logits
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        logits = real(*args, **kwargs)
        return logits * float("nan") if calls["n"] > 5 else logits

    monkeypatch.setattr(fit_mod, "scored_logits", poisoned)
    [r] = fit_texts(tiny_lm, [OTHER], preset("first-paper", max_steps=50))
    assert r.status == "diverged" and "nan" in r.message.lower()
    assert torch.isfinite(r.e).all() and math.isfinite(r.loss)


@pytest.mark.parametrize("text,match", [("", "empty"), ("   \n ", "empty"), ("x" * 300, "tokens")])
def test_bad_text_is_a_clear_error(tiny_lm, text, match):
    with pytest.raises(TextError, match=match):
        fit_texts(tiny_lm, [text], preset("first-paper", max_steps=5))


def test_bad_settings_are_clear_errors():
    with pytest.raises(FitError):
        FitConfig(init="zeros")
    with pytest.raises(ValueError, match="layout"):
        FitConfig(layout="m+e")
    with pytest.raises(FitError):
        FitConfig(max_steps=0)


def test_token_metrics():
    m = token_metrics([1, 2, 9, 4], [1, 2, 3, 4])
    assert (m.accuracy, m.c_tokens, m.correct_prefix, m.correct_prefix_rel) == (0.75, 3, 2, 0.5)
    assert token_metrics([1, 2], [1, 2]).correct_prefix == 2


def test_predict_tokens_batched_equals_single(tiny_lm):
    [r] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=30))
    e = torch.stack([r.e, r.e * 0.5])
    m = torch.stack([r.m, r.m])
    batched = predict_tokens(tiny_lm, e, m, len(r.token_ids), "e+m*N")
    assert batched.shape == (2, len(r.token_ids))
    assert batched[1].tolist() == predict_tokens(tiny_lm, r.e * 0.5, r.m, len(r.token_ids), "e+m*N")[0].tolist()


def test_restarts_return_the_first_converged_restart(tiny_lm):
    single = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=600))[0]
    seen = []
    multi = fit_texts(tiny_lm, [SHORT, OTHER], preset("first-paper", max_steps=600, restarts=3),
                      callback=lambda p: seen.append(p), callback_every=1)
    assert len(multi) == 2 and multi[0].text == SHORT
    assert multi[0].converged and multi[0].steps <= single.steps  # restart 0 is the single run's init
    rec = reconstruct(tiny_lm, multi[0].e, multi[0].m, multi[0].token_ids, "e+m*N")
    assert rec.metrics.accuracy >= 0.99
    assert all(len(p.accuracy) == 2 for p in seen)  # progress is reported per text, not per restart
    with pytest.raises(FitError, match="Restarts"):
        preset("first-paper", restarts=2, shared_m=True)


def test_each_text_is_handed_over_when_it_finishes(tiny_lm):
    order = []
    results = fit_texts(tiny_lm, [OTHER, SHORT], preset("first-paper", max_steps=600), batch_size=1,
                        on_done=lambda i, r: order.append((i, r.steps, r.status)))
    # batch of one: strictly one after the other, the shorter text first (continuous batching admits the waiting
    # texts shortest first)
    assert [i for i, _, _ in order] == [1, 0]
    assert [(r.steps, r.status) for r in results] == [(s, st) for _, s, st in order[::-1]]


def test_a_job_that_fails_reports_failed_with_its_message(tiny_lm, tmp_cache, monkeypatch):
    import core.engine.jobs
    from core.engine.jobs import FitJob

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(core.engine.jobs, "fit_and_cache", broken)
    snap = FitJob(tiny_lm, ["Hello"], preset("first-paper", max_steps=2), tmp_cache).start().wait(30)
    assert snap.state == "failed" and snap.error == "disk full" and snap.finished
    assert snap.elapsed >= 0


def test_token_init_draws_like_the_embedding_matrix(tiny_lm):
    from core.engine.fit import _init_distribution, _init_vector

    weight = tiny_lm.model.get_input_embeddings().weight.detach().float()
    mean, std = _init_distribution(tiny_lm, preset("first-paper", init="token", init_scale=0.5))
    assert torch.allclose(mean, weight.mean(0)) and torch.allclose(std, weight.std(0) * 0.5)
    draws = torch.stack([_init_vector(tiny_lm.hidden_size, (mean, std), s) for s in range(400)])
    assert torch.allclose(draws.mean(0), mean, atol=0.2 * float(std.max()))
    assert torch.equal(_init_vector(tiny_lm.hidden_size, (mean, std), 3), _init_vector(tiny_lm.hidden_size, (mean, std), 3))


@pytest.mark.parametrize("rule, share", [("redraw_after", "REDRAW_LOSS_SHARE"),
                                         ("redraw_plateau", "REDRAW_PLATEAU_SHARE")])
def test_a_stuck_draw_starts_over_from_a_new_init(tiny_lm, monkeypatch, rule, share):
    import core.engine.fit as fit_mod

    config = preset("first-paper", lr=1e-4, max_steps=23, **{rule: 5})
    monkeypatch.setattr(fit_mod, share, 1e9)  # no loss counts as stuck
    [plain] = fit_texts(tiny_lm, [SHORT], config)
    assert plain.redraws == 0
    monkeypatch.setattr(fit_mod, share, 0.0)  # every loss counts as stuck
    [r] = fit_texts(tiny_lm, [SHORT], config)
    assert r.redraws == 3 and r.steps == 23  # redrawn after steps 5, 11 and 17; the step count goes on
    loss, before = r.history["loss"], plain.history["loss"]
    assert loss[:6] == before[:6]  # the first draw is the plain fit's
    assert all(loss[k] != before[k] for k in (6, 12, 18))  # a new init is measured there
    [again] = fit_texts(tiny_lm, [SHORT], config)
    assert torch.equal(again.e, r.e) and again.history["loss"] == loss  # redraws are seeded


def _record_forwards(monkeypatch, what) -> list:
    """what(lm, lengths) of every forward pass core.engine.fit makes from now on, in order."""
    import core.engine.fit as fit_mod

    calls = []

    def recording(lm, e, m, lengths, layout, with_e=False):
        calls.append(what(lm, list(lengths)))
        return scored_logits(lm, e, m, lengths, layout, with_e)

    monkeypatch.setattr(fit_mod, "scored_logits", recording)
    return calls


def _forward_rows(monkeypatch) -> list[list[int]]:
    """The text lengths of every forward pass core.engine.fit makes from now on, in row order."""
    return _record_forwards(monkeypatch, lambda lm, lengths: lengths)


def test_restarts_wait_for_the_slots_converged_texts_free(tiny_lm, monkeypatch):
    rows = _forward_rows(monkeypatch)
    plain = fit_texts(tiny_lm, [SHORT, OTHER], preset("first-paper", max_steps=600), batch_size=2)
    assert plain[0].steps != plain[1].steps and len(rows[-1]) == 1  # without restarts the batch thins out
    both = sorted(rows[0])
    assert both == sorted(len(r.token_ids) for r in plain) and both[0] != both[1]
    rows.clear()
    results = fit_texts(tiny_lm, [SHORT, OTHER], preset("first-paper", max_steps=600, restarts=3), batch_size=2)
    assert all(r.converged for r in results)
    # the first draws of both texts take the slots (not two draws of one text); then a restart of the slower
    # text takes the slot the faster one freed: always 2 rows
    assert sorted(rows[0]) == both and all(len(r) == 2 for r in rows)
    first = min(plain, key=lambda r: r.steps)
    assert results[plain.index(first)].steps == first.steps  # the faster text ran its first draw as before


def test_a_converged_row_leaves_the_batch(tiny_lm, monkeypatch):
    rows = _forward_rows(monkeypatch)
    results = fit_texts(tiny_lm, [SHORT, OTHER], preset("first-paper", max_steps=300))
    first, other = sorted(results, key=lambda r: r.steps)
    assert first.converged and other.steps > first.steps
    n = first.steps + 1  # the forwards that measured steps 0..first.steps
    both = [len(r.token_ids) for r in results]
    assert rows[:n] == [both] * n  # side by side until the first one converges at step first.steps
    # from the next step on, only the other text's row is in the forward pass
    assert rows[n:] == [[len(other.token_ids)]] * (other.steps + 1 - n)


def test_config_round_trips_through_its_dict():
    for config in (preset("fast", max_steps=600), preset("first-paper", shared_m=True)):
        assert config_from_dict(json.loads(json.dumps(config.as_dict()))) == config


def test_a_waiting_text_takes_the_row_a_converged_one_frees_at_the_next_step(tiny_lm, monkeypatch):
    """Continuous batching: 3 texts in 2 rows; the two shortest start (waiting texts take slots shortest first,
    whatever the input order), the longest starts the step after the first of them converges, so the batch stays
    full until no text is waiting, and every text still takes the steps it takes alone."""
    rows = _forward_rows(monkeypatch)
    texts = [SHORT, "Hi cat", "Hello"]
    lengths = [len(tiny_lm.encode(t)) for t in texts]
    assert len(set(lengths)) == 3 and lengths[0] == max(lengths)  # the longest comes first in the input
    together = fit_texts(tiny_lm, texts, preset("first-paper", max_steps=300), batch_size=2)
    assert all(r.converged for r in together)
    first_done = min(together[1].steps, together[2].steps)  # the first of the two started rows to converge
    n = first_done + 1
    assert all(sorted(r) == sorted(lengths[1:]) for r in rows[:n])  # the two shorter texts side by side
    assert lengths[0] in rows[n] and len(rows[n]) == 2  # the longest takes the freed row at once
    longest_rows = [r for r in rows if lengths[0] in r]
    assert len(longest_rows) == together[0].steps + 1  # its forwards: one per step it took, none skipped
    alone = fit_texts(tiny_lm, [texts[0]], preset("first-paper", max_steps=300))
    assert together[0].steps == alone[0].steps and together[0].converged == alone[0].converged


def test_fixed_batches_keep_finished_rows_in_the_pass_until_the_batch_is_done(tiny_lm, monkeypatch):
    """The baseline of bench/corpus.py: with batching="fixed" the third text waits for both rows of the first
    batch to finish (the finished row stays in every forward pass meanwhile), and each text's fit is unchanged."""
    rows = _forward_rows(monkeypatch)
    texts = [SHORT, "Hello", "Hi cat"]
    fixed = fit_texts(tiny_lm, texts, preset("first-paper", max_steps=300), batch_size=2, batching="fixed")
    assert all(r.converged for r in fixed)
    lengths = [len(r.token_ids) for r in fixed]
    slowest = max(fixed[0].steps, fixed[1].steps)
    assert all(sorted(r) == sorted(lengths[:2]) for r in rows[:slowest + 1])  # both rows until both are done
    assert rows[slowest + 1:] == [[lengths[2]]] * (fixed[2].steps + 1)  # then the third alone
    continuous = fit_texts(tiny_lm, texts, preset("first-paper", max_steps=300), batch_size=2)
    assert [r.steps for r in fixed] == [r.steps for r in continuous]
    with pytest.raises(FitError, match="batching"):
        fit_texts(tiny_lm, texts, preset("first-paper"), batching="static")


# ---- compute="bfloat16": steps with bf16 weights, results in the model's own pass --------------------------------

@pytest.fixture
def fast_bf16(monkeypatch):
    """The bf16 tests run wherever the suite runs: on a CPU without a bf16 unit fits refuse compute=bfloat16
    (test_bf16_compute_is_refused_where_bf16_is_slow), so these take the probe's answer as 'fast'."""
    import core.engine.cost as cost_mod

    monkeypatch.setattr(cost_mod, "bf16_slowdown", lambda device="cpu": None)


def test_bf16_compute_is_refused_where_bf16_is_slow(tiny_lm, monkeypatch):
    import core.engine.cost as cost_mod

    monkeypatch.setattr(cost_mod, "bf16_rates", lambda device="cpu": (0.28, 83.0))  # an AVX2-only EPYC, measured
    assert "0.3 GFLOP/s against 83" in cost_mod.bf16_slowdown("cpu")
    with pytest.raises(FitError, match="bfloat16 are refused: .*0.3 GFLOP/s"):
        fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=2, compute="bfloat16"))
    monkeypatch.setattr(cost_mod, "bf16_rates", lambda device="cpu": (2008.0, 310.0))  # with AMX
    assert cost_mod.bf16_slowdown("cpu") is None
    [result] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=2, compute="bfloat16"))
    assert result.steps == 2
    fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=1))  # float32 steps never ask


def _passes_by_dtype(monkeypatch) -> list[tuple[torch.dtype, list[int]]]:
    """The weights' dtype and the text lengths of every forward pass core.engine.fit makes from now on."""
    return _record_forwards(monkeypatch, lambda lm, lengths: (lm.dtype, lengths))


def test_bf16_compute_steps_in_bf16_and_its_result_holds_in_float32(tiny_lm, monkeypatch, fast_bf16):
    calls = _passes_by_dtype(monkeypatch)
    config = preset("first-paper", max_steps=600, compute="bfloat16")
    [result] = fit_texts(tiny_lm, [SHORT], config)
    assert result.converged and result.status == "converged"
    passes = [dtype for dtype, _ in calls]
    # the steps ran with bf16 weights (this text's first bf16 solution falls short in float32 and is polished
    # there for a few steps: test_bf16_vectors_that_fall_short...), and the result was measured in float32
    assert passes.count(torch.bfloat16) > result.steps * 0.9 and torch.float32 in passes
    again = reconstruct(tiny_lm, result.e, result.m, result.token_ids, config.layout)
    assert again.metrics.accuracy >= config.threshold and again.metrics.accuracy == pytest.approx(result.accuracy)
    assert calls[0][0] == torch.bfloat16 and tiny_lm.dtype == torch.float32


def test_bf16_vectors_that_fall_short_in_float32_are_polished_there(tiny_lm, monkeypatch, fast_bf16):
    """The first float32 check says the vectors fall short: the row goes on in float32 passes until they hold."""
    import core.engine.fit as fit_mod

    real = fit_mod._FitRun.measure
    checks = []

    def first_check_fails(self, row, e, m):
        acc, loss = real(self, row, e, m)
        checks.append(acc)
        return (0.5, loss) if len(checks) == 1 else (acc, loss)

    monkeypatch.setattr(fit_mod._FitRun, "measure", first_check_fails)
    calls = _passes_by_dtype(monkeypatch)
    [result] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=600, compute="bfloat16"))
    assert result.converged and len(checks) == 1  # polished rows are measured in float32 every step
    switch = next(i for i, (dtype, _) in enumerate(calls) if dtype == torch.float32 and i > 0
                  and calls[i - 1][0] == torch.bfloat16)
    assert all(dtype == torch.float32 for dtype, _ in calls[switch:])  # float32 passes from the failed check on
    assert len(calls) - switch >= 2  # at least one polishing step after the check
    assert reconstruct(tiny_lm, result.e, result.m, result.token_ids, "e+m*N").metrics.accuracy >= 0.99


def test_bf16_compute_is_refused_with_coupled_texts_and_unknown_values():
    with pytest.raises(FitError, match="compute"):
        preset("first-paper", compute="float16")
    with pytest.raises(FitError, match="alone"):
        preset("first-paper", compute="bfloat16", shared_m=True)
    assert "compute" not in preset("fast").key_dict()  # unset: every existing key holds
    assert preset("fast", compute="bfloat16").key_dict()["compute"] == "bfloat16"


def test_a_fit_records_its_vectors_every_k_steps_when_asked(tiny_lm):
    [plain] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=25))
    [traced] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=25), record_every=10)
    assert plain.trajectory == []
    assert [step for step, _, _ in traced.trajectory] == [0, 10, 20]
    assert torch.equal(traced.e, plain.e)  # recording changes nothing
    _, e0, m0 = traced.trajectory[0]
    assert e0.dtype == torch.float32 and not torch.equal(e0, traced.trajectory[1][1])
