"""Noise: how stable is the e-token? Noisy copies of fitted proto-tokens, decoded in one pass each."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.engine.cache import CacheEntry
from core.engine.reconstruct import COUNT_LABELS
from core.figures.noise import TYPE_LABELS, accuracy_figure, entries_figure, flip_figure, prefix_figure
from core.analyses.noise import (
    AUTHORS_MIN_ACCURACY,
    MAX_DRAWS,
    NOISE_PROTOCOLS,
    NOISE_TARGETS,
    NOISE_TYPES,
    PAPER_ALPHAS,
    PAPER_COUNT,
    PAPER_MODEL,
    PROTOCOL_LABELS,
    NoiseSettings,
    authors_entries,
    counted_table,
    entry_curves,
    load_noise,
    flip_rates,
    run_noise,
    parse_alphas,
    set_originals,
    summarize_noise,
)
from core.texts.textsets import BUILTIN_SETS
from ui.state import (entries_multiselect, entry_label, entry_selector, fit_config, get_cache, get_model, metric_count,
                      require_app_shell)
from core.report import entry_report
from ui.widgets import URL, download_csv, download_figure, download_report, plain, show_error, show_tokens

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

TARGET_LABELS = {"e": "e (as in the paper)", "m": "m", "both": "e and m"}
CURRENT, SEVERAL, ORIGINALS = "Current entry", "Several entries", "A set's originals"
# The built-in sets with originals (the syntax set has none)
ORIGINAL_SETS = [name for name in BUILTIN_SETS if name.startswith("variants")]
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
c_scope, c_protocol = st.columns([2, 3])
scope = c_scope.radio("Sweep", [CURRENT, SEVERAL, ORIGINALS], horizontal=True, key="noise_scope", bind=URL,
                      help="Several entries: the curves average over every chosen entry, and each entry's own curve "
                           "is drawn too. A set's originals: the fitted originals of a built-in set (its variants left "
                           "out), as the seed paper sweeps them.")
protocol = c_protocol.radio("Protocol", NOISE_PROTOCOLS, format_func=PROTOCOL_LABELS.get, key="noise_protocol",
                            bind=URL, help="This lab's (default): several draws per alpha along the same directions, "
                            "so a curve does not jitter between alphas. The seed paper's code: one draw per text, type "
                            "and alpha, a fresh direction at each alpha, only texts fitted to at least "
                            f"{AUTHORS_MIN_ACCURACY}.")
if scope == CURRENT:
    chosen = entry_selector(lm, "Entry", key="noise_entry")
    entries: list[CacheEntry] = [chosen] if chosen is not None else []
elif scope == SEVERAL:
    entries = entries_multiselect(lm, "Entries", key="noise_entries")
else:
    set_name = st.selectbox("Set", ORIGINAL_SETS, key="noise_set", bind=URL)
    sidebar = fit_config()
    if sidebar is None:
        st.stop()
    entries = set_originals(lm, set_name, sidebar, cache)
    if not entries:
        st.info(plain(f"No original of the {set_name} set is fitted for {lm.name} yet: fit the set on the "
                      "Embeddings page, then come back here."))
        st.stop()
if protocol == "authors" and entries:
    kept = authors_entries(entries)
    if len(kept) < len(entries):
        st.caption(f"The seed paper's protocol sweeps texts fitted to at least {AUTHORS_MIN_ACCURACY}: "
                   f"{len(entries) - len(kept)} of the {len(entries)} chosen entries fall short and are left out.")
    entries = kept
if not entries:
    st.info("Choose at least one fitted entry to sweep"
            + (f" (fitted to at least {AUTHORS_MIN_ACCURACY} for the seed paper's protocol)." if protocol == "authors"
               else "."))
    st.stop()

c1, c2 = st.columns([3, 2])
kinds = c1.multiselect("Noise types", NOISE_TYPES, default=list(NOISE_TYPES), format_func=TYPE_LABELS.get,
                       key="noise_kinds", bind=URL)
alpha_text = c2.text_input("Alphas (noise norm / ‖target‖)", ", ".join(f"{a:g}" for a in PAPER_ALPHAS),
                           key="noise_alphas", bind=URL, help="Comma-separated numbers >= 0; the paper's grid is the default.")
c3, c4, c5 = st.columns([1, 2, 1])
draws = int(c3.number_input("Draws per alpha", 1, MAX_DRAWS, 8, key="noise_draws", bind=URL,
                            disabled=protocol == "authors", help="The seed paper's protocol: one."))
draws = 1 if protocol == "authors" else draws
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
settings = NoiseSettings(kinds=tuple(kinds), alphas=alphas, draws=draws, target=target, seed=seed, protocol=protocol)
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
count = metric_count()
df = counted_table(df, count)
summary = summarize_noise(df)
over = "draws" if len(entries) == 1 else f"draws and {len(entries)} entries"
notes = [f"Lines: mean over {over}; shaded band: min to max of the same rows.",
         f"Counted over {COUNT_LABELS[count]} (sidebar)."]
if target != "e":
    notes.append("The paper's numbers are for noise on e only.")
if count != PAPER_COUNT:
    notes.append("The paper's curve is counted over N + 1 positions, e's BOS prediction included: choose that count "
                 "in the sidebar to compare like with like.")
if protocol != "authors":
    notes.append("The paper's curve is one draw per text and alpha in fresh directions: choose the seed paper's "
                 "protocol to match it.")
st.caption(" ".join(notes))
accuracy_fig, prefix_fig = accuracy_figure(summary), prefix_figure(summary)
left, right = st.columns(2)
left.plotly_chart(accuracy_fig, key="noise_accuracy")
right.plotly_chart(prefix_fig, key="noise_prefix")

if len(entries) > 1:
    st.subheader("Entry by entry")
    curves = entry_curves(df, entries)
    st.caption("Noise tolerance varies widely between entries, so a single entry's curve says little. One line per "
               "entry (mean over types and draws), labelled with the loss its fit ended at: a fit that went on past "
               "the threshold (sidebar: Keep optimising after the threshold) ends lower.")
    entries_fig = entries_figure(curves, {entry.key: entry_label(entry) for entry in entries})
    st.plotly_chart(entries_fig, key="noise_entries_curves")

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
            f"accuracy {row['accuracy']:.3f}, correct prefix {row['correct_prefix']} / {row['n_tokens']} "
            f"({'N + 1 positions' if row['n_tokens'] > shown.n_tokens else 'text positions'}); "
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
    download_report(lambda publication: entry_report(lm, entries[0], cache, publication=publication, count=count),
                    f"report-{entries[0].key[:12]}.html", key="noise_dl_report")
