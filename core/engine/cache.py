"""Disk cache of fitted proto-tokens and of analyses computed from them.

Layout under the root (default ``cache/``, or ``$PROTOTOKENS_CACHE``)::

    prototokens/<key>.safetensors   tensors e, m: float32 [hidden]
    prototokens/<key>.json          key, model, text, token_ids, config, metrics, history, snapshots
    analyses/<kind>/<key>.json      results derived from entries (noise sweeps, attention, ...)
    analyses/<kind>/<key>.safetensors

The key is a sha256 over the model identity, the token ids and every setting that changes the result.
Writes go to a temporary file first and are renamed into place, so a stop mid-write never leaves a
half-written entry. An unreadable entry is a miss with a warning, never a crash. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float32
from torch import Tensor
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from core.engine.index import INDEX_FILE, open_index
from core.engine.shapes import checked

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "cache"
# Pre-fitted entries of the built-in text sets, shipped with the project (read-only; `python -m core prefit`).
SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "data" / "prefit"
ENTRY_DIR = "prototokens"
# Every key the cache makes is a sha256 hex digest; anything else (from a URL, an upload or a file's own "key"
# field) is refused before it can become part of a path.
KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


class CacheKeyError(ValueError):
    """A key that the cache cannot have made (not 64 lowercase hex characters)."""


def is_valid_key(key: object) -> bool:
    """Whether ``key`` has the form of a key this cache makes (sha256 hex): safe to use as a file name."""
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


def check_key(key: object) -> str:
    if not is_valid_key(key):
        shown = repr(key) if len(repr(key)) <= 40 else repr(key)[:37] + "..."
        raise CacheKeyError(f"{shown} is not a cache key (64 hexadecimal characters).")
    return key  # type: ignore[return-value]


def cache_key(*parts: object) -> str:
    """sha256 over JSON-serialised parts (sorted keys, so dict order never matters)."""
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


# The version of what an entry key hashes (core.engine.fit.KEY_FIELDS says which settings). Bump it only together with
# a migration of the entries already fitted (core.shipped.migrate), the shipped pre-fit included.
ENTRY_SCHEMA = "prototokens-v1"


def entry_key(model_identity: str, token_ids: list[int], config_key: dict, group: str | None = None) -> str:
    """Key of one fitted text. ``group`` names the batch when texts were coupled (shared m, regulariser)."""
    return cache_key(ENTRY_SCHEMA, model_identity, list(map(int, token_ids)), config_key, group)


@checked
@dataclass
class CacheEntry:
    """One fitted text: its vectors and everything needed to show and reproduce it."""

    key: str
    model: str  # model identity
    text: str
    token_ids: list[int]
    config: dict  # FitConfig.as_dict(), "layout" included
    metrics: dict  # accuracy, steps, converged, status, wall_time, ...
    history: dict  # {"step": [...], "loss": [...], "accuracy": [...]}
    e: Float32[Tensor, "hidden"]
    m: Float32[Tensor, "hidden"]
    snapshots: list = field(default_factory=list)  # [{"step", "tokens"}]
    model_name: str = ""
    group: str | None = None
    created: float = 0.0

    @property
    def layout(self) -> str:
        return self.config.get("layout", "e+m*N")

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def meta(self) -> dict:
        return {
            "key": self.key, "model": self.model, "model_name": self.model_name, "text": self.text,
            "token_ids": self.token_ids, "config": self.config, "metrics": self.metrics, "history": self.history,
            "snapshots": self.snapshots, "group": self.group, "created": self.created,
        }


@dataclass(frozen=True)
class EntryListing:
    """One row of :meth:`ProtoCache.list` / :meth:`ProtoCache.page`: an entry's metadata as the cache's index
    (core.engine.index) holds it, without reading its vectors, history or replay snapshots."""

    key: str
    model: str  # model identity
    model_name: str
    text: str
    token_ids: list[int]
    config: dict  # FitConfig.as_dict()
    metrics: dict  # accuracy, steps, converged, status, wall_time, ...
    created: float
    shipped: bool = False  # read from the shipped pre-fit, read-only
    group: str | None = None  # the batch the text was coupled in (shared m, a regulariser)

    @classmethod
    def from_meta(cls, meta: dict, shipped: bool = False) -> "EntryListing":
        return cls(key=meta["key"], model=str(meta.get("model") or ""), model_name=str(meta.get("model_name") or ""),
                   text=meta["text"], token_ids=list(meta["token_ids"]), config=meta["config"],
                   metrics=meta["metrics"], created=_number(meta.get("created")), shipped=shipped,
                   group=meta.get("group"))

    @property
    def meta(self) -> dict:
        """The stored fields that key and describe the entry (what core.shipped.migrate recomputes keys from)."""
        return {"key": self.key, "model": self.model, "model_name": self.model_name, "text": self.text,
                "token_ids": self.token_ids, "config": self.config, "metrics": self.metrics,
                "created": self.created, "group": self.group}

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if isinstance(value, (int, float)) else None


class CacheWriteError(OSError):
    """The cache cannot be written (read-only folder, a file where the folder should be, disk full, ...)."""


# Files are created with the mode the umask gives a new file (mkstemp would make them 0600), so a cache folder
# can be shared between users the way the folder's own permissions say.
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
# A temporary file older than this is left over from a process killed mid-write; younger ones may be in use.
STALE_TMP_AGE_S = 3600.0
TMP_SUFFIX = ".tmp"
_SWEPT_ROOTS: set[Path] = set()  # cache roots whose stale temporary files this process has swept
# Analysis kinds and keys are made by the code (a sha256 hex, or a fixed name such as "default").
ANALYSIS_NAME = re.compile(r"[0-9a-z][0-9a-z_-]{0,127}")
# Fields every entry's JSON carries; an entry without them is not what it claims to be.
REQUIRED_META = {"key": str, "text": str, "token_ids": list, "config": dict, "metrics": dict}


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
    _atomic_write(path, write)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    _atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp))


def read_json(path: Path) -> object:
    """JSON from a file the cache or a user wrote: ValueError (never RecursionError) for anything malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None


