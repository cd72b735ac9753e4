"""Session state shared by every page: the chosen model, fit settings, the cache and the current entry."""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from core.cache import SHIPPED_ROOT, CacheEntry, ProtoCache
from core.fit import FitConfig, FitError, preset
from core.models import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model

# Tests and offline demos point the app at another default model or cache through the environment.
DEFAULT_MODEL_NAME = os.environ.get("PROTOTOKENS_MODEL", DEFAULT_MODEL)
ENTRY_PARAM = "entry"


@dataclass(frozen=True)
class ModelChoice:
    name: str
    device: str
    dtype: str | None


def model_choice() -> ModelChoice:
    return ModelChoice(
        name=st.session_state.get("model_name") or DEFAULT_MODEL_NAME,
        device=st.session_state.get("device", "auto"),
        dtype=st.session_state.get("dtype") or None,
    )


@st.cache_resource(show_spinner=False, max_entries=3)
def _load(name: str, device: str, dtype: str | None) -> LoadedModel:
    return load_model(name, device=device, dtype=dtype)


def get_model() -> LoadedModel | None:
    """The sidebar's model, loaded once per process; shows the error and returns None when it fails."""
    choice = model_choice()
    try:
        with st.spinner(f"Loading {choice.name} ..."):
            return _load(choice.name, choice.device, choice.dtype)
    except ModelLoadError as exc:
        st.error(f"Model not available. {exc}")
        return None


def get_cache() -> ProtoCache:
    return ProtoCache(os.environ.get("PROTOTOKENS_CACHE") or None, shipped=SHIPPED_ROOT)


def fit_config() -> FitConfig | None:
    """The FitConfig the sidebar describes (None, with an error shown, if its values are invalid)."""
    overrides = st.session_state.get("fit_overrides", {})
    try:
        return preset(st.session_state.get("preset", "paper"), **overrides)
    except (FitError, ValueError) as exc:
        st.error(f"Invalid fit settings: {exc}")
        return None


def current_entry_key() -> str | None:
    key = st.session_state.get("current_entry")
    if key is None:
        key = st.query_params.get(ENTRY_PARAM)
        if key:
            st.session_state["current_entry"] = key
    return key


def set_current_entry(key: str | None) -> None:
    """Make an entry the one every analysis page shows; kept in the URL so a link reopens it."""
    st.session_state["current_entry"] = key
    if key:
        st.query_params[ENTRY_PARAM] = key
    elif ENTRY_PARAM in st.query_params:
        del st.query_params[ENTRY_PARAM]


def current_entry(cache: ProtoCache | None = None) -> CacheEntry | None:
    key = current_entry_key()
    return (cache or get_cache()).get(key) if key else None


def entry_label(meta: dict) -> str:
    metrics = meta.get("metrics", {})
    text = " ".join(str(meta.get("text", "")).split())
    text = text if len(text) <= 70 else text[:67] + "..."
    return f"{text}  [{metrics.get('accuracy', 0):.2f}, {len(meta.get('token_ids', []))} tok, {meta['key'][:6]}]"


def entry_selector(lm: LoadedModel, label: str = "Entry", key: str = "entry_selector") -> CacheEntry | None:
    """A selectbox over the cached entries of the current model, defaulting to the current entry.

    Choosing another entry makes it the current one. Returns None (with a hint) when nothing is cached.
    """
    cache = get_cache()
    metas = cache.list(lm.identity)
    if not metas:
        st.info("Nothing fitted yet for this model. Fit a text on the Reconstruct page first.")
        return None
    keys = [m["key"] for m in metas]
    labels = {m["key"]: entry_label(m) for m in metas}
    current = current_entry_key()
    index = keys.index(current) if current in keys else 0
    chosen = st.selectbox(label, keys, index=index, format_func=labels.get, key=key)
    if chosen != current:
        set_current_entry(chosen)
    return cache.get(chosen)


def entries_multiselect(lm: LoadedModel, label: str = "Entries", key: str = "entries_multiselect") -> list[CacheEntry]:
    """Several cached entries of the current model (default: the current entry)."""
    cache = get_cache()
    metas = cache.list(lm.identity)
    labels = {m["key"]: entry_label(m) for m in metas}
    current = current_entry_key()
    default = [current] if current in labels else [m["key"] for m in metas[:1]]
    chosen = st.multiselect(label, list(labels), default=default, format_func=labels.get, key=key)
    return [e for e in (cache.get(k) for k in chosen) if e is not None]


def require_app_shell() -> None:
    """Make sure a page runs inside app.py's navigation and sidebar. Call first on every page.

    Streamlit treats a folder named pages/ beside app.py as old-style pages until st.navigation has run once
    in the process: a page opened by its own URL on a fresh server (and every AppTest run) would run alone,
    without the sidebar. Then app.py is run here instead, in this same script run (so a pressed button still
    counts): its st.navigation switches that mode off for good and runs this page inside the shell (both
    page kinds hash the same URL path, so it lands on this page), and the lone run stops.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        import runpy
        from pathlib import Path

        runpy.run_path(str(Path(__file__).resolve().parent.parent / "app.py"), run_name="__main__")
        st.stop()
