"""Geometry: how the solutions of one text lie - several solutions, the paths between two, a fit's trajectory
(docs/science.md, A.geometry)."""

from __future__ import annotations

import streamlit as st

from core.analyses.geometry import (
    MAX_PATH_STEPS,
    MAX_POINTS,
    MAX_RECORD_EVERY,
    MAX_SAMPLES,
    GeometryError,
    GeometryJob,
    GeometrySettings,
    GeometrySnapshot,
    default_pair,
    load_path,
    load_solutions,
    load_trajectory,
    parse_seeds,
    path_table,
    path_verdict,
    solution_label,
)
from core.engine.reconstruct import COUNT_LABELS, count_note
from core.figures.geometry import path_figure, shares_figure, training_figure, trajectory_figure
from ui import jobs
from ui.state import current_entry, fit_config, get_cache, get_model, metric_count, require_app_shell
from ui.widgets import URL, download_csv, download_figure, plain, show_error

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

JOBS = {"solutions": "geometry-solutions", "path": "geometry-path", "trajectory": "geometry-trajectory"}
# Progressive Cramming (Tarasov et al.): the first two principal components of a fit's trajectory.
CRAMMING_SHARE, CRAMMING_SETTING = 0.657, "Llama-3.1-8B, 1000 tokens"

st.title("Geometry")
st.markdown(
    "How do the solutions of one text lie? Fitting the same text from other seeds gives other pairs $(e, m)$ that "
    "rebuild it. Between two solutions $A$ and $B$, the first paper (Mezentsev & Oseledets) found that the "
    "**straight line** $(1-t)A + tB$ collapses (the points in between rebuild nothing), while a **quadratic Bezier "
    "curve** $(1-t)^2A + 2t(1-t)C + t^2B$ whose control point $C$ is trained keeps reconstructing all the way. "
    "Both paths are decoded here at evenly spaced $t$ in batched forward passes. A fit's own **trajectory**, "
    "projected on its first principal components, shows how low-dimensional the search is (Progressive Cramming: "
    f"the first two components held {CRAMMING_SHARE:.1%} of the variance, {CRAMMING_SETTING})."
)

lm = get_model()
cache = get_cache()
sidebar = fit_config()
if lm is None:
    st.stop()
entry = current_entry(cache, lm)
if entry is None or entry.model != lm.identity:
    st.info(plain(f"Choose an entry fitted for {lm.name} first (the Reconstruct page fits one and makes it the "
                  "current entry), then come back here."))
    st.stop()
st.caption(plain(f"Text: {entry.text}") + f" · {entry.n_tokens} tokens · every solution is fitted with this "
           "entry's own settings" + (f" (not the sidebar's {sidebar.preset} preset)" if sidebar is not None else "")
           + ".")

# ---- the settings ----------------------------------------------------------------------------------------
c_seeds, c_points, c_steps, c_samples, c_lr, c_record = st.columns([2, 1, 1, 1, 1, 1])
seed_text = c_seeds.text_input("Seeds to fit", "1, 2", key="geo_seeds", bind=URL,
                               help="Other seeds of this text, fitted with the entry's settings from a random draw.")
points = int(c_points.number_input("Points t", 2, MAX_POINTS, 21, key="geo_points", bind=URL,
                                   help="Points along each path, both ends included."))
steps = int(c_steps.number_input("Curve steps", 1, MAX_PATH_STEPS, 200, key="geo_steps", bind=URL,
                                 help="AdamW steps on the control point."))
samples = int(c_samples.number_input("t per step", 1, MAX_SAMPLES, 8, key="geo_samples", bind=URL,
                                     help="Points t sampled on the curve at each step (one per stratum)."))
lr = float(c_lr.number_input("Curve lr", 0.0001, 10.0, 0.05, format="%.4f", key="geo_lr", bind=URL))
record_every = int(c_record.number_input("Record every", 1, MAX_RECORD_EVERY, 10, key="geo_record", bind=URL,
                                         help="A trajectory point every this many steps of the refit."))
try:
    settings = GeometrySettings(seeds=parse_seeds(seed_text), points=points, steps=steps, lr=lr, samples=samples,
                                record_every=record_every)
    solutions = load_solutions(lm, entry, settings, cache)
