"""Capacity: how long a text two vectors hold, and what that depends on (the first paper, docs/science.md A)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from core.analyses.capacity import (
    ABLATION_LENGTH,
    ABLATION_STEPS,
    PAPER_CAPACITY_SETTING,
    PAPER_LENGTHS,
    PAPER_SPEEDUP,
    CapacityJob,
    CapacitySnapshot,
    LadderSettings,
    capacity_table,
    counted_rows,
    information_table,
    layout_summary,
    load_generation_timing,
    load_ladder,
    load_layouts,
    load_long_texts,
    prefix,
    time_generation,
)
from core.engine.models import TextError
from core.engine.reconstruct import PAPER_LAYOUT_NAMES, count_note
from core.figures.capacity import information_figure, ladder_figure, layouts_figure, speed_figure
from core.shipped.ladder import SHIPPED_LADDER_MAX, load_ladder_record
from ui import jobs
from ui.state import fit_config, get_cache, get_model, metric_count, require_app_shell
from ui.widgets import URL, download_csv, download_figure, plain, show_error

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

LADDER_JOB, LAYOUT_JOB = "capacity-ladder", "capacity-layouts"
YOURS = "your text"
MAX_SCATTER = 400  # cached entries in the H_LM scatter besides the ladder's (the most recent)

st.title("Capacity")
st.markdown(
    "How long a text can $e$ and $m$ hold? A source text is cut into prefixes of the first paper's lengths (4, 5, 8, "
    "11, 16, 22, 32, 45, 64, 90, 128, 181, 256, ... tokens, growing by $\\sqrt 2$), fitted in order until one fails "
    "to reach the threshold. Beside it: the text's own information content $H_{LM}$ (its cross-entropy under the "
    "same frozen model), the paper's five arrangements of $e$ and $m$, and the one forward pass against decoding the "
    "same tokens one at a time."
)

lm = get_model()
config = fit_config()
cache = get_cache()
if lm is None or config is None:
    st.stop()


def render(job, snap: CapacitySnapshot) -> None:
    best = ", ".join(f"{a:.2f}" for a in snap.best_accuracy) or "starting"
    st.progress(min(snap.step / max(config.max_steps, 1), 1.0),
                text=f"Fitting ({snap.what}): step {snap.step}, best accuracy {best} · {snap.elapsed:.0f} s")
    if not snap.finished and st.button("Stop", key=f"stop_capacity::{id(job)}",
                                       help="Keeps every text finished so far"):
        job.cancel()
    if snap.state == "failed":
        show_error(f"The fit failed: {snap.error}", traceback_text=snap.traceback)


# ---- the ladder --------------------------------------------------------------------------------------
st.subheader("The ladder")
long_texts = {t.name: t.text for t in load_long_texts()}
c1, c2, c3 = st.columns([3, 2, 2])
chosen = c1.multiselect("Source texts", [*long_texts, YOURS], default=list(long_texts), key="cap_sources", bind=URL,
                        help="Built-in long texts written for this project (a story, an explanation, instructions), "
                             "or your own.")
record = load_ladder_record()
shipped_max = int(record["settings"]["max_length"]) if record and record.get("model") == lm.identity \
    else SHIPPED_LADDER_MAX
max_length = c2.select_slider("Longest prefix (tokens)", [n for n in PAPER_LENGTHS if n <= 1448],
                              value=shipped_max, key="cap_max", bind=URL,
                              help=f"The shipped ladder reaches {shipped_max} tokens on the lab's CPU; longer ones "
                                   "take hours there and minutes on a GPU.")
shared = c3.radio("m", ["per text", "shared"], horizontal=True, key="cap_m", bind=URL,
                  help="per text: each prefix its own e and m. shared: the texts of one length share one m (the "
                       "paper's second column).") == "shared"
sources = {name: long_texts[name] for name in chosen if name in long_texts}
if YOURS in chosen:
    yours = st.text_area("Your text", key="cap_text", height=100, placeholder="A long text: a few paragraphs.")
    if yours.strip():
        try:
            lm.validate_text(yours, config.layout)
            sources[YOURS] = yours
        except TextError as exc:
            show_error(f"Your text cannot be fitted: {exc}", exc)
if not sources:
    st.info("Choose at least one source text.")
    st.stop()
settings = LadderSettings(max_length=max_length, shared_m=shared)
count = metric_count()
result = load_ladder(lm, sources, settings, config, cache)
running = jobs.is_running(LADDER_JOB)
label = "Continue the ladder" if len(result.rows) else "Fit the ladder"
if not result.complete and st.button(label, type="primary", disabled=running, key="cap_fit"):
    jobs.run_job(LADDER_JOB, CapacityJob("ladder", lm, cache, config, sources=sources, settings=settings), cache)
if jobs.get_job(LADDER_JOB) is not None:
    jobs.poll(LADDER_JOB, render)
if record and record.get("model") == lm.identity:
    reached = max((row["length"] for row in record.get("rows", [])), default=0)
    st.caption(f"Shipped: the built-in texts' ladder, fitted up to {reached} tokens with preset "
               f"{record['config'].get('preset')} in {record['wall_time_s'] / 60:.0f} min on the lab's 2-core CPU"
               + ("" if record.get("complete") else f" (stopped there; up to {record['settings']['max_length']} "
                  "tokens with **Continue the ladder**)") + ". Other settings in the sidebar look for other entries.")
if result.rows.empty:
    st.info("Nothing of this ladder is fitted with these settings yet: press **Fit the ladder** (a background job; "
            "Stop keeps every finished prefix).")
else:
    if not result.complete:
        st.caption("The ladder is fitted as far as shown; **Continue the ladder** fits the rest.")
    ladder_rows, ladder_uncounted = counted_rows(result.rows, count)
    ladder_fig = ladder_figure(ladder_rows, config.threshold)
    left, right = st.columns([1, 1])
    left.plotly_chart(ladder_fig, key="cap_ladder")
    table = capacity_table(result, lm.name, shared)
    right.dataframe(table, hide_index=True, width="stretch",
                    column_config={"longest (tokens)": st.column_config.NumberColumn(width="small")})
    right.caption(f"Longest prefix reconstructed to {config.threshold:g} with every shorter one, per source and "
                  f"in the mean; the paper's column for m {'shared' if shared else 'per text'} "
                  f"({PAPER_CAPACITY_SETTING}); a fit reaches the threshold over its N text positions."
                  + count_note(count, ladder_uncounted))
    failed = ladder_rows[~ladder_rows["converged"]]
    for row in failed.itertuples():
        st.caption(plain(f"{row.source} fails at {row.length} tokens: accuracy {row.accuracy:.3f}, C_tokens "
                         f"{row.c_tokens} of {row.positions}, after {row.steps} steps."))
    c1, c2 = st.columns(2)
    with c1:
        download_csv(ladder_rows, "capacity_ladder.csv", "Ladder (CSV)", key="cap_dl_ladder")
    with c2:
        download_figure(ladder_fig, "capacity_ladder.html", "Ladder figure", key="cap_dl_ladder_fig")

# ---- information content -----------------------------------------------------------------------------
st.subheader("Information content")
ladder_keys = set(result.rows["key"].dropna())
listing = cache.list(lm.identity)[:MAX_SCATTER]
scatter_keys = tuple(sorted({*ladder_keys, *(row.key for row in listing)}))


@st.cache_data(show_spinner=False, max_entries=8)
def _information(model: str, keys: tuple) -> pd.DataFrame:
    """The entries' H_LM table, read and computed once per set of keys (not at every rerun of the page)."""
    return information_table(lm, [e for e in (cache.get(k, lm.hidden_size) for k in keys) if e is not None], cache)