def check_meta(meta: object, key: str) -> dict:
    """The entry metadata when it is complete and names ``key``; ValueError saying what is wrong otherwise."""
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    for name, kind in REQUIRED_META.items():
        if not isinstance(meta.get(name), kind):
            raise ValueError(f"field {name!r} is missing or not a {kind.__name__}")
    if meta["key"] != key:
        raise ValueError("its key field names another entry")
    ids = meta["token_ids"]
    if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise ValueError("token_ids is not a list of token ids")
    accuracy = meta["metrics"].get("accuracy")
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not 0 <= accuracy <= 1:
        raise ValueError("metrics.accuracy is missing or not a number in [0, 1]")
    for name in ("history", "snapshots"):
        if name in meta and not isinstance(meta[name], dict if name == "history" else list):
            raise ValueError(f"field {name!r} has the wrong type")
    return meta


def check_vectors(e: torch.Tensor, m: torch.Tensor, hidden: int | None = None) -> None:
    """e and m are 1-D, of equal (and, when given, the model's) width and finite; ValueError otherwise."""
    if e.ndim != 1 or m.ndim != 1 or e.shape != m.shape or e.numel() == 0:
        raise ValueError(f"e and m must be 1-D vectors of one width (got {tuple(e.shape)} and {tuple(m.shape)})")
    if hidden is not None and e.shape[0] != hidden:
        raise ValueError(f"vectors of width {e.shape[0]}, the model's is {hidden}")
    if not (torch.isfinite(e).all() and torch.isfinite(m).all()):
        raise ValueError("e or m holds NaN or infinite values")


