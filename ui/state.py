"""Session state shared by every page: the chosen model, fit settings, the cache and the current entry."""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from core.engine.cache import SHIPPED_ROOT, CacheEntry, EntryListing, ProtoCache, is_valid_key
from core.engine.fit import UI_PRESETS, FitConfig, FitError, preset
from core.engine.models import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model
from core.shipped.demo import demo_entry
from ui.widgets import plain, show_error

# Tests and offline demos point the app at another default model or cache through the environment.
DEFAULT_MODEL_NAME = os.environ.get("PROTOTOKENS_MODEL", DEFAULT_MODEL)
ENTRY_PARAM = "entry"
ENTRY_STATE = "current_entry"  # session key of the current entry's key
DEFAULT_STATE = "_default_entry"  # the current entry's key while it is the default one (nobody chose it)
_DEFAULT_CHOICE = "_default_entry_of"  # (model, cache roots) -> the default entry's key, found once per session
UNSAVED_STATE = "unsaved_entries"
_RUN_CACHE = "_run_cache"


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
        with st.spinner(f"Loading {plain(choice.name)} ..."):
            return _load(choice.name, choice.device, choice.dtype)
    except ModelLoadError as exc:
        show_error(f"Model not available. {exc}", exc)
        return None


def _loaded_model() -> LoadedModel | None:
    """The sidebar's model when it loads, without drawing anything (None when it does not)."""
    choice = model_choice()
    try:
        return _load(choice.name, choice.device, choice.dtype)
    except ModelLoadError:
        return None


def begin_run() -> None:
    """Called first in every run of app.py: the pages of this run share one cache object (see get_cache)."""
    st.session_state.pop(_RUN_CACHE, None)


def get_cache() -> ProtoCache:
    """The cache, one object per script run: the warnings every page meets (unreadable files) reach the sidebar,
    which shows them at the end of the run (ui.sidebar.show_cache_warnings)."""
    root = os.environ.get("PROTOTOKENS_CACHE") or None
    shipped = os.environ.get("PROTOTOKENS_SHIPPED") or SHIPPED_ROOT  # as core.engine.cache.ProtoCache reads it
    ident = (root, str(shipped))
    held = st.session_state.get(_RUN_CACHE)
    if held is None or held[0] != ident:
        held = (ident, ProtoCache(root, shipped=shipped))
        st.session_state[_RUN_CACHE] = held
    return held[1]


def fit_config() -> FitConfig | None:
    """The FitConfig the sidebar describes (None, with an error shown, if its values are invalid)."""
    overrides = st.session_state.get("fit_overrides", {})
    try:
        return preset(st.session_state.get("preset", UI_PRESETS[0]), **overrides)
    except (FitError, ValueError) as exc:
        show_error(f"Invalid fit settings: {exc}", exc)
        return None


# ---- the current entry ---------------------------------------------------------------------------------
# Every page reads and writes it through these functions only. The session holds its key; the URL
# (?entry=<key>) carries it to a new session, where check_url_entry() adopts it only when it names a readable
# entry of the sidebar's model. While neither the user nor a link has chosen one, the current entry is the
# model's shipped demo entry (default_entry): every page opens on a result, and the URL stays clean.

COUNT_KEY = "count"  # the sidebar's choice of core.engine.reconstruct.COUNTS


def metric_count() -> str:
    """How the pages count accuracy and the correct prefix (core.engine.reconstruct.COUNTS): the sidebar's choice."""
    return st.session_state.get(COUNT_KEY) or "text"


def current_entry_key() -> str | None:
    """The key of the current entry (always a well-formed cache key), or None."""
    key = st.session_state.get(ENTRY_STATE)
    return key if is_valid_key(key) else None


