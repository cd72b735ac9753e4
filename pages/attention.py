"""Attention: where does the model look at the e-token? (docs/science.md, B.3)

Thin page: widgets, calls into core.analyses.attention, plotly figures. Every number comes from one cached
AttentionResult per entry; a single head's full map is computed only when asked.
"""

from __future__ import annotations

import streamlit as st

from core.analyses.attention import (
    HEAD_AGGREGATES,
    VIEWS,
    AttentionUnavailable,
    run_attention,
    head_map,
)
from core.figures.attention import (
    MAX_ANNOTATED_LAYERS,
    POSITION_TITLE,
    SOURCE_LABELS,
    TRIVIAL_NOTE,
    VALUE_NAMES,
    VIEW_LABELS,
    column_notes,
    cell_hover,
    colour,
    comparable,
    figure_token,
    head_map_figure,
    heatmap,
    hover_fields,
    layer_position_figure,
    position_axis,
)
from core.engine.reconstruct import stored_count
from ui.state import entry_selector, get_cache, get_model, metric_count, require_app_shell
from core.figures import visible_token
from core.report import entry_report
from ui.widgets import URL, download_csv, download_figure, download_report, show_error

require_app_shell()  # first: a page opened by its URL on a fresh server runs inside app.py





# ---- the page ------------------------------------------------------------------------------------


st.title("Attention")
st.markdown(
    "Each query position of the one-pass reconstruction can look back at the e-token (key 0). The heatmaps show "
    "how much it does, per layer, head and position, from one forward pass with eager attention. Ordinary first "
    "tokens are *attention sinks* (they draw much attention whatever they say), so the same text fed as plain "
    "tokens is shown as a baseline: its attention to its own first token."
)

lm = get_model()
if lm is None:
    st.stop()
entry = entry_selector(lm, key="attention_entry")
if entry is None:
    st.stop()
cache = get_cache()
try:
    with st.spinner("Computing attention (two eager forward passes, cached afterwards) ..."):
        result = run_attention(lm, entry, cache)  # a cache that cannot keep it warns in the sidebar
except AttentionUnavailable as exc:
    show_error(f"Attention weights are not available. {exc}", exc)
    st.stop()
except ValueError as exc:  # vectors of another width: the entry belongs to another model
    show_error(exc, exc)
    st.stop()

n, layers, heads = result.n_tokens, result.num_layers, result.num_heads
origin = "from the cache" if result.from_cache else f"computed in {result.seconds:.1f} s"
counted = stored_count(entry.metrics, entry.n_tokens, metric_count())
st.caption(f"{n} tokens, layout {result.layout}, accuracy {counted.accuracy:.3f}"
           + (" over N + 1, e's BOS prediction included" if counted.count == "bos" else "") + "; "
           f"{layers} layers × {heads} heads; {origin}. Columns are aligned on the token each query predicts "
           "(`k:token`); for the baseline that is the query one position earlier, so column 0 has none. Cells whose "
           f"query {TRIVIAL_NOTE} are marked in the hover, left out of the colour range and of the means, and "
           "blank in the difference.")

col_view, col_heads = st.columns([3, 1])
view = col_view.radio("Show", VIEWS, format_func=VIEW_LABELS.get, horizontal=True, key="attention_view", bind=URL)
how = col_heads.radio("Over heads", HEAD_AGGREGATES, horizontal=True, key="attention_heads", bind=URL,
                      help="Mean or max over heads in the layer × position heatmap.")

labels = result.labels(figure_token)
trivial = result.trivial(view).numpy()
notes = column_notes(result, view, trivial)
value_name = VALUE_NAMES[view]
hover_value = cell_hover(view)

# Layer x position, over heads: the paper's figures 1 and 2.
fig_layers = layer_position_figure(result, view, how)
st.plotly_chart(fig_layers, key="attention_fig_layers")

