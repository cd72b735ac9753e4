"""Background fit jobs kept in session state, and a polled progress panel for fitting several texts.

The job's thread never calls Streamlit; a fragment re-runs about once a second to read its snapshot,
so the rest of the page stays responsive while a fit runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import streamlit as st

from core.cache import ProtoCache
from core.fit import FitConfig
from core.jobs import FitJob, JobSnapshot
from core.models import LoadedModel

POLL_SECONDS = 1.0


def _slot(name: str) -> str:
    return f"job::{name}"


def get_job(name: str) -> FitJob | None:
    return st.session_state.get(_slot(name))


def start_job(name: str, lm: LoadedModel, texts: Sequence[str], config: FitConfig, cache: ProtoCache, *,
              refit: bool = False, batch_size: int = 8) -> FitJob:
    """Start a fit in the background under ``name``; a job already running there is stopped first."""
    previous = get_job(name)
    if previous is not None:
        previous.cancel()
    job = FitJob(lm, texts, config, cache, refit=refit, batch_size=batch_size).start()
    st.session_state[_slot(name)] = job
    st.session_state.pop(f"{_slot(name)}::handled", None)
    return job


def clear_job(name: str) -> None:
    job = st.session_state.pop(_slot(name), None)
    if job is not None:
        job.cancel()


def is_running(name: str) -> bool:
    job = get_job(name)
    return job is not None and not job.snapshot().finished


def poll(name: str, render: Callable[[FitJob, JobSnapshot], None], on_finish: Callable[[JobSnapshot], None] | None = None) -> None:
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
    if snap.state == "failed":
        st.error(f"The fit failed: {snap.error}")
    table = pd.DataFrame({
        "text": [t[:80] for t in snap.texts],
        "step": [p.step for p in snap.progress],
        "best accuracy": [round(p.best_accuracy, 3) for p in snap.progress],
        "done": [p.done for p in snap.progress],
    })
    with st.expander("Per-text progress", expanded=False):
        st.dataframe(table, hide_index=True, width="stretch")