def set_current_entry(key: str | None) -> None:
    """Make an entry the one every analysis page shows; kept in the URL so a link reopens it (not an entry
    that only lives in this session because the cache could not store it: a link to it would open nothing)."""
    key = key if is_valid_key(key) else None
    st.session_state[ENTRY_STATE] = key
    st.session_state.pop(DEFAULT_STATE, None)  # chosen now, not the default any more
    if key and key not in unsaved_entries():
        st.query_params[ENTRY_PARAM] = key
    elif ENTRY_PARAM in st.query_params:
        del st.query_params[ENTRY_PARAM]


def forget_entry(key: str) -> None:
    """An entry was deleted: it stops being current (and leaves the URL) and leaves the session's memory."""
    unsaved_entries().pop(key, None)
    if current_entry_key() == key or st.query_params.get(ENTRY_PARAM) == key:
        set_current_entry(None)


def unsaved_entries() -> dict[str, tuple[CacheEntry, str]]:
    """Entries fitted in this session that the cache could not store: key -> (entry, why)."""
    return st.session_state.setdefault(UNSAVED_STATE, {})


def keep_unsaved(entry: CacheEntry, reason: str) -> None:
    """Hold an entry whose write failed (core.engine.fit.CachedFit.unsaved) for this session, so it can be shown
    and downloaded."""
    unsaved_entries()[entry.key] = (entry, reason)


def unsaved_reason(key: str | None) -> str | None:
    held = unsaved_entries().get(key) if key else None
    return held[1] if held else None


def _fits_model(entry: CacheEntry, lm: LoadedModel) -> bool:
    return entry.model == lm.identity


def default_entry(lm: LoadedModel, cache: ProtoCache) -> str | None:
    """The key of the entry the pages show while nobody has chosen one: the shipped demo entry of lm
    (core.shipped.demo.demo_entry: core.shipped.demo.DEMO_TEXT, else the first converged shipped entry), or None when
    nothing ships for lm (the tiny model). Found once per session, model and cache."""
    shipped = cache.shipped.root if cache.shipped is not None else None
    ident = (lm.identity, str(cache.root), str(shipped))
    held = st.session_state.get(_DEFAULT_CHOICE)
    if held is None or held[0] != ident:
        entry = demo_entry(lm.identity, cache, lm.hidden_size, root=shipped) if shipped is not None else None
        held = (ident, entry.key if entry is not None else None)
        st.session_state[_DEFAULT_CHOICE] = held
    return held[1]


def is_default_entry(key: str | None = None) -> bool:
    """Whether the current entry (or ``key``, when it is the current one) is the default: shown because nothing
    was chosen, not in the URL."""
    current = current_entry_key()
    return current is not None and (key is None or key == current) and st.session_state.get(DEFAULT_STATE) == current


def _chosen() -> bool:
    """Whether the session has a current entry that the user (or a link) chose."""
    return current_entry_key() is not None and not is_default_entry()


def _show_default_entry() -> None:
    """Nothing chosen: make the sidebar model's default entry current, in the session only (never the URL)."""
    lm = _loaded_model()
    if lm is None:
        return
    key = default_entry(lm, get_cache())
    st.session_state[ENTRY_STATE] = key
    if key is None:
        st.session_state.pop(DEFAULT_STATE, None)
    else:
        st.session_state[DEFAULT_STATE] = key


def check_url_entry() -> None:
    """Adopt ``?entry=`` as the current entry when the session has none chosen and it names a readable entry of
    the sidebar's model; otherwise show why in one line. Then, with still nothing chosen, the default entry of
    the sidebar's model (default_entry) is current. Called by app.py before the page runs.

    A malformed key (not 64 hex characters), an unknown or unreadable entry leaves the URL; an entry of another
    model stays in it, so choosing that model in the sidebar opens it.
    """
    if _chosen():
        return
    _adopt_url_entry()
    if not _chosen():
        _show_default_entry()