if scatter_keys:
    with st.spinner("H_LM of the cached entries (once each) ..."):
        info, info_uncounted = counted_rows(_information(lm.identity, scatter_keys), count)
    info_fig = information_figure(info, ladder_keys)
    st.plotly_chart(info_fig, key="cap_information")
    st.caption("H_LM: the text's own autoregressive cross-entropy, summed over its tokens, under the same frozen "
               "model (the first token conditioned on BOS where the tokenizer has one). Filled: reconstructed to the "
               "threshold. The capacity papers find that how much two vectors hold is bounded by H_LM more than by "
               "the number of tokens." + count_note(count, info_uncounted))

# ---- layouts -----------------------------------------------------------------------------------------
st.subheader("Where e and m go: the five layouts")
c1, c2 = st.columns(2)
ab_length = c1.select_slider("Prefix length", [n for n in PAPER_LENGTHS if n <= 256], value=ABLATION_LENGTH,
                             key="cap_ab_length", bind=URL, help="The paper's ablation is at N = 256 on Llama-3.2-1B.")
ab_steps = int(c2.number_input("Max steps per fit", 50, 20000, ABLATION_STEPS, step=50, key="cap_ab_steps", bind=URL,
                               help="Most layouts never converge: this caps what each of them costs."))
ab_config = replace(config, max_steps=ab_steps)
try:
    ab_texts = [prefix(lm, text, ab_length) for text in sources.values()]
