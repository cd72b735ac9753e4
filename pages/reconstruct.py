"""Reconstruct: fit e and m for a text and watch the one-pass reconstruction converge."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import streamlit as st
from safetensors.torch import save as safetensors_bytes

from core.engine.cache import CacheEntry
from core.engine.fit import lookup
from core.engine.index import ORDERS
from core.engine.models import TextError
from core.engine.reconstruct import Reconstruction, reconstruct, token_metrics
from core.engine.start import steps_saved
from core.figures.reconstruct import curves_figure
from core.report import entry_report
from core.texts.textsets import load_examples
from ui import jobs
from ui.sidebar import presenting
from ui.state import (current_entry, current_entry_key, entry_label, fit_config, forget_entry, get_cache,
                      get_model, is_default_entry, keep_unsaved, metric_count, require_app_shell, set_current_entry,
                      unsaved_reason)
from ui.widgets import download_csv, download_figure, download_json, download_report, plain, show_error, show_tokens

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py

SINGLE, BATCH = "reconstruct-single", "reconstruct-batch"
PAGE_SIZES = (25, 50, 100, 200)  # rows of the Cached entries table


st.title("Reconstruct")
st.caption(
    "Two learned vectors, e and m, fed as [e, m, m, ..., m] make the frozen model rebuild the whole text in "
    "one forward pass. Fit them here and watch the reconstruction converge; green tokens are right, red wrong."
)

lm = get_model()
config = fit_config()
cache = get_cache()
if lm is None or config is None:
    st.stop()
fitted_here: set = st.session_state.setdefault("fitted_here", set())
examples = load_examples()

if "text" not in st.session_state:
    entry = current_entry(cache, lm)  # on a fresh install, the shipped demo entry (ui.state.default_entry)
    st.session_state["text"] = entry.text if entry is not None else examples[0].text
    if entry is not None and (title := next((ex.title for ex in examples if ex.text == entry.text), None)):
        st.session_state["example"] = title  # the demo is an example: the list shows it picked
    # Without a current entry, a cached fit of the prefilled text is shown at once.
    st.session_state["text_changed"] = entry is None


def show_prediction(predicted: list[int], target: list[int], title: str) -> None:
    n = min(len(predicted), len(target))
    show_tokens(lm.token_strings(predicted[:n]), [predicted[i] == target[i] for i in range(n)], title)
    show_tokens(lm.token_strings(target), None, "target")


def keep_outcomes(snap) -> None:
    """A finished fit's entries: marked as fitted here; one the cache could not store is kept in memory."""
    for outcome in snap.outcomes or []:
        if outcome is None:
            continue
        if not outcome.cached:
            fitted_here.add(outcome.entry.key)
        if outcome.unsaved:
            keep_unsaved(outcome.entry, outcome.unsaved)


def finish_single(snap) -> None:
    keep_outcomes(snap)
    outcome = (snap.outcomes or [None])[0]
    if outcome is not None:
        set_current_entry(outcome.entry.key)


def render_live(job, snap) -> None:
    p = snap.progress[0]
    st.progress(min(snap.step / snap.max_steps, 1.0), text=f"Step {snap.step} / {snap.max_steps} · "
                f"accuracy {p.accuracy:.3f} (best {p.best_accuracy:.3f}) · {snap.elapsed:.0f} s")
    if p.curve_step:
        st.plotly_chart(curves_figure(p.curve_step, p.curve_loss, p.curve_accuracy, config.threshold),
                        key="live_curves")
    if p.predictions:
        show_prediction(p.predictions, lm.encode(snap.texts[0]), f"one-pass reconstruction at step {p.step}")


def cached_table_key(keys: list[str]) -> str:
    """The cached-entries table's widget key, new whenever the entries change (a delete here, a clear in the
    sidebar, a new fit): a kept selection would otherwise make the row that moved into its place current."""
    return "cached_table_" + hashlib.sha256(" ".join(keys).encode()).hexdigest()[:12]


def newly_picked(table: str, table_key: str, rows: list[int]) -> int | None:
    """The row just selected in a table, once: a selection that stays makes its entry current only when it is
    made, so it never overrides a later choice elsewhere (or brings back an entry deleted since)."""
    row = rows[0] if rows else None
    seen = st.session_state.get(f"{table}::seen")
    st.session_state[f"{table}::seen"] = (table_key, row)
    return row if row is not None and (table_key, row) != seen else None


# ---- input -----------------------------------------------------------------------------------------
tab_one, tab_batch, tab_cached = st.tabs(["One text", "Batch", "Cached entries"])

