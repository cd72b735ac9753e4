"""Streamlit glue shared by the pages: sidebar state, model loading, cache access, small widgets.

Everything that computes lives in ``core``; this package only turns session state into calls.
"""
