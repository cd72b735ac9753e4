"""An SQLite index of a cache's entry files: list, count, page and search thousands of entries without parsing
every JSON file at every rerun.

The files stay the truth; the index is derived from them and can always be rebuilt. It keeps, per entry file,
the file's stamp (inode, mtime in ns, size) and what a listing shows. A refresh first looks at the folder's own
stamp: every write of the cache renames a file into the folder and every delete removes one, and either moves
the folder's mtime, so an unchanged folder (seen unchanged by a scan at least RACY_S after its last change, and
scanned within RESCAN_S) needs nothing more. Otherwise it reads the folder once (``os.scandir``, one ``stat``
per JSON file) and parses only the files whose stamp changed, so:

- entries written by other processes (torchrun workers, other machines on a shared filesystem) appear at the
  next listing: those writers only write files and never open the index;
- a file that was deleted leaves the index; one that became corrupt is noticed (its warning is kept, so every
  listing names it, without parsing it again until it changes; a file changed in place, which no writer of the
  cache does, within RESCAN_S);
- an index that is missing, unreadable or of another version is rebuilt from the files.

One index serves a cache and its shipped fallback (rows by entries folder), in ``<root>/index.sqlite`` when
the cache folder exists and can be written, else in memory for the life of the process (a fresh install, a
read-only cache). Only processes that list (a dashboard, ``core list``) write it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
INDEX_VERSION = "entry-index-v3"
# A folder whose mtime is this close to the scan that read it may change again within the same mtime tick.
RACY_S = 2.0
# An unchanged folder is scanned again after this long anyway (files changed in place keep the folder's mtime).
RESCAN_S = 30.0
# name -> ORDER BY clause: the only orders a listing can ask for (never SQL from a caller).
ORDERS: dict[str, str] = {
    "newest": "shipped, created DESC, key",
    "oldest": "shipped, created ASC, key",
    "accuracy, highest first": "accuracy DESC, created DESC, key",
    "accuracy, lowest first": "accuracy ASC, created DESC, key",
    "longest": "n_tokens DESC, created DESC, key",
}
# What a listing row keeps of an entry's JSON (the history and replay snapshots stay in the file).
LISTED_FIELDS = ("key", "model", "model_name", "text", "token_ids", "config", "metrics", "created", "group")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS entries (
    folder TEXT NOT NULL, key TEXT NOT NULL, stamp TEXT NOT NULL, tensors INTEGER NOT NULL,
    error TEXT, model TEXT, folded TEXT, n_tokens INTEGER, accuracy REAL, created REAL, bytes INTEGER,
    PRIMARY KEY (folder, key));
CREATE INDEX IF NOT EXISTS entries_by_model ON entries (model, created);
-- what a listing shows, apart: scans for counts and searches read only the narrow table above
CREATE TABLE IF NOT EXISTS listings (folder TEXT NOT NULL, key TEXT NOT NULL, listing TEXT NOT NULL,
    PRIMARY KEY (folder, key));
"""


@dataclass(frozen=True)
class FolderScan:
    """What one scandir of an entries folder found: JSON files by key with their stamps, and the keys that have
    their tensors file beside them (by name: only JSON files are stat-ed)."""

    stamps: dict[str, str]
    tensors: set[str]


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def scan_folder(folder: Path, is_key: Callable[[str], bool]) -> FolderScan:
    stamps: dict[str, str] = {}
    tensors: set[str] = set()
    try:
        listing = os.scandir(folder)
    except OSError:
        return FolderScan({}, set())
    with listing:
        for item in listing:
            name = item.name
            if name.endswith(".json"):
                stem = name[:-5]
                if len(stem) != 64 or not is_key(stem) or not item.is_file(follow_symlinks=False):
                    continue
                try:
                    stamps[stem] = _stamp(item.stat(follow_symlinks=False))
                except OSError:
                    continue
            elif name.endswith(".safetensors") and len(name) == 76 and is_key(name[:-12]):
                tensors.add(name[:-12])
    return FolderScan(stamps, tensors)