with tab_one:
    titles = [ex.title for ex in examples]
    fitting = []  # the examples this model can fit (a small model's context may not hold the longest)
    for ex in examples:
        try:
            lm.validate_text(ex.text, config.layout)
            fitting.append(ex)
        except TextError:
            pass
    # Which of them are cached with these settings (on a fresh install: pre-fitted, shipped).
    fitted_examples = {ex.title: entry for ex, entry in zip(fitting, lookup(lm, [ex.text for ex in fitting],
                                                                          config, cache)) if entry is not None}

    def example_label(title: str) -> str:
        entry = fitted_examples.get(title)
        return title if entry is None else f"{title} · fitted, accuracy {entry.metrics.get('accuracy', 0):.2f}"

    def use_example():
        chosen = st.session_state["example"]
        st.session_state["text"] = next(ex.text for ex in examples if ex.title == chosen)
        st.session_state["text_changed"] = True

    st.selectbox("Example", titles, index=None, placeholder="Pick an example text ...", key="example",
                 on_change=use_example, format_func=example_label,
                 help="Examples marked fitted are cached with the sidebar's settings (on a fresh install, pre-fitted "
                      "and shipped): picking one shows its fit at once.")
    text = st.text_area("Text", key="text", height=120,
                        on_change=lambda: st.session_state.update(text_changed=True))
    running = jobs.is_running(SINGLE)
    entry_for_text = None
    try:
        n_tokens = len(lm.validate_text(text, config.layout))
        if not presenting():  # about the controls, which presentation mode hides
            st.caption(f"{n_tokens} tokens of at most {lm.max_text_tokens(config.layout):,} for this model "
                       f"(preset {config.preset}, up to {config.max_steps} steps)")
        entry_for_text = lookup(lm, [text], config, cache)[0]
        text_ok = True
    except TextError as exc:
        show_error(exc, exc)
        text_ok = False

    buttons = st.container(horizontal=True)  # side by side at their own width, a small gap between them
    fit_clicked = buttons.button("Fit", type="primary", disabled=running or not text_ok)
    refit_clicked = buttons.button("Refit", disabled=running or entry_for_text is None,
                                   help="Fit again even though this text is cached with these settings")
    if running and buttons.button("Stop", help="Stop now and keep the best vectors so far"):
        jobs.get_job(SINGLE).cancel()
    if (fit_clicked or refit_clicked) and text_ok:
        # An unwritable cache stops it here, with one line saying why.
        running = jobs.start_job(SINGLE, lm, [text], config, cache, refit=refit_clicked) is not None
    if is_default_entry() and not running and entry_for_text is None and not presenting():
        st.caption("Below: a pre-fitted example shipped with the lab. **Fit** fits this text with your settings in "
                   "the sidebar; or type your own text, or pick an example.")
    jobs.poll(SINGLE, render_live, finish_single)
    jobs.show_outcome(SINGLE, unsaved=False)  # an unsaved entry says so in its own view below
    if st.session_state.pop("text_changed", False) and entry_for_text is not None:
        set_current_entry(entry_for_text.key)  # a text fitted before shows its result at once

with tab_batch:
    batch_text = st.text_area("Texts, one per line", key="batch_text", height=150,
                              placeholder="The first text\nThe second text")
    lines = [line for line in batch_text.splitlines() if line.strip()]
    batch_running = jobs.is_running(BATCH)
    if st.button("Fit all", type="primary", disabled=batch_running or not lines, key="fit_batch"):
        try:
            for i, line in enumerate(lines, 1):
                try:
                    lm.validate_text(line, config.layout)
                except TextError as exc:
                    raise TextError(f"Line {i}: {exc}") from None
            jobs.start_job(BATCH, lm, lines, config, cache)
        except TextError as exc:
            show_error(exc, exc)
    job = jobs.get_job(BATCH)
    if job is not None:
        jobs.poll(BATCH, jobs.render_set_progress, keep_outcomes)
        jobs.show_outcome(BATCH)
        snap = job.snapshot()
        if snap.finished and snap.outcomes:
            done = [o for o in snap.outcomes if o is not None]
            table = pd.DataFrame([{
                "text": o.entry.text, "tokens": o.entry.n_tokens, "accuracy": o.entry.metrics.get("accuracy"),
                "steps": o.entry.metrics.get("steps"),
                "status": "cached" if o.cached else "not saved" if o.unsaved else o.entry.metrics.get("status"),
            } for o in done])
            st.caption("Select a row to open it in the view below.")
            picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                                  key="batch_table", width="stretch")
            rows = [r for r in (picked.selection.rows if picked else []) if r < len(done)]
            row = newly_picked("batch_table", str(id(job)), rows)
            if row is not None and done[row].entry.key != current_entry_key():
                set_current_entry(done[row].entry.key)

def _first_page() -> None:
    st.session_state["cached_page"] = 1


