"""core.engine.jobs: the background thread of a job (start, poll, cancel, fail) and a fit through the cache in it.

A FitJob whose fit_and_cache raises is in tests/test_fit.py; a cancelled entry being refitted is in
tests/test_cache.py.
"""

from __future__ import annotations

import threading
import time

import pytest

import core.engine.jobs as jobs
from core.engine.fit import FitProgress, preset
from core.engine.jobs import BackgroundJob, FitJob, JobSnapshot, TextProgress

WAIT = 60  # seconds; a generous bound for a thread on a loaded 2-core machine


class GateJob(BackgroundJob):
    """Work that waits for a gate (or a cancel), then ends as told: the smallest BackgroundJob."""

    thread_name = "gate-job"
    made: list["GateJob"] = []

    def __init__(self, fail: BaseException | None = None):
        GateJob.made.append(self)
        self._state = "running"
        self._error: str | None = None
        self.fail = fail
        self.entered = threading.Event()
        self.gate = threading.Event()
        super().__init__()

    def _work(self) -> None:
        self.entered.set()
        while not (self.gate.is_set() or self.cancel_event.is_set()):
            time.sleep(0.005)
        if self.fail is not None:
            raise self.fail
        with self._lock:
            self._state = "cancelled" if self.cancel_event.is_set() else "done"

    def snapshot(self) -> dict:
        with self._lock:
            return {"state": self._state, "error": self._error, "traceback": self._traceback,
                    "elapsed": self._elapsed()}


@pytest.fixture(autouse=True)
def _release_gates():
    """A test that fails half-way leaves no GateJob waiting for its gate."""
    yield
    for job in GateJob.made:
        job.gate.set()
    GateJob.made.clear()


def _started(job: GateJob) -> GateJob:
    job.start()
    assert job.entered.wait(WAIT), "the job's work never began"
    return job


def test_a_job_needs_its_work_and_its_snapshot():
    class NoWork(BackgroundJob):
        def snapshot(self):
            return None

    with pytest.raises(TypeError):
        NoWork()


def test_a_job_works_in_a_named_daemon_thread_and_its_time_stops_at_the_end():
    job = GateJob()
    assert job.start() is job
    assert job.entered.wait(WAIT)
    assert job._thread.name == "gate-job" and job._thread.daemon and job._thread.is_alive()
    running = job.snapshot()
    assert running["state"] == "running" and running["error"] is None
    time.sleep(0.02)
    assert job.snapshot()["elapsed"] > running["elapsed"]  # the clock runs while the work does
    job.gate.set()
    done = job.wait(WAIT)
    assert done["state"] == "done" and not job._thread.is_alive()
    time.sleep(0.02)
    assert job.snapshot()["elapsed"] == done["elapsed"]  # frozen at the end


def test_wait_with_a_timeout_returns_the_running_state_without_blocking():
    job = _started(GateJob())
    t0 = time.perf_counter()
    assert job.wait(0.05)["state"] == "running"
    assert time.perf_counter() - t0 < 5
    job.cancel()
    job.wait(WAIT)


def test_cancel_sets_the_event_the_work_checks():
    job = _started(GateJob())
    assert not job.cancel_event.is_set()
    job.cancel()
    assert job.cancel_event.is_set()
    assert job.wait(WAIT)["state"] == "cancelled"


def test_a_failing_work_is_marked_failed_with_a_one_line_message_and_its_traceback(capfd):
    job = _started(GateJob(fail=ValueError("the disk\n   is    full")))
    job.gate.set()
    snap = job.wait(WAIT)
    assert snap["state"] == "failed" and snap["error"] == "the disk is full"
    assert "ValueError" in snap["traceback"] and "_work" in snap["traceback"]
    assert "ValueError: the disk" in capfd.readouterr().err  # and printed: the thread never dies silently


def test_a_failure_without_a_message_is_named_by_its_type():
    job = _started(GateJob(fail=KeyError()))
    job.gate.set()
    snap = job.wait(WAIT)
    assert snap["state"] == "failed" and snap["error"] == "KeyError"


# ---- progress of a fit, merged into a snapshot (no thread, no model) ------------------------------------