def _adopt_url_entry() -> None:
    if ENTRY_PARAM not in st.query_params:
        return
    raw = st.query_params.get(ENTRY_PARAM) or ""
    if not raw:
        del st.query_params[ENTRY_PARAM]
        return
    lm = _loaded_model()
    if lm is None:
        return  # the sidebar says why the model is missing; the link is tried again once it loads
    cache = get_cache()
    drop = True
    if not is_valid_key(raw):
        shown = raw if len(raw) <= 24 else raw[:21] + "..."
        notice = f"The link names no entry: {shown!r} is not a cache key (64 hexadecimal characters)."
    else:
        entry = cache.get(raw)
        if entry is not None and not _fits_model(entry, lm):
            name = entry.model_name or "another model"
            notice = (f"The linked entry {raw[:12]} was fitted with {name}, not {lm.name}: choose that model in "
                      "the sidebar to open it.")
            drop = False
        elif entry is not None and cache.get(raw, lm.hidden_size) is not None:
            set_current_entry(raw)
            return
        elif entry is not None:
            notice = f"The linked entry {raw[:12]} does not fit {lm.name} (see the warning in the sidebar)."
        else:
            notice = f"The linked entry {raw[:12]} is not in this cache (deleted, unreadable, or fitted elsewhere)."
    st.warning(plain(notice), icon=":material/link_off:")
    if drop:
        del st.query_params[ENTRY_PARAM]


def current_entry(cache: ProtoCache | None = None, lm: LoadedModel | None = None) -> CacheEntry | None:
    """The current entry: held in memory when the cache could not store it, else read from the cache (with
    ``lm``, an entry of that model whose vectors have another width is refused). An entry of another model is
    returned as it is: the caller says so."""
    key = current_entry_key()
    if key is None:
        return None
    held = unsaved_entries().get(key)
    if held is not None:
        return held[0]
    cache = cache or get_cache()
    entry = cache.get(key)
    if entry is not None and lm is not None and _fits_model(entry, lm) and entry.e.shape[0] != lm.hidden_size:
        entry = cache.get(key, lm.hidden_size)  # None, with a warning naming the file
    return entry


def entry_label(entry: CacheEntry | EntryListing) -> str:
    """A one-line label of an entry (plain text: for selectbox and multiselect options, which Streamlit does not
    read as Markdown; pass it through ui.widgets.plain for anything that is)."""
    text = " ".join(str(entry.text).split())
    text = text if len(text) <= 70 else text[:67] + "..."
    accuracy = entry.metrics.get("accuracy")
    accuracy = f"{accuracy:.2f}" if isinstance(accuracy, (int, float)) else "?"
    return f"{text}  [{accuracy}, {len(entry.token_ids)} tok, {entry.key[:6]}]"


def entry_selector(lm: LoadedModel, label: str = "Entry", key: str = "entry_selector") -> CacheEntry | None:
    """A selectbox over the cached entries of the current model, defaulting to the current entry.

    Choosing another entry makes it the current one. Returns None (with a hint) when nothing is cached.
    """
    cache = get_cache()
    metas = cache.list(lm.identity)
    if not metas:
        st.info("Nothing fitted yet for this model. Fit a text on the Reconstruct page first.")
        return None
    keys = [m.key for m in metas]
    labels = {m.key: entry_label(m) for m in metas}
    current = current_entry_key()
    index = keys.index(current) if current in keys else 0
    chosen = st.selectbox(label, keys, index=index, format_func=labels.get, key=key)
    if chosen != current:
        set_current_entry(chosen)
    entry = cache.get(chosen, lm.hidden_size)
    if entry is None:
        st.warning(plain(f"Entry {chosen[:12]} cannot be read (see the warning in the sidebar)."))
    return entry


def entries_multiselect(lm: LoadedModel, label: str = "Entries", key: str = "entries_multiselect") -> list[CacheEntry]:
    """Several cached entries of the current model (default: the current entry)."""
    cache = get_cache()
    metas = cache.list(lm.identity)
    labels = {m.key: entry_label(m) for m in metas}
    current = current_entry_key()
    default = [current] if current in labels else [m.key for m in metas[:1]]
    chosen = st.multiselect(label, list(labels), default=default, format_func=labels.get, key=key)
    return [e for e in (cache.get(k, lm.hidden_size) for k in chosen) if e is not None]


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