# One layer: head x position, the paper's figure 3.
layer = st.slider("Layer", 0, layers - 1, layers // 2, key="attention_layer", bind=URL)
by_head = comparable(result.view(view)[layer].numpy(), view, trivial)  # [head, N]
sides = [result.view(s)[layer].numpy() for s in ("proto", "baseline")] if view == "difference" else []
fig_heads = heatmap(
    by_head, labels, list(range(heads)), customdata=hover_fields(notes, heads, *sides),
    hover=f"layer {layer} · head %{{y}} · predicts %{{x}}<br>" + hover_value + "<br>%{customdata[0]}",
    title=f"{VIEW_LABELS[view]}: heads × position in layer {layer}", x_title=POSITION_TITLE, y_title="head",
    height=max(260, 26 * heads + 170), colours=colour(by_head, view, trivial), x_axis=position_axis(labels))
st.plotly_chart(fig_heads, key="attention_fig_heads")

# Layer x head grid, transposed (layers across) so 30 layers x 9 heads fits the page's width.
grid = result.over_positions(view).numpy().T  # [head, layer]
fig_grid = heatmap(
    grid, list(range(layers)), list(range(heads)),
    hover="layer %{x} · head %{y}<br>" + f"mean {value_name} over positions: " + "%{z:.4f}",
    title=f"{VIEW_LABELS[view]}, mean over positions: head × layer", x_title="layer", y_title="head",
    height=max(240, 26 * heads + 130), colours=colour(grid, view), annotate=layers <= MAX_ANNOTATED_LAYERS)
fig_grid.update_xaxes(dtick=1)
st.plotly_chart(fig_grid, key="attention_fig_grid")

st.markdown("**One head: the full query × key map**")
fig_map = None
col_controls, col_map = st.columns([1, 3])
with col_controls:
    map_layer = int(st.number_input("Layer", 0, layers - 1, layer, key="attention_map_layer", bind=URL))
    map_head = int(st.number_input("Head", 0, heads - 1, 0, key="attention_map_head", bind=URL))
    source = st.radio("Inputs", ("proto", "baseline"), format_func=SOURCE_LABELS.get, key="attention_map_source", bind=URL)
    one = head_map(lm, entry, map_layer, map_head, source, cache, compute=False, show=figure_token)
    if one is None and st.button("Compute this head's map", key="attention_map_compute",
                                 help="One more eager forward pass; the whole layer is cached afterwards."):
        with st.spinner("One eager forward pass ..."):
            one = head_map(lm, entry, map_layer, map_head, source, cache, show=figure_token)
        if head_map(lm, entry, map_layer, map_head, source, cache, compute=False, show=figure_token) is not None:
            st.rerun()  # the layer is cached now: redraw without the button
        show_error("Not saved to the cache (see the sidebar): this map is shown once.", warning=True)
with col_map:
    if one is None:
        st.caption("Not computed yet for this layer and input: press the button (one forward pass).")
    else:
        fig_map, top = head_map_figure(one)
        st.plotly_chart(fig_map, key="attention_fig_map")
        st.caption(f"Colour saturates at {top:.3g}, the largest weight off key 0; hover for exact values. "
                   "Blank cells are future keys, hidden by the causal mask.")

# Off by default: a standalone figure embeds plotly.js (~5 MB), too much to rebuild on every rerun.
if st.toggle("Prepare downloads", key="attention_downloads",
             help="The [layer, head, query] array of this view as CSV, each figure as a standalone HTML file."):
    stem = f"attention_{view}_{entry.key[:8]}"
    cols = st.columns(4)
    with cols[0]:
        download_csv(result.long_table(view, visible_token), f"{stem}.csv", "CSV: layer, head, query, token, value",
                     key="attention_dl_csv")
        download_report(lambda publication: entry_report(lm, entry, cache, publication=publication,
                                                         count=metric_count()),
                        f"report-{entry.key[:12]}.html", key="attention_dl_report")
    with cols[1]:
        download_figure(fig_layers, f"{stem}_layer_position.html", "Figure: layer × position",
                        key="attention_dl_layers")
        download_figure(fig_grid, f"{stem}_layer_head.html", "Figure: layer × head", key="attention_dl_grid")
    with cols[2]:
        download_figure(fig_heads, f"{stem}_layer{layer}_heads.html", f"Figure: heads in layer {layer}",
                        key="attention_dl_heads")
    with cols[3]:
        if fig_map is not None:
            download_figure(fig_map, f"{stem}_{source}_L{map_layer}H{map_head}.html", "Figure: one head's map",
                            key="attention_dl_map")