except TextError as exc:
    show_error(f"No prefix: {exc}", exc)
    st.stop()
layouts = load_layouts(lm, ab_texts, ab_config, cache)
if st.button("Fit the five layouts", disabled=jobs.is_running(LAYOUT_JOB), key="cap_layouts_fit"):
    jobs.run_job(LAYOUT_JOB, CapacityJob("layouts", lm, cache, ab_config, texts=ab_texts), cache)
if jobs.get_job(LAYOUT_JOB) is not None:
    jobs.poll(LAYOUT_JOB, render)
if layouts.empty:
    st.info("Not fitted with these settings yet: **Fit the five layouts** fits every prefix in each arrangement.")
else:
    layouts, layouts_uncounted = counted_rows(layouts, count)
    summary = layout_summary(layouts)
    layouts_fig = layouts_figure(summary)
    left, right = st.columns([3, 2])
    left.plotly_chart(layouts_fig, key="cap_layouts")
    right.dataframe(summary.assign(layout=summary["layout"].map(PAPER_LAYOUT_NAMES)), hide_index=True,
                    width="stretch")
    right.caption(f"{len(ab_texts)} prefixes of {ab_length} tokens, up to {ab_steps} steps each; the paper's texts "
                  "are 256 tokens long on a model eight times larger, so the shares differ, the order is the finding. The "
                  "paper's ablation labels give [e] [m] x N 0.97 and [e] [m] x (N-1) 0.99, the reverse of its Table 1 "
                  "(docs/science.md, A.ablation): shown as labelled." + count_note(count, layouts_uncounted)
                  + (" Only [e] [m] x N has a position whose output is unscored, so only it can count e's BOS "
                     "prediction." if count == "bos" else ""))

# ---- one pass against decoding ----------------------------------------------------------------------
st.subheader("One pass against decoding")
converged = [e for e in (cache.get(k, lm.hidden_size) for k in result.rows[result.rows["converged"]]["key"])
             if e is not None]
if not converged:
    st.info("Fit the ladder first: its reconstructed prefixes are what is timed.")
else:
    timings = [load_generation_timing(lm, e, cache) for e in converged]
    missing = [e for e, t in zip(converged, timings) if t is None]
    if missing and st.button(f"Time {len(missing)} prefixes on this device", key="cap_time"):
        with st.spinner("Timing the one pass and greedy decoding ..."):
            timings = [time_generation(lm, e, cache) for e in converged]
    rows = [dict(t.as_dict(), source=e.text[:30]) for e, t in zip(converged, timings) if t is not None]
    if rows:
        frame = pd.DataFrame(rows).groupby("n_tokens", as_index=False)[["one_pass_s", "generate_s", "ratio"]].median()
        speed_fig = speed_figure(frame)
        left, right = st.columns([3, 2])
        left.plotly_chart(speed_fig, key="cap_speed")
        right.dataframe(frame.round({"one_pass_s": 3, "generate_s": 3, "ratio": 1}), hide_index=True, width="stretch")
        right.caption(f"Medians of 3 runs on {lm.device.type} (the shipped figures were measured on the lab's 2-core "
                      f"CPU); decoding is `generate` with the KV cache, greedy, N new tokens. The paper reports "
                      f"{PAPER_SPEEDUP:g}x the throughput on average on its GPUs.")
    else:
        st.info("Not timed on this device yet.")
