"""The seed paper's own loop (preset "seed-paper"), its metric count with e's BOS prediction, and the fit's margin
(extra_steps): unit tests on the tiny random model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.engine.fit import (PRESET_ALIASES, SEED_BATCH, FitConfig, FitError, batches, entry_keys, fit_and_cache,
                             fit_texts, preset)
from core.engine.models import TINY_MODEL, load_model
from core.engine.reconstruct import TokenMetrics, bos_target, counted, reconstruct, token_metrics

SHORT, OTHER = "Hi", "Hello world"


def test_the_seed_paper_preset_is_the_authors_loop():
    c = preset("seed-paper")
    assert (c.init, c.init_scale, c.lr, c.betas, c.weight_decay) == ("normal", 1.0, 0.01, (0.9, 0.9), 0.01)
    assert (c.max_steps, c.threshold, c.stop, c.score_bos, c.vectors) == (2000, 0.9, "batch", True, "model")
    assert (c.schedule, c.redraw_after, c.redraw_plateau, c.start, c.restarts) == ("constant", 0, 0, "", 1)


def test_the_first_paper_preset_keeps_the_keys_it_had_as_paper():
    old = FitConfig(preset="paper")
    assert old.preset == "first-paper" == preset("paper").preset and PRESET_ALIASES == {"paper": "first-paper"}
    # the fields added for the seed paper enter a key only when set: the first paper's key is what it was
    assert set(preset("first-paper").key_dict()) == {
        "layout", "lr", "betas", "weight_decay", "max_steps", "threshold", "init", "init_scale", "schedule", "seed",
        "shared_m", "restarts", "redraw_after", "regularizer"}
    assert {"stop", "score_bos", "vectors"} <= set(preset("seed-paper").key_dict())


def test_a_batch_waits_for_its_slowest_text_and_stops_on_best_so_far_accuracy(tiny_lm):
    config = preset("seed-paper", max_steps=600)
    [alone] = fit_texts(tiny_lm, [SHORT], config)
    short, other = fit_texts(tiny_lm, [SHORT, OTHER], config)
    assert alone.converged and short.converged and other.converged
    assert short.steps == other.steps > alone.steps  # the short text kept going while the long one caught up
    # the batch stops at the first step at which every text's best-so-far accuracy reached the threshold
    best = [torch.tensor(r.history["accuracy"]).cummax(0).values for r in (short, other)]
    reached = [int((b >= config.threshold).nonzero()[0, 0]) for b in best]
    assert short.history["step"][max(reached)] == short.steps
    # a text's kept vectors are its best by accuracy, not its last
    assert short.accuracy == max(short.history["accuracy"])


def test_a_fit_that_stops_on_its_own_leaves_the_batch_early(tiny_lm):
    short, other = fit_texts(tiny_lm, [SHORT, OTHER], preset("first-paper", max_steps=600, threshold=0.9))
    assert short.steps < other.steps


def test_seed_paper_batches_of_eight_are_each_their_own_group(tiny_lm, tmp_cache):
    texts = [f"t{i}" for i in range(SEED_BATCH + 2)]
    config = preset("seed-paper", max_steps=2)
    assert [list(b) for b in batches(config, 10)] == [list(range(8)), [8, 9]]
    outcomes = fit_and_cache(tiny_lm, texts, config, tmp_cache)
    groups = [o.entry.group for o in outcomes]
    assert len(set(groups[:8])) == 1 and len(set(groups[8:])) == 1 and groups[0] != groups[8]
    targets = [tiny_lm.validate_text(t, config.layout) for t in texts]
    assert [o.entry.key for o in outcomes] == entry_keys(tiny_lm, targets, config)[0]
    # the second batch's entries are found again by the same texts
    again = fit_and_cache(tiny_lm, texts, config, tmp_cache)
    assert all(o.cached for o in again)


def test_bos_scoring_scores_e_against_the_tokenizers_bos(bos_lm, tiny_lm):
    assert bos_target(tiny_lm, "e+m*N") is None  # the byte tokenizer has no BOS
    assert bos_target(bos_lm, "e+m*N") == 3 and bos_target(bos_lm, "e+m*(N-1)") is None
    config = preset("first-paper", max_steps=800, threshold=1.0, score_bos=True)
    [scored] = fit_texts(bos_lm, [OTHER], config)
    rebuilt = reconstruct(bos_lm, scored.e, scored.m, scored.token_ids, config.layout)
    assert scored.converged and rebuilt.bos_correct is True and rebuilt.metrics.accuracy == 1.0
    # the fit's history counts N + 1 positions: accuracies are multiples of 1/12 for an 11-token text
    n = len(scored.token_ids)
    assert all(abs(a * (n + 1) - round(a * (n + 1))) < 1e-6 for a in scored.history["accuracy"])
    # unscored, e's own output is not BOS
    [plain] = fit_texts(bos_lm, [OTHER], preset("first-paper", max_steps=800, threshold=1.0))
    assert reconstruct(bos_lm, plain.e, plain.m, plain.token_ids, config.layout).bos_correct is False
    # without a BOS token, score_bos changes nothing
    [a] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=5, score_bos=True))
    [b] = fit_texts(tiny_lm, [SHORT], preset("first-paper", max_steps=5))
    assert torch.equal(a.e, b.e) and a.history == b.history


def test_a_bos_scored_entry_stores_the_text_count_and_whether_e_hit_bos(bos_lm, tmp_cache):
    [outcome] = fit_and_cache(bos_lm, [OTHER], preset("first-paper", max_steps=800, threshold=1.0, score_bos=True),
                              tmp_cache)
    metrics = outcome.entry.metrics
    assert metrics["bos_correct"] is True and metrics["accuracy"] == 1.0 and metrics["fit_accuracy"] == 1.0


def test_both_counts_on_a_known_case():
    m = token_metrics([5, 6, 0, 8], [5, 6, 7, 8])  # 3 of 4 right, prefix 2
    assert counted(m, None, "bos") == m == counted(m, True, "text")
    hit = counted(m, True, "bos")
    assert (hit.accuracy, hit.c_tokens, hit.correct_prefix, hit.correct_prefix_rel, hit.n_tokens) == (0.8, 4, 3, 0.6, 5)
    miss = counted(m, False, "bos")
    assert (miss.accuracy, miss.c_tokens, miss.correct_prefix, miss.n_tokens) == (0.6, 3, 0, 5)
    with pytest.raises(ValueError):
        counted(m, True, "tokens")
    assert isinstance(hit, TokenMetrics)


def test_vectors_in_the_models_dtype_are_bf16_on_a_bf16_model():
    lm = load_model(TINY_MODEL, dtype="bfloat16")
    [held] = fit_texts(lm, [SHORT], preset("first-paper", max_steps=3, vectors="model"))
    [plain] = fit_texts(lm, [SHORT], preset("first-paper", max_steps=3))
    assert held.e.dtype == torch.float32  # results cross modules as float32
    assert torch.equal(held.e, held.e.bfloat16().float()) and torch.equal(held.m, held.m.bfloat16().float())
    assert not torch.equal(plain.e, plain.e.bfloat16().float())


def test_extra_steps_keep_optimising_after_the_threshold(tiny_lm):
    [plain] = fit_texts(tiny_lm, [OTHER], preset("first-paper", max_steps=800, threshold=0.9))
    [margin] = fit_texts(tiny_lm, [OTHER], preset("first-paper", max_steps=800, threshold=0.9, extra_steps=40))
    assert plain.converged and margin.converged
    assert margin.steps == plain.steps + 40 and margin.loss < plain.loss
    assert "40 more steps" in margin.message


@pytest.mark.parametrize("bad", [dict(stop="batches"), dict(vectors="bf16"), dict(score_bos=True, layout="e+m*(N-1)"),
                                 dict(extra_steps=-1), dict(extra_steps=5, stop="batch"),
                                 dict(stop="batch", shared_m=True), dict(stop="batch", start="mean")])
def test_bad_seed_paper_settings_are_refused(bad):
    with pytest.raises(FitError):
        FitConfig(**bad)


def test_a_text_whose_accuracy_dips_after_reaching_the_threshold_still_counts_as_reached(tiny_lm):
    """The batch rule reads best-so-far accuracy: A right then wrong, B wrong then right stops the batch."""
    from core.engine.fit import _FitRun, _init_distribution, _init_row, _new_optimizer

    config = preset("seed-paper")
    distribution = _init_distribution(tiny_lm, config)
    rows = [_init_row(tiny_lm, i, t, tiny_lm.validate_text(t, config.layout), i, None, distribution)
            for i, t in enumerate([SHORT, OTHER])]
    run = _FitRun(tiny_lm, config, rows, _new_optimizer(config, rows, None), distribution=distribution, slots=2,
                  teacher_embeddings=None, on_done=None, callback=None, callback_every=1, batching="fixed")
    vocab = tiny_lm.model.config.vocab_size

    def logits(row, right):
        target = row.device_target if right else (row.device_target + 1) % vocab
        return torch.nn.functional.one_hot(target, vocab).float()

    active = run.fill_slots()
    losses = [torch.tensor(1.0), torch.tensor(1.0)]
    run.decide(active, [logits(rows[0], True), logits(rows[1], False)], losses)
    assert not any(row.done for row in rows)
    run.decide(active, [logits(rows[0], False), logits(rows[1], True)], losses)
    assert all(row.done and row.status == "converged" for row in rows)
    assert rows[0].best_acc == 1.0  # kept from the first step


# ---- the seed paper's count of what entries store (every page that shows an entry's accuracy) -------------------

def test_an_entrys_stored_accuracy_in_both_counts():
    from core.engine.reconstruct import count_note, stored_count

    hit, miss = {"accuracy": 0.75, "bos_correct": True}, {"accuracy": 0.75, "bos_correct": False}
    assert stored_count(hit, 4, "text") == stored_count({"accuracy": 0.75}, 4, "text")
    assert (stored_count(hit, 4, "text").accuracy, stored_count(hit, 4, "text").n_positions) == (0.75, 4)
    assert stored_count(hit, 4, "bos") == (counted := stored_count(hit, 4, "bos"))
    assert (counted.accuracy, counted.c_tokens, counted.n_positions, counted.count) == (0.8, 4, 5, "bos")
    missed = stored_count(miss, 4, "bos")
    assert (missed.accuracy, missed.c_tokens, missed.n_positions) == (0.6, 3, 5)
    # not recorded: the N positions, and it says so
    unknown = stored_count({"accuracy": 0.75}, 4, "bos")
    assert (unknown.accuracy, unknown.n_positions, unknown.count) == (0.75, 4, "text")
    with pytest.raises(ValueError):
        stored_count(hit, 4, "tokens")
    assert count_note("text", 3) == "" and "N + 1" in count_note("bos") and "recorded" not in count_note("bos")
    assert "2 entries without e's BOS prediction recorded count N" in count_note("bos", 2)


def test_complete_metrics_records_what_an_older_entry_lacks_and_leaves_the_shipped_cache_alone(bos_lm, tmp_path):
    from core.engine.cache import ProtoCache
    from core.engine.fit import complete_metrics, recorded_metrics

    shipped = ProtoCache(tmp_path / "shipped", shipped="")
    [old_shipped] = fit_and_cache(bos_lm, [SHORT], preset("first-paper", max_steps=300), shipped)
    cache = ProtoCache(tmp_path / "user", shipped=tmp_path / "shipped")
    [outcome] = fit_and_cache(bos_lm, [OTHER], preset("first-paper", max_steps=600), cache)
    entry = outcome.entry
    truth = {k: entry.metrics[k] for k in ("bos_correct", "h_lm")}
    for c, e in ((cache, entry), (shipped, old_shipped.entry)):  # as an older version of the lab wrote them
        c.put(dataclasses.replace(e, metrics={k: v for k, v in e.metrics.items() if k not in ("bos_correct", "h_lm")}))
    assert complete_metrics(bos_lm, cache) == 1
    again = cache.get(entry.key, bos_lm.hidden_size)
    assert again.metrics["bos_correct"] == truth["bos_correct"]
    assert again.metrics["h_lm"] == pytest.approx(truth["h_lm"])
    assert again.key == entry.key and recorded_metrics(bos_lm, again) == {}
    assert complete_metrics(bos_lm, cache) == 0
    assert "bos_correct" not in shipped.get(old_shipped.entry.key, bos_lm.hidden_size).metrics
