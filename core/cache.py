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
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "cache"
# Pre-fitted entries of the built-in text sets, shipped with the project (read-only; `python -m core prefit`).
SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "data" / "prefit"
ENTRY_DIR = "prototokens"


def cache_key(*parts: object) -> str:
    """sha256 over JSON-serialised parts (sorted keys, so dict order never matters)."""
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def entry_key(model_identity: str, token_ids: list[int], config_key: dict, group: str | None = None) -> str:
    """Key of one fitted text. ``group`` names the batch when texts were coupled (shared m, regulariser)."""
    return cache_key("prototokens-v1", model_identity, list(map(int, token_ids)), config_key, group)


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
    e: torch.Tensor  # [hidden] float32
    m: torch.Tensor  # [hidden] float32
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


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: Path, obj: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
    _atomic_write(path, write)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    _atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp))


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

    # ---- fitted entries -------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.entries_dir / f"{key}.json", self.entries_dir / f"{key}.safetensors"

    def put(self, entry: CacheEntry) -> None:
        """Store an entry; tensors first, so a JSON file is only ever there with its tensors."""
        meta_path, tensor_path = self._paths(entry.key)
        entry.created = entry.created or time.time()
        _write_tensors(tensor_path, {"e": entry.e.float(), "m": entry.m.float()})
        _write_json(meta_path, entry.meta())

    def _warn(self, message: str) -> None:
        log.warning(message)
        if message not in self.warnings:
            self.warnings.append(message)

    def _read_meta(self, meta_path: Path) -> dict | None:
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or "key" not in meta or "token_ids" not in meta:
                raise ValueError("missing fields")
            return meta
        except (OSError, ValueError) as exc:
            self._warn(f"Ignoring unreadable cache file {meta_path.name}: {exc}")
            return None

    def get(self, key: str) -> CacheEntry | None:
        """The entry, or None when missing or unreadable (a warning is logged and kept)."""
        meta_path, tensor_path = self._paths(key)
        if not meta_path.exists():
            return self.shipped.get(key) if self.shipped is not None else None
        meta = self._read_meta(meta_path)
        if meta is None:
            return None
        try:
            tensors = load_file(str(tensor_path))
            e, m = tensors["e"].float(), tensors["m"].float()
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            self._warn(f"Ignoring unreadable cache file {tensor_path.name}: {exc}")
            return None
        return CacheEntry(
            key=meta["key"], model=meta.get("model", ""), text=meta.get("text", ""), token_ids=meta["token_ids"],
            config=meta.get("config", {}), metrics=meta.get("metrics", {}), history=meta.get("history", {}),
            e=e, m=m, snapshots=meta.get("snapshots", []), model_name=meta.get("model_name", ""),
            group=meta.get("group"), created=meta.get("created", 0.0),
        )

    def list(self, model: str | None = None, include_shipped: bool = True) -> list[dict]:
        """Metadata of readable entries (newest first), optionally only those of one model identity.

        Shipped entries come after the user's own and carry ``"shipped": True``.
        """
        shipped = []
        if include_shipped and self.shipped is not None:
            own = {p.stem for p in self.entries_dir.glob("*.json")} if self.entries_dir.exists() else set()
            shipped = [dict(m, shipped=True) for m in self.shipped.list(model) if m["key"] not in own]
        if not self.entries_dir.exists():
            return shipped
        metas = []
        for meta_path in self.entries_dir.glob("*.json"):
            meta = self._read_meta(meta_path)
            if meta is None or (model is not None and meta.get("model") != model):
                continue
            if not self._paths(meta["key"])[1].exists():
                continue
            metas.append(meta)
        return sorted(metas, key=lambda m: m.get("created", 0.0), reverse=True) + shipped

    def delete(self, key: str) -> bool:
        found = False
        for path in self._paths(key):
            if path.exists():
                path.unlink()
                found = True
        return found

    def clear(self, model: str | None = None) -> int:
        """Delete every entry (of one model identity when given) and the analyses. Returns entries removed."""
        removed = 0
        for meta in self.list(model, include_shipped=False):
            removed += self.delete(meta["key"])
        analyses = self.root / "analyses"
        if analyses.exists():
            for path in analyses.rglob("*"):
                if path.is_file():
                    path.unlink()
        return removed

    def size_bytes(self) -> int:
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    # ---- derived analyses ----------------------------------------------------------------------
    def _analysis_paths(self, kind: str, key: str) -> tuple[Path, Path]:
        folder = self.root / "analyses" / kind
        return folder / f"{key}.json", folder / f"{key}.safetensors"

    def put_analysis(self, kind: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
        meta_path, tensor_path = self._analysis_paths(kind, key)
        if tensors:
            _write_tensors(tensor_path, tensors)
        _write_json(meta_path, {"key": key, "kind": kind, "created": time.time(), **meta})

    def get_analysis(self, kind: str, key: str, with_tensors: bool = False) -> tuple[dict, dict] | None:
        """(meta, tensors) of a stored analysis, or None when missing or unreadable."""
        meta_path, tensor_path = self._analysis_paths(kind, key)
        if not meta_path.exists():
            return self.shipped.get_analysis(kind, key, with_tensors) if self.shipped is not None else None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_path)) if with_tensors and tensor_path.exists() else {}
        except Exception as exc:
            self._warn(f"Ignoring unreadable analysis file {meta_path.name}: {exc}")
            return None
        return meta, tensors