class ProtoCache:
    """The cache under one root folder."""

    def __init__(self, root: str | os.PathLike | None = None, shipped: str | os.PathLike | None = None):
        """root: where entries are written. shipped: a read-only cache consulted after root (default: the
        pre-fitted built-in sets when using the default root; none for an explicit root)."""
        self.root = Path(root or os.environ.get("PROTOTOKENS_CACHE") or DEFAULT_ROOT)
        self.entries_dir = self.root / ENTRY_DIR
        if shipped is None and root is None:
            shipped = os.environ.get("PROTOTOKENS_SHIPPED") or SHIPPED_ROOT
        self.shipped = ProtoCache(shipped, shipped="") if shipped and Path(shipped) != self.root else None
        self.warnings: list[str] = []  # unreadable files met so far, for the UI to show
        self._index = None  # core.engine.index.EntryIndex, opened by the first listing
        if self.root not in _SWEPT_ROOTS:  # once per root and process: pages open a cache at every rerun
            _SWEPT_ROOTS.add(self.root)
            self.sweep_stale_tmp()

    # ---- housekeeping ---------------------------------------------------------------------------
    def sweep_stale_tmp(self, max_age_s: float = STALE_TMP_AGE_S) -> int:
        """Remove temporary files left by writes that never finished (a killed process). Returns how many."""
        removed = 0
        now = time.time()
        for folder in (self.entries_dir, self.root / "analyses"):
            if not folder.is_dir():
                continue
            for path in folder.rglob(f".*{TMP_SUFFIX}"):
                try:
                    if path.is_file() and now - path.stat().st_mtime > max_age_s:
                        path.unlink()
                        removed += 1
                except OSError:  # gone already, or a read-only cache: nothing to do
                    pass
        return removed

    def check_writable(self) -> None:
        """Raise CacheWriteError (one line) unless an entry can be written now: checked before a fit starts,
        so that hours of fitting never end in a write that fails."""
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.entries_dir, prefix=".write-check.", suffix=TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CacheWriteError(f"The cache at {self.root} cannot be written: {exc.strerror or exc}.") from None

    # ---- fitted entries -------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.entries_dir / f"{key}.json", self.entries_dir / f"{key}.safetensors"

    def _entry_files(self) -> list[Path]:
        """The JSON files of entries, by their own names (a file whose name is not a key is not an entry)."""
        if not self.entries_dir.is_dir():
            return []
        return [p for p in self.entries_dir.glob("*.json") if is_valid_key(p.stem)]

    def put(self, entry: CacheEntry) -> None:
        """Store an entry; tensors first, so a JSON file is only ever there with its tensors.

        Raises CacheWriteError when the files cannot be written."""
        meta_path, tensor_path = self._paths(entry.key)
        entry.created = entry.created or time.time()
        try:
            _write_tensors(tensor_path, {"e": entry.e.float(), "m": entry.m.float()})
            write_json(meta_path, entry.meta())
        except OSError as exc:
            raise CacheWriteError(f"Could not write {meta_path.stem[:12]}... to the cache at {self.root}: "
                                  f"{exc.strerror or exc}.") from None
        if self._index is not None:  # this process lists the cache: its index learns the entry now
            self._index.put(entry.key, entry.meta(), meta_path)

    def _warn(self, message: str) -> None:
        log.warning(message)
        if message not in self.warnings:
            self.warnings.append(message)

    @staticmethod
    def _parse_meta(meta_path: Path) -> dict:
        return check_meta(read_json(meta_path), meta_path.stem)

    def _read_meta(self, meta_path: Path) -> dict | None:
        try:
            return check_meta(read_json(meta_path), meta_path.stem)
        except (OSError, ValueError) as exc:
            self._warn(f"Ignoring unreadable cache file {meta_path.name}: {exc}")
            return None

    def _read_vectors(self, tensor_path: Path, hidden: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(e, m) of one tensors file, checked; None with a warning naming the file when it cannot be used."""
        try:
            # Read whole, not mapped (load_file): a mapping costs more than the read of a file this small.
            tensors = load_safetensors(tensor_path.read_bytes())
            e, m = tensors["e"].float(), tensors["m"].float()
            check_vectors(e, m, hidden)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            owner = self.shipped if self.shipped is not None and tensor_path.parent == self.shipped.entries_dir else self
            owner._warn(f"Ignoring unreadable cache file {tensor_path.name}: {exc}")
            return None
        return e, m

    def get(self, key: str, hidden: int | None = None) -> CacheEntry | None:
        """The entry, or None when missing, malformed or not what it claims (a warning names the file).

        key: anything (a URL's or an upload's) is accepted; only a well-formed key is looked up.
        hidden: the model's width, when known: vectors of another width are refused."""
        if not is_valid_key(key):
            return None
        meta_path, tensor_path = self._paths(key)
        if not meta_path.exists():
            return self.shipped.get(key, hidden) if self.shipped is not None else None
        meta = self._read_meta(meta_path)
        if meta is None:
            return None
        vectors = self._read_vectors(tensor_path, hidden)
        if vectors is None:
            return None
        e, m = vectors
        return CacheEntry(
            key=key, model=str(meta.get("model", "")), text=meta["text"], token_ids=meta["token_ids"],
            config=meta["config"], metrics=meta["metrics"], history=meta.get("history", {}),
            e=e, m=m, snapshots=meta.get("snapshots", []), model_name=str(meta.get("model_name", "")),
            group=meta.get("group"), created=float(meta.get("created", 0.0) or 0.0),
        )

    # ---- listing, through the index (core.engine.index) ------------------------------------------
    def _folders(self, include_shipped: bool = True) -> list[Path]:
        folders = [self.entries_dir]
        if include_shipped and self.shipped is not None:
            folders.append(self.shipped.entries_dir)
        return folders

    def refresh_index(self, include_shipped: bool = True):
        """Bring the index up to date with the entry files (one scandir a folder; only changed files are read);
        every unreadable entry file becomes a warning. Returns the index."""
        index = open_index(self.root)
        self._index = index
        for folder, owner in zip(self._folders(include_shipped), (self, self.shipped)):
            for name, problem in index.refresh(folder, is_valid_key, self._parse_meta):
                owner._warn(f"Ignoring unreadable cache file {name}: {problem}")
        return index

    def page(self, model: str | None = None, search: str = "", order: str = "newest", offset: int = 0,
             limit: int | None = None, include_shipped: bool = True) -> tuple[list[EntryListing], int]:
        """(rows, total): one page of the readable entries, optionally only one model identity's and those whose
        text contains ``search`` (case-insensitive) or whose key starts with it. ``order`` is one of
        core.engine.index.ORDERS ("newest": the user's own newest first, then the shipped ones, flagged).
        Entries are found by their files' names; the key of each is its file's name."""
        index = self.refresh_index(include_shipped)
        rows, total = index.query(self._folders(include_shipped), model=model, search=search, order=order,
                                  offset=offset, limit=limit)
        return [EntryListing.from_meta(listed, shipped) for shipped, listed in rows], total

    def list(self, model: str | None = None, include_shipped: bool = True) -> list[EntryListing]:
        """Every readable entry (the user's own newest first, then the shipped ones), optionally only those of
        one model identity: :meth:`page` without a page."""
        return self.page(model, include_shipped=include_shipped)[0]

    def get_many(self, keys: Sequence[str], hidden: int | None = None) -> dict[str, CacheEntry]:
        """key -> entry of those keys that are listed, with their vectors but without history and replay
        snapshots (what set analyses need, read fast: the index and one small tensors file per entry). A file
        that cannot be read is left out with a warning, as :meth:`get` does."""
        index = self.refresh_index()
        found = {}
        for key, (folder, listed) in index.listed(self._folders(), [k for k in keys if is_valid_key(k)]).items():
            vectors = self._read_vectors(folder / f"{key}.safetensors", hidden)
            if vectors is not None:
                found[key] = CacheEntry(
                    key=key, model=str(listed.get("model") or ""), text=listed["text"], token_ids=listed["token_ids"],
                    config=listed["config"], metrics=listed["metrics"], history={}, e=vectors[0], m=vectors[1],
                    model_name=str(listed.get("model_name") or ""), group=listed.get("group"),
                    created=_number(listed.get("created")))
        return found

    def listing_stamp(self, model: str | None = None) -> tuple:
        """A value that changes whenever :meth:`list` would (a new, refitted or deleted entry): for callers that
        keep something made from the listing (a page's bulk read of a set)."""
        return self.refresh_index().stamp(self._folders(), model=model)

    def count(self, model: str | None = None) -> tuple[int, int]:
        """(own, shipped): how many readable entries :meth:`list` gives, without reading them."""
        return self.refresh_index().count(self._folders(), model=model)

    def delete(self, key: str) -> bool:
        """Delete one entry of this cache (never a shipped one). A malformed key deletes nothing."""
        if not is_valid_key(key):
            return False
        found = False
        for path in self._paths(key):
            if path.exists():
                path.unlink()
                found = True
        if self._index is not None:
            self._index.forget(self.entries_dir, [key])
        return found

    def clear(self, model: str | None = None) -> int:
        """Delete every entry (of one model identity when given) and the analyses. Returns entries removed.

        Only files inside this cache's own folders are touched, chosen by their names."""
        removed = 0
        for meta_path in self._entry_files():
            if model is not None:
                meta = self._read_meta(meta_path)
                if meta is None or meta.get("model") != model:
                    continue
            removed += self.delete(meta_path.stem)
        analyses = self.root / "analyses"
        if analyses.is_dir():
            for folder in analyses.iterdir():
                if folder.is_dir() and not folder.is_symlink() and ANALYSIS_NAME.fullmatch(folder.name):
                    for path in folder.iterdir():
                        if path.is_file() and not path.is_symlink():
                            path.unlink()
        return removed

    def size_bytes(self) -> int:
        """Bytes of the cache's own files: its entries as its index last saw them (refreshed when no listing has
        run yet), its analyses and the index."""
        if not self.root.exists():
            return 0
        entries = (self._index or self.refresh_index(include_shipped=False)).size(self.entries_dir)
        others = [p for name in ("analyses",) for p in (self.root / name).rglob("*")] + [self.root / INDEX_FILE]
        return entries + sum(p.stat().st_size for p in others if p.is_file() and not p.is_symlink())

    # ---- derived analyses ----------------------------------------------------------------------
    def _analysis_paths(self, kind: str, key: str) -> tuple[Path, Path]:
        if not (ANALYSIS_NAME.fullmatch(kind) and isinstance(key, str) and ANALYSIS_NAME.fullmatch(key)):
            raise CacheKeyError(f"{kind!r}/{key!r} is not an analysis name.")
        folder = self.root / "analyses" / kind
        return folder / f"{key}.json", folder / f"{key}.safetensors"

    def put_analysis(self, kind: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
        meta_path, tensor_path = self._analysis_paths(kind, key)
        try:
            if tensors:
                _write_tensors(tensor_path, tensors)
            write_json(meta_path, {"key": key, "kind": kind, "created": time.time(), **meta})
        except OSError as exc:
            raise CacheWriteError(f"Could not write a {kind} result to the cache at {self.root}: "
                                  f"{exc.strerror or exc}.") from None

    def keep_analysis(self, kind: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> bool:
        """put_analysis for results that are worth keeping but cheap to recompute: a write that fails (full or
        read-only disk) costs the next visit a recompute, not this result. Returns whether it was stored."""
        try:
            self.put_analysis(kind, key, meta, tensors)
            return True
        except CacheWriteError as exc:
            self._warn(str(exc))
            return False

    def get_analysis(self, kind: str, key: str, with_tensors: bool = False) -> tuple[dict, dict] | None:
        """(meta, tensors) of a stored analysis, or None when missing or unreadable."""
        meta_path, tensor_path = self._analysis_paths(kind, key)
        if not meta_path.exists():
            return self.shipped.get_analysis(kind, key, with_tensors) if self.shipped is not None else None
        try:
            meta = read_json(meta_path)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            tensors = load_file(str(tensor_path)) if with_tensors and tensor_path.exists() else {}
        except Exception as exc:
            self._warn(f"Ignoring unreadable analysis file {meta_path.name}: {exc}")
            return None
        return meta, tensors


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0
