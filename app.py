"""Proto-token lab: the dashboard's entry point (``streamlit run app.py``)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st

from ui.sidebar import render_sidebar

st.set_page_config(page_title="Proto-token lab", page_icon=":material/token:", layout="wide")

HERE = os.path.dirname(os.path.abspath(__file__))
PAGES = [  # (file, title, icon)
    ("pages/reconstruct.py", "Reconstruct", ":material/auto_fix_high:"),
    ("pages/noise.py", "Noise", ":material/grain:"),
    ("pages/attention.py", "Attention", ":material/visibility:"),
    ("pages/embeddings.py", "Embeddings", ":material/scatter_plot:"),
    ("pages/regularisers.py", "Regularisers", ":material/tune:"),
]
navigation = st.navigation([
    st.Page(path, title=title, icon=icon, default=(i == 0))
    for i, (path, title, icon) in enumerate(PAGES) if os.path.exists(os.path.join(HERE, path))
])
render_sidebar()
navigation.run()