class EntryIndex:
    """The index of one cache: rows of its own entries folder and of its shipped fallback's, by folder."""

    def __init__(self, path: Path | None):
        """path: the SQLite file; None keeps the index in memory."""
        self.path = path
        self.lock = threading.RLock()  # Streamlit reruns and fit jobs run in threads of one process
        self.seen: dict[str, tuple[str, float]] = {}  # folder -> (its stamp, when) at the last trusted scan
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path is not None:
            try:
                conn = self._connect(str(self.path))
                if self._version(conn) == INDEX_VERSION:
                    return conn
                conn.close()
                log.info("Rebuilding the cache index %s (another version)", self.path)
            except sqlite3.Error as exc:
                log.warning("Rebuilding the cache index %s: %s", self.path, exc)
            try:  # our own file, at a fixed name inside the cache: safe to replace
                self.path.unlink(missing_ok=True)
                conn = self._connect(str(self.path))
                self._initialise(conn)
                return conn
            except (OSError, sqlite3.Error) as exc:
                log.warning("Keeping the cache index in memory: %s cannot be written (%s)", self.path, exc)
                self.path = None
        conn = self._connect(":memory:")
        self._initialise(conn)
        return conn

    @staticmethod
    def _connect(where: str) -> sqlite3.Connection:
        conn = sqlite3.connect(where, timeout=10.0, check_same_thread=False, isolation_level=None)
        return conn

    @staticmethod
    def _version(conn: sqlite3.Connection) -> str | None:
        try:
            row = conn.execute("SELECT value FROM info WHERE name = 'version'").fetchone()
            conn.execute("SELECT folder, key, stamp, tensors, error, folded, bytes FROM entries LIMIT 1").fetchall()
            conn.execute("SELECT folder, key, listing FROM listings LIMIT 1").fetchall()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    @staticmethod
    def _initialise(conn: sqlite3.Connection) -> None:
        conn.executescript("DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS listings; DROP TABLE IF EXISTS info;"
                           + _SCHEMA)
        conn.execute("INSERT INTO info VALUES ('version', ?)", (INDEX_VERSION,))

    def _run(self, action: Callable[[sqlite3.Connection], object]) -> object:
        """Run action on the connection; an index that broke underneath (a corrupt file, a disk error) is
        rebuilt once from the files and the action runs again."""
        with self.lock:
            try:
                return action(self.conn)
            except sqlite3.DatabaseError as exc:
                log.warning("The cache index failed (%s); rebuilding it from the files", exc)
                try:
                    self.conn.close()
                except sqlite3.Error:
                    pass
                if self.path is not None:
                    self.path.unlink(missing_ok=True)
                self.conn = self._open()
                self.seen.clear()
                return action(self.conn)

    # ---- keeping it true ------------------------------------------------------------------------
    def refresh(self, folder: Path, is_key: Callable[[str], bool], parse: Callable[[Path], dict]
                ) -> list[tuple[str, str]]:
        """Bring one folder's rows up to date with its files; returns (file name, problem) of every entry file
        that cannot be listed because it is unreadable or incomplete (a JSON file without its tensors beside it
        is not listed either, but is no problem: its tensors may still be on their way).

        parse(json_path) returns the entry's checked metadata or raises ValueError/OSError."""
        source = str(folder)
        problems_query = ("SELECT key, error FROM entries WHERE folder = ? AND error IS NOT NULL ORDER BY key",
                          (source,))
        started = time.time()
        try:
            folder_st = os.stat(folder)
            folder_stamp = f"{folder_st.st_ino}:{folder_st.st_mtime_ns}"
        except OSError:
            folder_st, folder_stamp = None, "missing"
        held = self.seen.get(source)
        if held is not None and held[0] == folder_stamp and started - held[1] < RESCAN_S:
            return [(f"{key}.json", error) for key, error in self._run(lambda conn: conn.execute(*problems_query))]
        scan = scan_folder(folder, is_key)

        def action(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            known = {key: (stamp, tensors) for key, stamp, tensors in
                     conn.execute("SELECT key, stamp, tensors FROM entries WHERE folder = ?", (source,))}
            gone = [(source, key) for key in known.keys() - scan.stamps.keys()]
            changed, flipped = [], []
            for key, stamp in scan.stamps.items():
                has_tensors = int(key in scan.tensors)
                held = known.get(key)
                if held is None or held[0] != stamp:
                    changed.append(_row(source, key, stamp, has_tensors, folder / f"{key}.json", parse))
                elif held[1] != has_tensors:
                    flipped.append((has_tensors, source, key))
            if gone or changed or flipped:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("DELETE FROM entries WHERE folder = ? AND key = ?", gone)
                    conn.executemany("DELETE FROM listings WHERE folder = ? AND key = ?", gone)
                    _store(conn, changed)
                    conn.executemany("UPDATE entries SET tensors = ? WHERE folder = ? AND key = ?", flipped)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return [(f"{key}.json", error) for key, error in conn.execute(*problems_query)]

        problems = self._run(action)
        # Trust the folder's stamp from now on only if it was old enough when this scan began: a file renamed
        # into the folder later within the same mtime tick would leave the stamp as it is.
        if folder_st is None or started - folder_st.st_mtime > RACY_S:
            self.seen[source] = (folder_stamp, started)
        else:
            self.seen.pop(source, None)
        return problems  # type: ignore[return-value]

    def put(self, key: str, meta: dict, json_path: Path) -> None:
        """Record an entry this process just wrote (its JSON and tensors are in place)."""
        try:
            st = json_path.stat()
        except OSError:
            return
        row = _listed_row(str(json_path.parent), key, _stamp(st), 1, meta, _tensor_bytes(json_path) + st.st_size)
        self._run(lambda conn: _store(conn, [row]))

    def forget(self, folder: Path, keys: Iterable[str]) -> None:
        rows = [(str(folder), key) for key in keys]
        def action(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM entries WHERE folder = ? AND key = ?", rows)
            conn.executemany("DELETE FROM listings WHERE folder = ? AND key = ?", rows)
        self._run(action)

    # ---- reading it -------------------------------------------------------------------------------
    def query(self, folders: Sequence[Path], *, model: str | None = None, search: str = "", order: str = "newest",
              offset: int = 0, limit: int | None = None) -> tuple[list[tuple[bool, dict]], int]:
        """(rows, total): the listed entries of these folders, the first the cache's own (its key hides the same
        key in the others, which are shipped), of one model identity when given, whose text contains search
        (case-insensitive) or whose key starts with it, in this order, from offset, at most limit of them.
        Each row is (shipped, listed fields); total counts every match."""
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
        clause, params = self._where(folders, model, search)
        page = "" if limit is None else f" LIMIT {max(0, int(limit))} OFFSET {max(0, int(offset))}"

        def action(conn: sqlite3.Connection):
            total = conn.execute(f"SELECT count(*) FROM entries WHERE {clause}", params).fetchone()[0]
            picked = conn.execute(f"SELECT folder, key, folder != ? AS shipped FROM entries WHERE {clause} "
                                  f"ORDER BY {ORDERS[order]}{page}", [str(folders[0]), *params]).fetchall()
            rows = []
            for folder, key, shipped in picked:
                (listing,) = conn.execute("SELECT listing FROM listings WHERE folder = ? AND key = ?",
                                          (folder, key)).fetchone()
                rows.append((bool(shipped), json.loads(listing)))
            return rows, total

        return self._run(action)  # type: ignore[return-value]

    def count(self, folders: Sequence[Path], *, model: str | None = None) -> tuple[int, int]:
        """(own, shipped): how many entries a listing of these folders (the first the cache's own) holds."""
        clause, params = self._where(folders, model, "")
        rows = self._run(lambda conn: conn.execute(
            f"SELECT folder = ?, count(*) FROM entries WHERE {clause} GROUP BY folder = ?",
            [str(folders[0]), *params, str(folders[0])]).fetchall())
        counts = {bool(own): int(n) for own, n in rows}  # type: ignore[union-attr]
        return counts.get(True, 0), counts.get(False, 0)

    def listed(self, folders: Sequence[Path], keys: Sequence[str]) -> dict[str, tuple[Path, dict]]:
        """key -> (its folder, listed fields) of those keys that a listing of these folders holds (the first
        folder's copy of a key wins), in a few queries however many keys are asked for."""
        order = {str(folder): rank for rank, folder in enumerate(folders)}
        wanted = list(dict.fromkeys(keys))

        def action(conn: sqlite3.Connection) -> dict[str, tuple[Path, dict]]:
            found: dict[str, tuple[int, str, str]] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = conn.execute(
                    f"SELECT e.folder, e.key, l.listing FROM entries e JOIN listings l USING (folder, key) WHERE "
                    f"e.error IS NULL AND e.tensors = 1 AND e.folder IN ({','.join('?' * len(order))}) AND "
                    f"e.key IN ({','.join('?' * len(chunk))})", [*order, *chunk]).fetchall()
                for folder, key, listing in rows:
                    if key not in found or order[folder] < found[key][0]:
                        found[key] = (order[folder], folder, listing)
            return {key: (Path(folder), json.loads(listing)) for key, (_, folder, listing) in found.items()}

        return self._run(action)  # type: ignore[return-value]

    def stamp(self, folders: Sequence[Path], model: str | None = None) -> tuple:
        """What changes whenever a listing of these folders does: entries written, refitted or deleted."""
        clause, params = self._where(folders, model, "")
        return tuple(self._run(lambda conn: conn.execute(
            f"SELECT count(*), max(created), total(accuracy) FROM entries WHERE {clause}", params).fetchone()))

    def size(self, folder: Path) -> int:
        """Bytes of the entry files of one folder, as the index last saw them."""
        return int(self._run(lambda conn: conn.execute("SELECT coalesce(sum(bytes), 0) FROM entries WHERE folder = ?",
                                                       (str(folder),)).fetchone()[0]))

    @staticmethod
    def _where(folders: Sequence[Path], model: str | None, search: str) -> tuple[str, list[object]]:
        own = str(folders[0])
        where = ["error IS NULL", "tensors = 1", f"folder IN ({','.join('?' * len(folders))})",
                 "(folder = ? OR key NOT IN (SELECT key FROM entries WHERE folder = ? AND error IS NULL "
                 "AND tensors = 1))"]
        params: list[object] = [*map(str, folders), own, own]
        if model is not None:
            where.append("model = ?")
            params.append(model)
        needle = search.strip().casefold()
        if needle:
            where.append("(instr(folded, ?) > 0 OR substr(key, 1, ?) = ?)")
            params += [needle, len(needle), needle]
        return " AND ".join(where), params


def _row(source: str, key: str, stamp: str, has_tensors: int, path: Path, parse: Callable[[Path], dict]) -> tuple:
    try:
        meta = parse(path)
    except (OSError, ValueError) as exc:
        return (source, key, stamp, has_tensors, str(exc) or type(exc).__name__, None, None, None, None, None,
                None, None)
    return _listed_row(source, key, stamp, has_tensors, meta, _tensor_bytes(path) + int(stamp.rsplit(":", 1)[1]))


def _tensor_bytes(json_path: Path) -> int:
    try:
        return json_path.with_suffix(".safetensors").stat().st_size
    except OSError:
        return 0


def _listed_row(source: str, key: str, stamp: str, has_tensors: int, meta: dict, size: int) -> tuple:
    listed = {name: meta.get(name) for name in LISTED_FIELDS}
    accuracy = meta["metrics"].get("accuracy")
    created = meta.get("created")
    created = float(created) if isinstance(created, (int, float)) and created == created else 0.0
    return (source, key, stamp, has_tensors, None, str(meta.get("model", "")), meta["text"].casefold(),
            len(meta["token_ids"]), float(accuracy), created, size,
            json.dumps(listed, ensure_ascii=False, separators=(",", ":")))


def _store(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert or replace rows as _listed_row / _row make them: the narrow row, and its listing apart."""
    conn.executemany("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)", [row[:11] for row in rows])
    conn.executemany("INSERT OR REPLACE INTO listings VALUES (?,?,?)",
                     [(row[0], row[1], row[11]) for row in rows if row[11] is not None])
    conn.executemany("DELETE FROM listings WHERE folder = ? AND key = ?",
                     [(row[0], row[1]) for row in rows if row[11] is None])


_OPEN: dict[Path | None, EntryIndex] = {}
_OPEN_LOCK = threading.Lock()


def open_index(root: Path) -> EntryIndex:
    """The process's index of the cache at root: one per root, shared by every ProtoCache object on it (pages
    open a cache at every rerun). In ``root/index.sqlite`` when root exists and can be written, else in memory."""
    root = Path(root)
    with _OPEN_LOCK:
        held = _OPEN.get(root)
        if held is not None and (held.path is not None or not _writable(root)):
            return held
        index = EntryIndex(root / INDEX_FILE if _writable(root) else None)
        _OPEN[root] = index
        return index


def _writable(root: Path) -> bool:
    return root.is_dir() and os.access(root, os.W_OK | os.X_OK)
