"""Background jobs kept in session state, and a polled progress panel for fitting several texts.

Any core.engine.jobs.BackgroundJob (a FitJob, a regulariser RegulariserJob, ...) runs under a name; its thread never calls
Streamlit; a fragment re-runs about once a second to read its snapshot, so the rest of the page stays
responsive while it runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import streamlit as st

from core.engine.cache import CacheWriteError, ProtoCache
from core.engine.fit import FitConfig
from core.engine.jobs import BackgroundJob, FitJob, JobSnapshot
from core.engine.models import LoadedModel
from ui.widgets import plain, show_error

POLL_SECONDS = 1.0


def _slot(name: str) -> str:
    return f"job::{name}"


def get_job(name: str) -> BackgroundJob | None:
    return st.session_state.get(_slot(name))


def run_job(name: str, job: BackgroundJob, cache: ProtoCache | None = None) -> BackgroundJob | None:
    """Start ``job`` in the background under ``name``; a job already running there is stopped first.

    cache: the cache the job writes to. When it cannot be written, nothing starts: the reason is shown at once
    in one line (with the traceback only under PROTOTOKENS_DEBUG=1) and None is returned.
    """
    if cache is not None:
        try:
            cache.check_writable()
        except CacheWriteError as exc:
            show_error(exc, exc)
            return None
    previous = get_job(name)
    if previous is not None:
        previous.cancel()
    job.start()
    st.session_state[_slot(name)] = job
    st.session_state.pop(f"{_slot(name)}::handled", None)
    return job


def start_job(name: str, lm: LoadedModel, texts: Sequence[str], config: FitConfig, cache: ProtoCache, *,
              refit: bool = False, batch_size: int = 8) -> FitJob | None:
    """Start a fit of ``texts`` in the background under ``name`` (see run_job; None when the cache is not
    writable)."""
    return run_job(name, FitJob(lm, texts, config, cache, refit=refit, batch_size=batch_size), cache)


def job_traceback(snap) -> str | None:
    """The failed job's traceback, when core.engine.jobs keeps one (shown only under PROTOTOKENS_DEBUG=1)."""
    return getattr(snap, "traceback", None)


def show_failure(what: str, snap) -> None:
    """One line for a failed job: "<what> failed: <its error>"."""
    show_error(f"{what} failed: {snap.error}", traceback_text=job_traceback(snap))


def unsaved_outcomes(snap) -> list:
    """The outcomes of a finished fit whose entry the cache could not store (core.engine.fit.CachedFit.unsaved)."""
    return [o for o in (getattr(snap, "outcomes", None) or []) if o is not None and getattr(o, "unsaved", None)]


def show_outcome(name: str, what: str = "The fit", unsaved: bool = True) -> None:
    """Once the job under ``name`` has finished (until the next one starts): one error line when it failed and,
    with ``unsaved``, one warning line when the cache could not store some of the texts it fitted."""
    job = get_job(name)
    if job is None:
        return
    snap = job.snapshot()
    if not snap.finished:
        return
    if snap.state == "failed":
        show_failure(what, snap)
    lost = unsaved_outcomes(snap) if unsaved else []
    if lost:
        st.warning(plain(f"{len(lost)} fitted text{'s' * (len(lost) > 1)} not saved to the cache: "
                         f"{lost[0].unsaved}"))


def clear_job(name: str) -> None:
    job = st.session_state.pop(_slot(name), None)
    if job is not None:
        job.cancel()


def is_running(name: str) -> bool:
    job = get_job(name)
    return job is not None and not job.snapshot().finished


def poll(name: str, render: Callable[[BackgroundJob, object], None], on_finish: Callable[[object], None] | None = None) -> None:
    """Draw ``render(job, snapshot)`` now and, while the job runs, again about once a second.

    When the job ends, ``on_finish`` is called once and the whole page reruns to show the result.
    """
    job = get_job(name)
    handled_key = f"{_slot(name)}::handled"
    if job is None or st.session_state.get(handled_key):
        return

    @st.fragment(run_every=POLL_SECONDS if not job.snapshot().finished else None)
    def _panel():
        snap = job.snapshot()
        render(job, snap)
        if snap.finished and not st.session_state.get(handled_key):
            st.session_state[handled_key] = True
            if on_finish is not None:
                on_finish(snap)
            st.rerun(scope="app")

    _panel()


def progress_text(snap: JobSnapshot) -> str:
    done = sum(p.done for p in snap.progress)
    return (f"Step {snap.step} / {snap.max_steps} · {done} of {len(snap.texts)} texts done · "
            f"{snap.elapsed:.0f} s")


def render_set_progress(job: FitJob, snap: JobSnapshot) -> None:
    """A progress bar, a Stop button and a per-text table: the panel for fitting many texts."""
    done = sum(p.done for p in snap.progress)
    st.progress(done / max(len(snap.texts), 1), text=progress_text(snap))
    if not snap.finished and st.button("Stop", key=f"stop::{id(job)}", help="Keeps every text finished so far"):
        job.cancel()
    table = pd.DataFrame({
        "text": [t[:80] for t in snap.texts],
        "step": [p.step for p in snap.progress],
        "best accuracy": [round(p.best_accuracy, 3) for p in snap.progress],
        "done": [p.done for p in snap.progress],
    })
    with st.expander("Per-text progress", expanded=False):
        st.dataframe(table, hide_index=True, width="stretch")
