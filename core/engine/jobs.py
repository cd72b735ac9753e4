"""A fit running in a background thread, with progress snapshots that a UI polls and a cancel.

The thread never touches the UI: it only updates a :class:`JobSnapshot` under a lock. A page polls
:meth:`FitJob.snapshot` (for example from an ``st.fragment`` that reruns every second).
"""

from __future__ import annotations

import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Sequence

from core.engine.cache import ProtoCache
from core.engine.fit import CachedFit, FitConfig, FitProgress, fit_and_cache
from core.engine.models import LoadedModel

MAX_CURVE_POINTS = 2000


@dataclass
class TextProgress:
    """Live state of one text of a job."""

    step: int = 0
    loss: float | None = None
    accuracy: float = 0.0
    best_accuracy: float = 0.0
    predictions: list[int] = field(default_factory=list)
    done: bool = False
    curve_step: list[int] = field(default_factory=list)
    curve_loss: list[float] = field(default_factory=list)
    curve_accuracy: list[float] = field(default_factory=list)


@dataclass
class JobSnapshot:
    """A consistent copy of a job's state at one moment."""

    state: str  # "running", "done", "cancelled", "failed"
    texts: list[str]
    max_steps: int
    progress: list[TextProgress]
    elapsed: float
    error: str | None = None
    outcomes: list[CachedFit | None] | None = None
    traceback: str | None = None  # of a failed job, for a debug view

    @property
    def step(self) -> int:
        return max((p.step for p in self.progress), default=0)

    @property
    def finished(self) -> bool:
        return self.state != "running"


class BackgroundJob(ABC):
    """Work in a daemon thread that a UI starts, polls through ``snapshot()`` and may cancel.

    Subclasses set up their state (``_state`` "running", ``_error`` None), then call ``super().__init__()``,
    and define ``_work`` (which checks ``cancel_event`` and updates state under ``_lock``) and ``snapshot``.
    A failure in ``_work`` marks the job "failed" with its message; the thread never dies silently.
    """

    thread_name = "background-job"

    def __init__(self) -> None:
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._t_end: float | None = None
        self._traceback: str | None = None
        # Set when the work has ended. wait() waits on it rather than on Thread.join: a Ctrl-C that interrupts a
        # join leaves the thread marked stopped on Python < 3.13, so the next join returned at once while the
        # fit still ran, and `core fit` exited mid-write (an entry's files half written, at times a SIGABRT).
        self._work_ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop; what it finished (and, for a fit, the best vectors so far) is kept."""
        self.cancel_event.set()

    def wait(self, timeout: float | None = None):
        """The snapshot once the work has ended, or after ``timeout`` seconds (still running then)."""
        self._work_ended.wait(timeout)
        return self.snapshot()

    def _run(self) -> None:
        try:
            self._work()
        except Exception as exc:  # the UI shows the message
            with self._lock:
                self._error = " ".join(str(exc).split()) or type(exc).__name__  # one line
                self._traceback = traceback.format_exc()
                self._state = "failed"
            traceback.print_exc()
        finally:
            with self._lock:
                self._t_end = time.perf_counter()
            self._work_ended.set()

    def _elapsed(self) -> float:
        """Seconds since the start, frozen at the end (call under ``_lock``)."""
        return (self._t_end if self._t_end is not None else time.perf_counter()) - self._t0

    @abstractmethod
    def _work(self) -> None:
        """The job itself, in the thread."""

    @abstractmethod
    def snapshot(self):
        """A consistent copy of the job's state."""


class FitJob(BackgroundJob):
    """Fit texts through the cache in a daemon thread. Start with :meth:`start`; poll :meth:`snapshot`."""

    thread_name = "proto-fit"

    def __init__(self, lm: LoadedModel, texts: Sequence[str], config: FitConfig, cache: ProtoCache, *,
                 refit: bool = False, batch_size: int = 8, callback_every: int = 5):
        self.lm, self.texts, self.config, self.cache = lm, list(texts), config, cache
        self.refit, self.batch_size, self.callback_every = refit, batch_size, callback_every
        self._progress = [TextProgress() for _ in self.texts]
        self._state = "running"
        self._error: str | None = None
        self._outcomes: list[CachedFit | None] | None = None
        super().__init__()

    def _on_progress(self, progress: FitProgress, indices: list[int]) -> None:
        with self._lock:
            for row, i in enumerate(indices):
                p = self._progress[i]
                if p.done and progress.done[row] and p.step >= progress.step:
                    continue
                loss = progress.loss[row]
                p.step = progress.step
                p.loss = loss if loss == loss else None  # NaN -> None for JSON and plots
                p.accuracy = progress.accuracy[row]
                p.best_accuracy = progress.best_accuracy[row]
                p.predictions = progress.predictions[row]
                p.done = progress.done[row]
                if not p.curve_step or p.curve_step[-1] != progress.step:
                    p.curve_step.append(progress.step)
                    p.curve_loss.append(p.loss)
                    p.curve_accuracy.append(p.accuracy)
                    if len(p.curve_step) > MAX_CURVE_POINTS:
                        p.curve_step, p.curve_loss, p.curve_accuracy = (
                            p.curve_step[::2], p.curve_loss[::2], p.curve_accuracy[::2])

    def _work(self) -> None:
        outcomes = fit_and_cache(
            self.lm, self.texts, self.config, self.cache, refit=self.refit, batch_size=self.batch_size,
            callback=self._on_progress, callback_every=self.callback_every, cancel=self.cancel_event,
        )
        with self._lock:
            self._outcomes = outcomes
            for i, outcome in enumerate(outcomes):
                if outcome is not None:
                    p = self._progress[i]
                    p.done = True
                    p.best_accuracy = outcome.entry.metrics.get("accuracy", p.best_accuracy)
            self._state = "cancelled" if self.cancel_event.is_set() else "done"

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(
                state=self._state, texts=list(self.texts), max_steps=self.config.max_steps,
                progress=[replace(p, predictions=list(p.predictions), curve_step=list(p.curve_step),
                                  curve_loss=list(p.curve_loss), curve_accuracy=list(p.curve_accuracy))
                          for p in self._progress],
                elapsed=self._elapsed(), error=self._error,
                outcomes=list(self._outcomes) if self._outcomes is not None else None, traceback=self._traceback,
            )