with tab_cached:
    c_search, c_order, c_size = st.columns([4, 2, 1])
    search = c_search.text_input("Search", key="cached_search", on_change=_first_page,
                                 placeholder="Words of the text, or the first characters of a key")
    order = c_order.selectbox("Order", list(ORDERS), key="cached_order", on_change=_first_page)
    page_size = c_size.selectbox("Per page", PAGE_SIZES, index=1, key="cached_page_size", on_change=_first_page)
    page = max(1, int(st.session_state.get("cached_page", 1)))
    metas, total = cache.page(lm.identity, search, order, offset=(page - 1) * page_size, limit=page_size)
    n_pages = max(1, -(-total // page_size))
    if page > n_pages:  # the entries shrank (a delete, a clear, a narrower search): show the last page
        page = n_pages
        metas, total = cache.page(lm.identity, search, order, offset=(page - 1) * page_size, limit=page_size)
    if not total:
        st.info(plain(f"No cached entry of this model contains {search.strip()!r}.") if search.strip() else
                "Nothing cached for this model yet.")
    else:
        table = pd.DataFrame([{
            "text": m.text, "tokens": m.n_tokens, "accuracy": m.accuracy,
            "steps": m.metrics.get("steps"), "status": m.metrics.get("status"),
            "preset": m.config.get("preset"), "layout": m.config.get("layout"),
            "created": pd.to_datetime(m.created, unit="s").strftime("%Y-%m-%d %H:%M"),
            "key": m.key[:12],
        } for m in metas])
        first = (page - 1) * page_size + 1
        st.caption(f"Entries {first:,}-{first + len(metas) - 1:,} of {total:,}"
                   + (" matching the search" if search.strip() else "")
                   + ". Select a row to make it the current entry (the other pages analyse it).")
        table_key = cached_table_key([m.key for m in metas])
        picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                              key=table_key, width="stretch")
        rows = [r for r in (picked.selection.rows if picked else []) if r < len(metas)]
        if newly_picked("cached_table", table_key, rows) is not None and metas[rows[0]].key != current_entry_key():
            set_current_entry(metas[rows[0]].key)
        c_page, c_delete = st.columns([1, 3])
        if n_pages > 1:
            st.session_state["cached_page"] = page
            c_page.number_input(f"Page (of {n_pages:,})", 1, n_pages, key="cached_page")
        if rows:
            chosen = metas[rows[0]].key
            if metas[rows[0]].shipped:
                c_delete.caption("Pre-fitted entries ship with the project and cannot be deleted here.")
            elif c_delete.button("Delete the selected entry", key="delete_entry"):
                cache.delete(chosen)
                forget_entry(chosen)  # not current any more, and out of the URL: a reload does not bring it back
                fitted_here.discard(chosen)
                st.rerun()


# ---- the current entry ---------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=256)
def _reconstruction(key: str, created: float, model: str, _entry: CacheEntry) -> Reconstruction:
    """The stored vectors' one-pass reconstruction, computed once per entry and process: reruns and new
    sessions (a shared link) show an entry without a forward pass. A refit stores the key anew (new created)."""
    return reconstruct(lm, _entry.e, _entry.m, _entry.token_ids, _entry.layout)


def show_start(entry: CacheEntry, start: dict) -> None:
    """Where a fit with a learned start (FitConfig.start) began: the one pass from there, and the steps it saved."""
    source = (f"the fitted vectors of the cached text \u201c{start.get('text')}\u201d (teacher similarity "
              f"{start.get('similarity')})" if start.get("kind") == "nearest" else f"{start.get('text')}")
    saved = steps_saved(cache, entry.model, entry.n_tokens, int(entry.metrics.get("steps") or 0),
                        entry.config.get("preset"), entry.layout)
    if saved.draw_median is None:
        against = "no cached text of about its length was fitted from a draw with this preset to compare with"
    else:
        outcome = (f"so the start saved about {saved.saved:.0f}" if saved.saved >= 0
                   else f"so this fit took about {-saved.saved:.0f} more")
        against = (f"{saved.n_compared} cached texts of about its length fitted from a random draw with this preset "
                   f"took a median of {saved.draw_median:.0f} steps, {outcome}")
    st.caption(plain(f"Learned start: the fit began from {source}, not a random draw. It took {saved.steps} steps; "
                     f"{against}."))
    first = entry.snapshots[0] if entry.snapshots and entry.snapshots[0].get("step") == 0 else None
    if first is not None:
        tokens, target = first["tokens"][: len(entry.token_ids)], entry.token_ids
        acc = token_metrics(tokens, target).accuracy
        show_tokens(lm.token_strings(tokens), [t == target[i] for i, t in enumerate(tokens)],
                    f"one pass from the start, before any step: accuracy {acc:.3f}")


def show_entry(entry: CacheEntry) -> None:
    metrics = entry.metrics
    unsaved = unsaved_reason(entry.key)
    shipped = cache.shipped is not None and not (cache.entries_dir / f"{entry.key}.json").exists()
    origin = ("fitted in this session, not saved" if unsaved else
              "fitted in this session" if entry.key in fitted_here else
              "pre-fitted example, shipped with the lab" if shipped and is_default_entry(entry.key) else
              "pre-fitted, shipped with the lab" if shipped else "from the cache")
    st.subheader("Current entry")
    st.caption(plain(f"{entry_label(entry)} · {origin} · preset {entry.config.get('preset')} · "
                     f"layout {entry.layout}"))
    if unsaved:
        st.warning(plain(f"Not saved to the cache: {unsaved}; download e and m below."),
                   icon=":material/save:")
    rec = _reconstruction(entry.key, entry.created, lm.identity, entry)
    if metrics.get("status") not in (None, "converged"):
        st.warning(plain(metrics.get("message") or f"Status: {metrics.get('status')}"))
    count = metric_count()
    shown = rec.counted(count)
    over = (f"over {shown.n_tokens} positions: e's output {'is' if rec.bos_correct else 'is not'} the BOS token"
            if shown is not rec.metrics else f"over the {shown.n_tokens} text positions")
    if count == "bos" and rec.bos_correct is None:
        over += f" ({lm.name}'s tokenizer has no BOS token, or the layout scores e already: both counts agree)"
    cols = st.columns(6)
    cols[0].metric("Token accuracy", f"{shown.accuracy:.3f}", help=f"Counted {over}.")
    cols[1].metric("Steps", metrics.get("steps"))
    cols[2].metric("Wall time", f"{metrics.get('wall_time', 0):.1f} s")
    cols[3].metric("Correct prefix", f"{shown.correct_prefix} / {shown.n_tokens}",
                   f"{shown.correct_prefix_rel:.0%}", delta_color="off")
    cols[4].metric("‖e‖", f"{float(entry.e.norm()):.2f}")
    cols[5].metric("‖m‖", f"{float(entry.m.norm()):.2f}")
    st.caption(plain(f"Accuracy and prefix counted {over} (sidebar: Count accuracy and prefix over)."
                     + (f" Final loss {metrics['loss']:.3f}." if metrics.get("loss") is not None else "")))
    if redraws := metrics.get("redraws"):
        st.caption(f"Started over from a new init {redraws} time{'s' if redraws > 1 else ''}: the loss was still "
                   "too high after the steps set in *Fit settings* (a stuck draw), so the curves "
                   "jump back up there.")
    if start := metrics.get("start"):
        show_start(entry, start)
    show_prediction(rec.token_ids, entry.token_ids, "one-pass reconstruction from the stored e and m")
    st.markdown("**Decoded**")
    # As code, never as Markdown: the decoded text is model output about a user's text. Escapes make newlines
    # and other invisible characters visible.
    st.code(json.dumps(rec.text, ensure_ascii=False)[1:-1], language=None, wrap_lines=True)

    snapshots = entry.snapshots
    if len(snapshots) > 1:
        steps = [s["step"] for s in snapshots]
        chosen = st.select_slider("Replay: reconstruction at step", steps, value=steps[-1], key=f"replay_{entry.key}")
        snap = snapshots[steps.index(chosen)]
        acc = token_metrics(snap["tokens"], entry.token_ids).accuracy
        show_prediction(snap["tokens"], entry.token_ids, f"step {chosen}: accuracy {acc:.3f}")
    history = entry.history
    curves = None
    if history.get("step"):
        curves = curves_figure(history["step"], history["loss"], history["accuracy"],
                               entry.config.get("threshold", 0.99))
        st.plotly_chart(curves, key="entry_curves")
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.download_button("e and m (safetensors)", safetensors_bytes({"e": entry.e, "m": entry.m}),
                       f"prototokens-{entry.key[:12]}.safetensors", "application/octet-stream")
    with c2:
        download_json({k: v for k, v in entry.meta().items() if k != "snapshots"},
                      f"prototokens-{entry.key[:12]}.json", "Metrics and history (JSON)")
    with c3:
        download_csv(pd.DataFrame(history), f"history-{entry.key[:12]}.csv", "History (CSV)")
    if curves is not None:
        with c4:
            download_figure(curves, f"fit-curves-{entry.key[:12]}.html", "Curves figure", key="dl_entry_curves")
    if not unsaved:
        with c5:
            download_report(lambda publication: entry_report(lm, entry, cache, publication=publication, count=count),
                            f"report-{entry.key[:12]}.html", key="dl_entry_report")


if not jobs.is_running(SINGLE):
    entry = current_entry(cache, lm)
    if entry is not None and entry.model != lm.identity:
        st.info("The current entry was fitted with another model; choose that model in the sidebar to see it.")
    elif entry is not None:
        st.divider()
        show_entry(entry)
    else:
        st.info("Press **Fit** to find e and m for this text. The **fast** preset in the sidebar converges "
                "sooner; **first paper** and **seed paper's code** are the two papers' own recipes.")