except GeometryError as exc:
    show_error(f"Invalid settings: {exc}", exc)
    st.stop()


def render_progress(job: GeometryJob, snap: GeometrySnapshot) -> None:
    text = f"{snap.message} · {snap.elapsed:.0f} s" if not snap.finished else f"{snap.state} · {snap.elapsed:.0f} s"
    st.progress(min(max(snap.fraction, 0.0), 1.0), text=plain(text))
    if not snap.finished and st.button("Stop", key=f"geo_stop_{snap.part}::{id(job)}",
                                       help="What finished is kept; an unfinished curve or trajectory is not."):
        job.cancel()


def job_panel(part: str, what: str) -> None:
    """The part's running job (progress, Stop) and, once it ended badly, one line why."""
    name = JOBS[part]
    job = jobs.get_job(name)
    if job is None:
        return
    jobs.poll(name, render_progress)
    last = job.snapshot()
    if last.state == "failed":
        jobs.show_failure(what, last)
    elif last.state == "cancelled":
        st.caption(f"{what} was stopped: nothing unfinished was stored.")


def start(part: str, other=None) -> None:
    if jobs.run_job(JOBS[part], GeometryJob(part, lm, entry, settings, cache, other=other), cache) is not None:
        st.rerun()


# ---- several solutions ----------------------------------------------------------------------------------------
st.subheader("Solutions of this text")
missing = solutions.missing_seeds
st.caption(f"{len(solutions.entries)} solution{'s' * (len(solutions.entries) != 1)} of this text in the cache (the "
           "same tokens and layout, any seed or setting)"
           + (f"; seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} not fitted yet." if missing else "."))
if missing and st.button(f"Fit seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))}", type="primary",
                         key="geo_fit_seeds", disabled=jobs.is_running(JOBS["solutions"]),
                         help="Runs in the background; each seed is stored as soon as it is fitted."):
    start("solutions")
job_panel("solutions", "Fitting the seeds")

count = metric_count()
labels = {e.key: solution_label(e, count) for e in solutions.entries}
counted_solutions, solutions_uncounted = solutions.counted(count)
shown = counted_solutions.assign(solution=counted_solutions["entry"].map(labels))
st.dataframe(shown[["solution", "accuracy", "steps", "norm_e", "norm_m", "norm_em"]], hide_index=True,
             key="geo_solutions", width="stretch",
             column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                            for c in ("accuracy", "norm_e", "norm_m", "norm_em")})
if count != "text":
    st.caption(count_note(count, solutions_uncounted).strip())
pairs = solutions.pairs.assign(a=solutions.pairs["a"].map(labels), b=solutions.pairs["b"].map(labels))
if len(pairs):
    st.caption("Pairwise: L2 distance and cosine of e, of m, and of the concatenation [e, m].")
    st.dataframe(pairs, hide_index=True, key="geo_pairs", width="stretch",
                 column_config={c: st.column_config.NumberColumn(c, format="%.3f") for c in pairs.columns[2:]})
c1, c2 = st.columns(2)
with c1:
    download_csv(counted_solutions, "geometry_solutions.csv", "Solutions (CSV)", key="geo_dl_solutions")
if len(pairs):
    with c2:
        download_csv(solutions.pairs, "geometry_pairs.csv", "Pairs (CSV)", key="geo_dl_pairs")

# ---- paths ------------------------------------------------------------------------------------------------------
st.subheader("Paths between two solutions")
pair = default_pair(solutions)
if pair is None:
    st.info("A path needs two solutions of this text: fit another seed above.")