def _progress(step: int, loss: float, accuracy: float, done: bool, n: int = 1) -> FitProgress:
    return FitProgress(step=step, max_steps=100, loss=[loss] * n, accuracy=[accuracy] * n,
                       best_accuracy=[accuracy] * n, predictions=[[1, 2, 3]] * n, done=[done] * n, elapsed=0.1)


def _unstarted(texts=("abc",)) -> FitJob:
    return FitJob(None, list(texts), preset("fast", max_steps=100), None)


def test_a_new_fit_job_shows_every_text_at_step_zero():
    snap = _unstarted(["ab", "abc"]).snapshot()
    assert isinstance(snap, JobSnapshot) and snap.state == "running" and not snap.finished
    assert snap.texts == ["ab", "abc"] and snap.max_steps == 100 and snap.step == 0
    assert snap.progress == [TextProgress(), TextProgress()] and snap.outcomes is None and snap.error is None


def test_progress_reaches_the_texts_of_its_rows_only():
    job = _unstarted(["a", "b", "c"])
    job._on_progress(_progress(5, 2.0, 0.5, False, n=2), [2, 0])  # rows are the texts' input indices
    snap = job.snapshot()
    assert [p.step for p in snap.progress] == [5, 0, 5] and snap.step == 5
    assert snap.progress[2].curve_step == [5] and snap.progress[2].predictions == [1, 2, 3]
    assert snap.progress[1] == TextProgress()


def test_progress_builds_a_curve_with_nan_losses_as_none_and_no_repeated_step():
    job = _unstarted()
    job._on_progress(_progress(5, 2.0, 0.25, False), [0])
    job._on_progress(_progress(5, 2.0, 0.25, False), [0])  # the same step reported twice: one point
    job._on_progress(_progress(10, float("nan"), 0.5, False), [0])
    [p] = job.snapshot().progress
    assert p.curve_step == [5, 10] and p.curve_accuracy == [0.25, 0.5]
    assert p.curve_loss == [2.0, None] and p.loss is None  # NaN would break JSON and the plots


def test_a_finished_text_keeps_its_result_against_a_stale_report():
    job = _unstarted()
    job._on_progress(_progress(10, 0.1, 1.0, True), [0])
    job._on_progress(_progress(10, 3.0, 0.0, True), [0])  # done already, no newer step: ignored
    [p] = job.snapshot().progress
    assert (p.step, p.accuracy, p.loss, p.done) == (10, 1.0, 0.1, True)
    job._on_progress(_progress(12, 0.2, 0.9, True), [0])  # a newer step (a later batch of the same text) counts
    assert job.snapshot().progress[0].step == 12


def test_a_long_curve_is_thinned_to_at_most_max_curve_points(monkeypatch):
    monkeypatch.setattr(jobs, "MAX_CURVE_POINTS", 8)
    job = _unstarted()
    for step in range(1, 41):
        job._on_progress(_progress(step, 1.0 / step, step / 40, False), [0])
    [p] = job.snapshot().progress
    assert 4 <= len(p.curve_step) <= 8 and len(p.curve_loss) == len(p.curve_accuracy) == len(p.curve_step)
    assert p.curve_step[0] == 1 and p.curve_step == sorted(p.curve_step)
    assert p.step == 40 and p.curve_step[-1] > 30  # the curve still reaches the present


def test_a_snapshot_is_a_copy_the_ui_may_change():
    job = _unstarted()
    job._on_progress(_progress(5, 2.0, 0.25, False), [0])
    snap = job.snapshot()
    snap.progress[0].curve_step.append(99)
    snap.progress[0].predictions.append(99)
    snap.progress[0].step = 99
    snap.texts.append("x")
    again = job.snapshot()
    assert again.progress[0].curve_step == [5] and again.progress[0].predictions == [1, 2, 3]
    assert again.progress[0].step == 5 and again.texts == ["abc"]


# ---- a fit in the thread, on the tiny model ----------------------------------------------------------

FAST = preset("fast", max_steps=60, restarts=1)
TEXTS = ["ab", "abc"]


