"""Noise: how stable is the e-token? Noisy copies of fitted proto-tokens, decoded in one pass each."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.engine.cache import CacheEntry
from core.figures.noise import TYPE_LABELS, accuracy_figure, flip_figure, prefix_figure
from core.analyses.noise import (
    MAX_DRAWS,
    NOISE_TARGETS,
    NOISE_TYPES,
    PAPER_ALPHAS,
    PAPER_MODEL,
    NoiseSettings,
    load_noise,
    flip_rates,
    run_noise,
    parse_alphas,
    summarize_noise,
)
from ui.state import entries_multiselect, entry_label, entry_selector, get_cache, get_model, require_app_shell
from core.report import entry_report
from ui.widgets import URL, download_csv, download_figure, download_report, plain, show_error, show_tokens

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

TARGET_LABELS = {"e": "e (as in the paper)", "m": "m", "both": "e and m"}
CURRENT, SEVERAL = "Current entry", "Several entries"
ALL_TYPES = "all types"


st.title("Noise")
st.markdown(
    "How stable is the e-token? Each fitted $e$ is replaced by $e' = e + \\alpha\\,\\lVert e\\rVert\\,"
    "n/\\lVert n\\rVert$ for random directions $n$ of four kinds, so $\\alpha$ is the size of the noise "
    "relative to $\\lVert e\\rVert$, and every noisy pair is decoded in one forward pass. The curves show how "
    f"token accuracy and the correct prefix fall as $\\alpha$ grows, next to the seed paper's {PAPER_MODEL}; "
    "the heatmap shows which tokens flip first."
)

lm = get_model()
if lm is None:
    st.stop()
cache = get_cache()
if not cache.list(lm.identity):
    st.info(plain(f"Nothing fitted yet for {lm.name}. Fit a text on the Reconstruct page first, then come back "
                  "here."))
    st.stop()


# ---- what to sweep ---------------------------------------------------------------------------------
scope = st.radio("Sweep", [CURRENT, SEVERAL], horizontal=True, key="noise_scope", bind=URL,
                 help="Several entries: the curves average over every chosen entry.")
if scope == CURRENT:
    chosen = entry_selector(lm, "Entry", key="noise_entry")
    entries: list[CacheEntry] = [chosen] if chosen is not None else []
else:
    entries = entries_multiselect(lm, "Entries", key="noise_entries")
if not entries:
    st.info("Choose at least one fitted entry to sweep.")
    st.stop()

c1, c2 = st.columns([3, 2])
kinds = c1.multiselect("Noise types", NOISE_TYPES, default=list(NOISE_TYPES), format_func=TYPE_LABELS.get,
                       key="noise_kinds", bind=URL)
alpha_text = c2.text_input("Alphas (noise norm / ‖target‖)", ", ".join(f"{a:g}" for a in PAPER_ALPHAS),
                           key="noise_alphas", bind=URL, help="Comma-separated numbers >= 0; the paper's grid is the default.")
c3, c4, c5 = st.columns([1, 2, 1])
draws = int(c3.number_input("Draws per alpha", 1, MAX_DRAWS, 8, key="noise_draws", bind=URL))
target = c4.radio("Noise on", NOISE_TARGETS, format_func=TARGET_LABELS.get, horizontal=True, key="noise_target", bind=URL)
seed = int(c5.number_input("Seed", 0, 2**31 - 1, 0, key="noise_seed", bind=URL))

try:
    alphas = parse_alphas(alpha_text)
except ValueError as exc:
    show_error(f"Invalid alphas: {exc}", exc)
    st.stop()
if not kinds:
    st.warning("Choose at least one noise type.")
    st.stop()
settings = NoiseSettings(kinds=tuple(kinds), alphas=alphas, draws=draws, target=target, seed=seed)
passes = len(entries) * settings.passes_per_entry
st.caption(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} × {len(kinds)} types × {len(alphas)} alphas "
           f"× {draws} draws = {len(entries) * settings.rows_per_entry:,} noisy reconstructions in {passes:,} "
           "batched forward passes. Results are cached: the same settings show at once next time.")

sweep_id = (tuple(entry.key for entry in entries), settings, lm.identity)
df: pd.DataFrame | None = None
if st.button("Run sweep", type="primary", key="noise_run"):
    bar = st.progress(0.0, text="Starting the sweep ...")
    try:
        df = run_noise(lm, entries, settings, progress=lambda f: bar.progress(f, text=f"Sweeping ... {f:.0%}"),
                       cache=cache)
    except ValueError as exc:
        show_error(f"The sweep could not run: {exc}", exc)
        st.stop()
    finally:
        bar.empty()
    st.session_state["noise_result"] = (sweep_id, df)
else:
    kept = st.session_state.get("noise_result")
    df = kept[1] if kept is not None and kept[0] == sweep_id else load_noise(lm, entries, settings, cache)
if df is None:
    st.info("Press **Run sweep** to decode the noisy copies (seconds on the embedded model; a minute for many "
            "entries or draws).")
    st.stop()

# ---- curves ----------------------------------------------------------------------------------------
summary = summarize_noise(df)
over = "draws" if len(entries) == 1 else f"draws and {len(entries)} entries"
reference_note = "" if target == "e" else " The paper's numbers are for noise on e only."
st.caption(f"Lines: mean over {over}; shaded band: min to max of the same rows.{reference_note}")
accuracy_fig, prefix_fig = accuracy_figure(summary), prefix_figure(summary)
left, right = st.columns(2)
left.plotly_chart(accuracy_fig, key="noise_accuracy")
right.plotly_chart(prefix_fig, key="noise_prefix")

# ---- which tokens go first ------------------------------------------------------------------------
st.subheader("Which tokens flip first")
c1, c2 = st.columns([3, 1])
if len(entries) > 1:
    labels = {entry.key: entry_label(entry) for entry in entries}
    shown_key = c1.selectbox("Entry", list(labels), format_func=labels.get, key="noise_detail_entry")
    shown = next(entry for entry in entries if entry.key == shown_key)
else:
    shown = entries[0]
heat_type = c2.selectbox("Noise type", [ALL_TYPES, *kinds], format_func=lambda k: TYPE_LABELS.get(k, k),
                         key="noise_heat_type", bind=URL)
token_strings = lm.token_strings(shown.token_ids)
rates = flip_rates(df, shown, None if heat_type == ALL_TYPES else [heat_type])
flip_fig = flip_figure(rates, token_strings, f"Share of draws in which each token is wrong ({heat_type})")
st.plotly_chart(flip_fig, key="noise_flips")

# ---- one noisy reconstruction ---------------------------------------------------------------------
c1, c2, c3 = st.columns([1, 3, 2])
sample_type = c1.selectbox("Type", kinds, format_func=TYPE_LABELS.get, key="noise_sample_type", bind=URL)
default_alpha = 0.2 if 0.2 in alphas else alphas[len(alphas) // 2]
sample_alpha = c2.select_slider("alpha", alphas, value=default_alpha, format_func=lambda a: f"{a:g}",
                                key="noise_sample_alpha")
sample_draw = c3.select_slider("Draw", list(range(draws)), value=0, key="noise_sample_draw") if draws > 1 else 0
row = df[(df["entry"] == shown.key) & (df["type"] == sample_type) & (df["alpha"] == sample_alpha)
         & (df["draw"] == sample_draw)].iloc[0]
predicted = list(row["tokens"])
show_tokens(lm.token_strings(predicted), [p == t for p, t in zip(predicted, shown.token_ids)],
            f"noisy reconstruction ({TYPE_LABELS[sample_type]}, alpha {sample_alpha:g}, draw {sample_draw}): "
            f"accuracy {row['accuracy']:.3f}, correct prefix {row['correct_prefix']} / {row['n_tokens']}; "
            "red tokens differ from the target")
show_tokens(token_strings, None, "target")

# ---- numbers and downloads ------------------------------------------------------------------------
st.subheader("Summary")
st.dataframe(summary, hide_index=True, key="noise_summary", width="stretch",
             column_config={"type": st.column_config.TextColumn("type"),
                            **{c: st.column_config.NumberColumn(c, format="%.3f")
                               for c in summary.columns if c.endswith(("_mean", "_std", "_min", "_max"))}})
texts = {entry.key: entry.text for entry in entries}
table = df.assign(text=df["entry"].map(texts), tokens=df["tokens"].map(lambda ids: " ".join(map(str, ids))))
with st.expander(f"All {len(df):,} draws"):
    st.dataframe(table, hide_index=True, width="stretch")
c1, c2, c3, c4, c5 = st.columns(5)
with c1:
    download_csv(table, "noise_sweep.csv", "Table (CSV)", key="noise_dl_table")
with c2:
    download_csv(summary, "noise_summary.csv", "Summary (CSV)", key="noise_dl_summary")
with c3:
    download_figure(accuracy_fig, "noise_accuracy.html", "Accuracy", key="noise_dl_accuracy")
with c4:
    download_figure(prefix_fig, "noise_prefix.html", "Prefix", key="noise_dl_prefix")
with c5:
    download_figure(flip_fig, "noise_flips.html", "Heatmap", key="noise_dl_flips")
if len(entries) == 1:  # a report is of one entry: its noise sweep with the default settings, beside its fit
    download_report(lambda publication: entry_report(lm, entries[0], cache, publication=publication),
                    f"report-{entries[0].key[:12]}.html", key="noise_dl_report")