else:
    keys = solutions.keys
    c_a, c_b = st.columns(2)
    key_a = c_a.selectbox("Solution A (t = 0)", keys, index=keys.index(pair[0]), format_func=labels.get, key="geo_a",
                          bind=URL)
    key_b = c_b.selectbox("Solution B (t = 1)", keys, index=keys.index(pair[1]), format_func=labels.get, key="geo_b",
                          bind=URL)
    if key_a == key_b:
        st.warning("Choose two different solutions.")
    else:
        a = solutions.entries[keys.index(key_a)]
        b = solutions.entries[keys.index(key_b)]
        path = load_path(lm, a, b, settings, cache)
        if path is None and st.button("Fit the curve", type="primary", key="geo_fit_path",
                                      disabled=jobs.is_running(JOBS["path"]),
                                      help="Trains the control point in the background, then decodes both paths."):
            start("path", b)
        job_panel("path", "The curve")
        if path is None:
            st.info(f"Press **Fit the curve** to train the control point ({steps} steps of {samples} points) and "
                    f"decode both paths at {points} points.")
        else:
            summary = path.summary(count)
            path_counted = path.accuracies(count)[2]
            st.caption(f"Lowest accuracy along the line {summary['line_min_accuracy']:.2f}, along the curve "
                       f"{summary['curve_min_accuracy']:.2f}; mean loss {summary['line_mean_loss']:.3f} against "
                       f"{summary['curve_mean_loss']:.3f}. The curve took {path.steps} steps ({path.seconds:.0f} s). "
                       + (f"Accuracy over {COUNT_LABELS[count]}" if path_counted else
                          "Accuracy over the N text positions (e's BOS prediction is not recorded for this path: no "
                          "BOS token or position, or stored before the lab recorded it)") + "; hover a point for its reconstruction.")
            st.caption(path_verdict(summary))
            table = path_table(path, lm.decode, count)
            path_fig = path_figure(table)
            st.plotly_chart(path_fig, key="geo_path")
            train_fig = training_figure(path.history)
            with st.expander("The control point's training"):
                st.plotly_chart(train_fig, key="geo_training")
            c1, c2, c3 = st.columns(3)
            with c1:
                download_csv(table, "geometry_path.csv", "Path (CSV)", key="geo_dl_path_table")
            with c2:
                download_figure(path_fig, "geometry_path.html", "Path", key="geo_dl_path")
            with c3:
                download_figure(train_fig, "geometry_training.html", "Training", key="geo_dl_training")

# ---- the trajectory --------------------------------------------------------------------------------------------
st.subheader("The fit's trajectory")
trajectory = load_trajectory(lm, entry, settings, cache)
if trajectory is None and st.button("Record the trajectory", type="primary", key="geo_fit_trajectory",
                                    disabled=jobs.is_running(JOBS["trajectory"]),
                                    help="Refits this text in the background, recording (e, m) as it goes."):
    start("trajectory")
job_panel("trajectory", "The trajectory")
start_note = (f" This entry itself started from a learned start ({entry.config['start']}), which depends on what "
              "the cache holds, so the refit is another fit of the same text." if entry.config.get("start") else "")
if trajectory is None:
    st.info(f"Press **Record the trajectory** to refit this text with its settings from a random draw, recording "
            f"(e, m) every {record_every} steps.{start_note}")
else:
    shares = trajectory.shares
    two = float(shares[:2].sum())
    trajectory_accuracy, trajectory_counted = trajectory.accuracies(count)
    st.caption(f"{len(trajectory.steps)} points of a refit with the entry's settings from a random draw (accuracy "
               f"{trajectory_accuracy[-1]:.2f} after {trajectory.steps[-1]} steps, {trajectory.seconds:.0f} s), "
               f"projected on the first principal components of [e, m]: the first two hold {two:.1%} of the variance "
               f"(Progressive Cramming: {CRAMMING_SHARE:.1%}, {CRAMMING_SETTING}).{start_note} Accuracy over "
               + (COUNT_LABELS[count] if trajectory_counted else "the N text positions (e's BOS prediction is not "
                  "recorded for this trajectory: no BOS token or position, or stored before the lab recorded it)") + ".")
    trajectory_table = trajectory.table(lm.decode, count)
    left, right = st.columns([3, 2])
    trajectory_fig = trajectory_figure(trajectory_table, shares)
    variance_fig = shares_figure(shares)
    left.plotly_chart(trajectory_fig, key="geo_trajectory")
    right.plotly_chart(variance_fig, key="geo_shares")
    c1, c2, c3 = st.columns(3)
    with c1:
        download_csv(trajectory_table, "geometry_trajectory.csv", "Trajectory (CSV)", key="geo_dl_trajectory_table")
    with c2:
        download_figure(trajectory_fig, "geometry_trajectory.html", "Trajectory", key="geo_dl_trajectory")
    with c3:
        download_figure(variance_fig, "geometry_shares.html", "Variance", key="geo_dl_shares")