@pytest.fixture(scope="module")
def finished_job(tiny_lm, tmp_path_factory):
    from core.engine.cache import ProtoCache

    cache = ProtoCache(tmp_path_factory.mktemp("jobs-cache"), shipped="")
    job = FitJob(tiny_lm, TEXTS, FAST, cache, callback_every=1)
    snap = job.start().wait(300)
    assert snap.state == "done", snap.error
    return job, snap


def test_a_fit_job_ends_done_with_each_text_s_outcome_in_the_cache(finished_job, tiny_lm):
    job, snap = finished_job
    assert snap.finished and snap.error is None and snap.texts == TEXTS
    assert len(snap.outcomes) == len(TEXTS)
    for text, outcome, p in zip(TEXTS, snap.outcomes, snap.progress):
        assert outcome is not None and not outcome.cached and outcome.entry.text == text
        stored = job.cache.get(outcome.entry.key, tiny_lm.hidden_size)
        assert stored is not None and stored.metrics["steps"] == outcome.entry.metrics["steps"]
        assert p.done and p.best_accuracy == outcome.entry.metrics["accuracy"]


def test_a_fit_job_records_each_text_s_curve_up_to_its_last_step(finished_job, tiny_lm):
    _, snap = finished_job
    assert snap.step == max(p.step for p in snap.progress) > 0
    for text, outcome, p in zip(TEXTS, snap.outcomes, snap.progress):
        assert p.curve_step and p.curve_step == sorted(set(p.curve_step))
        assert p.step == p.curve_step[-1] <= FAST.max_steps
        assert len(p.predictions) == len(tiny_lm.encode(text))
        assert max(p.curve_accuracy) <= p.best_accuracy + 1e-9


def test_a_second_job_is_served_by_the_cache_and_refit_fits_again(finished_job, tiny_lm, monkeypatch):
    job, first = finished_job
    again = FitJob(tiny_lm, TEXTS, FAST, job.cache).start().wait(WAIT)
    assert again.state == "done" and all(o.cached for o in again.outcomes)
    assert [o.entry.key for o in again.outcomes] == [o.entry.key for o in first.outcomes]
    # No step ran, yet the texts show as done with their stored accuracy.
    assert all(p.done and not p.curve_step for p in again.progress)
    assert [p.best_accuracy for p in again.progress] == [o.entry.metrics["accuracy"] for o in first.outcomes]
    # refit reaches fit_and_cache: the same cache, fitted again.
    seen = {}
    real = jobs.fit_and_cache

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "fit_and_cache", spy)
    refit = FitJob(tiny_lm, TEXTS[:1], preset("fast", max_steps=2, restarts=1), job.cache, refit=True,
                   batch_size=3, callback_every=7).start().wait(WAIT)
    assert refit.state == "done" and not refit.outcomes[0].cached
    assert (seen["refit"], seen["batch_size"], seen["callback_every"]) == (True, 3, 7)
    assert seen["cancel"] is not None


def test_cancelling_a_fit_job_keeps_the_best_vectors_so_far(tiny_lm, tmp_cache):
    config = preset("first-paper", max_steps=5000)
    job = FitJob(tiny_lm, ["Hello world, a longer text"], config, tmp_cache, callback_every=1).start()
    try:
        deadline = time.monotonic() + WAIT
        while job.snapshot().step < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        live = job.snapshot()
        assert live.state == "running" and not live.finished and live.step >= 3  # polled while it runs
    finally:
        job.cancel()  # also when the test fails: no fit of 5000 steps left running
    snap = job.wait(WAIT)
    assert snap.state == "cancelled" and snap.finished and snap.error is None
    [outcome] = snap.outcomes
    entry = outcome.entry
    assert entry.metrics["status"] == "cancelled" and entry.metrics["steps"] < config.max_steps
    stored = tmp_cache.get(entry.key, tiny_lm.hidden_size)
    assert stored is not None and stored.metrics["status"] == "cancelled"
    assert entry.metrics["accuracy"] == max(entry.history["accuracy"])  # the best vectors, not the last
    assert snap.progress[0].done and snap.progress[0].best_accuracy == entry.metrics["accuracy"]
