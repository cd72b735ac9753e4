"""Proto-token lab: the dashboard's entry point (``streamlit run app.py``)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st

from ui.sidebar import presentation_mode, presenting, render_sidebar, show_cache_warnings
from ui.state import begin_run, check_url_entry

st.set_page_config(page_title="Proto-token lab", page_icon=":material/token:", layout="wide")

PAGES = [
    st.Page("pages/reconstruct.py", title="Reconstruct", icon=":material/auto_fix_high:", default=True),
    st.Page("pages/noise.py", title="Noise", icon=":material/grain:"),
    st.Page("pages/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("pages/regularisers.py", title="Regularisers", icon=":material/tune:"),
    st.Page("pages/capacity.py", title="Capacity", icon=":material/straighten:"),
    st.Page("pages/geometry.py", title="Geometry", icon=":material/timeline:"),
]
navigation = st.navigation(PAGES, position="top" if presenting() else "sidebar")
begin_run()
warnings_box = render_sidebar()
presentation_mode()
check_url_entry()  # a link's ?entry= becomes the current entry only if it is a readable entry of this model
try:
    navigation.run()
finally:  # also after st.stop(): the page's own reads may have met unreadable files
    show_cache_warnings(warnings_box)
