"""The cache's SQLite index (core.engine.index): 10,000 entries listed, paged and searched without parsing every
file at every listing; what other writers, deletes, corrupt files and a broken index do to it."""

from __future__ import annotations

import json
import os
import random
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.synthetic import MODEL, synthetic_entry, write_synthetic_entries
from core.engine import index as index_mod
from core.engine.cache import ProtoCache
from core.engine.index import INDEX_FILE, ORDERS


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("index10k")
    entries = write_synthetic_entries(root, 10_000)
    return root, entries


SETTLED_NS = 1_700_000_000 * 10**9


def _age_folder(folder):
    """Make a folder's last change look old (always the same instant), as it is on a cache nobody wrote to for a
    while: the index trusts an unchanged folder stamp only once it is older than RACY_S."""
    os.utime(folder, ns=(SETTLED_NS, SETTLED_NS))


def test_ten_thousand_entries_are_listed_paged_and_searched(big_cache):
    root, entries = big_cache
    cache = ProtoCache(root, shipped="")
    rows, total = cache.page(limit=50)
    assert total == 10_000 and len(rows) == 50
    newest = sorted(entries, key=lambda e: e.created, reverse=True)
    assert [r.key for r in rows] == [e.key for e in newest[:50]]
    last, _ = cache.page(offset=9_990, limit=50)
    assert [r.key for r in last] == [e.key for e in newest[9_990:]]
    hits, n = cache.page(search="ZÜRICH  ")  # case-insensitive, Unicode, surrounding spaces ignored
    assert n == sum("zürich" in e.text.casefold() for e in entries) == len(hits) > 0
    assert all("zürich" in r.text.casefold() for r in hits)
    by_key, n = cache.page(search=entries[1234].key[:10])
    assert n == 1 and by_key[0].key == entries[1234].key
    best, _ = cache.page(order="accuracy, highest first", limit=3)
    assert [r.accuracy for r in best] == sorted((e.metrics["accuracy"] for e in entries), reverse=True)[:3]
    assert cache.count() == (10_000, 0) and cache.count("another-model") == (0, 0)
    assert (root / INDEX_FILE).is_file()


def test_an_unchanged_cache_is_listed_without_parsing_its_files(big_cache, monkeypatch):
    root, _ = big_cache
    ProtoCache(root, shipped="").page(limit=1)  # the index is up to date
    _age_folder(root / "prototokens")
    ProtoCache(root, shipped="").page(limit=1)  # a scan that sees the folder's stamp as settled
    parsed = []
    original = ProtoCache._parse_meta
    monkeypatch.setattr(ProtoCache, "_parse_meta", staticmethod(lambda path: parsed.append(path) or original(path)))
    stats = []
    monkeypatch.setattr(index_mod, "scan_folder", lambda *a: stats.append(a) or pytest.fail("rescanned"))
    rows, total = ProtoCache(root, shipped="").page(search="river", limit=50)  # the next rerun
    assert total > 0 and parsed == [] and stats == []


def test_a_new_file_from_another_writer_a_deleted_one_and_a_corrupt_one_are_noticed(tmp_path):
    root = tmp_path / "cache"
    entries = write_synthetic_entries(root, 30)
    lister = ProtoCache(root, shipped="")
    assert lister.count() == (30, 0)
    # another process (a torchrun worker) writes files only: it never opens the index
    newcomer = synthetic_entry(99, random.Random(5))
    ProtoCache(root, shipped="").put(newcomer)
    assert newcomer.key in {r.key for r in ProtoCache(root, shipped="").list()}
    # deleted behind the index's back
    (root / "prototokens" / f"{entries[0].key}.json").unlink()
    # corrupted in place (same name): the folder's own stamp does not change, the file's does
    broken = root / "prototokens" / f"{entries[1].key}.json"
    broken.write_text("{not json", encoding="utf-8")
    fresh = ProtoCache(root, shipped="")
    keys = {r.key for r in fresh.list()}
    assert entries[0].key not in keys and entries[1].key not in keys and len(keys) == 29
    assert any(entries[1].key in w for w in fresh.warnings)
    again = ProtoCache(root, shipped="")
    again.list()
    assert any(entries[1].key in w for w in again.warnings)  # named at every listing, not only the first


def test_a_file_changed_in_place_is_noticed_within_the_rescan_time(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    entries = write_synthetic_entries(root, 5)
    _age_folder(root / "prototokens")
    ProtoCache(root, shipped="").list()
    path = root / "prototokens" / f"{entries[2].key}.json"
    meta = json.loads(path.read_text())
    meta["text"] = "edited in place"
    path.write_text(json.dumps(meta))
    _age_folder(root / "prototokens")  # the folder itself looks untouched
    assert "edited in place" not in {r.text for r in ProtoCache(root, shipped="").list()}  # trusted, for now
    monkeypatch.setattr(index_mod, "RESCAN_S", 0.0)
    assert "edited in place" in {r.text for r in ProtoCache(root, shipped="").list()}


def test_a_missing_or_corrupt_index_is_rebuilt_from_the_files(tmp_path):
    root = tmp_path / "cache"
    entries = write_synthetic_entries(root, 12)
    want = {e.key for e in entries}
    assert {r.key for r in ProtoCache(root, shipped="").list()} == want
    index_mod._OPEN.clear()  # a new process
    (root / INDEX_FILE).write_bytes(b"this is not an SQLite file" * 100)
    assert {r.key for r in ProtoCache(root, shipped="").list()} == want
    index_mod._OPEN.clear()
    (root / INDEX_FILE).unlink()
    assert {r.key for r in ProtoCache(root, shipped="").list()} == want
    with sqlite3.connect(root / INDEX_FILE) as conn:  # an index of another version: rebuilt too
        conn.execute("UPDATE info SET value = 'entry-index-v0' WHERE name = 'version'")
    index_mod._OPEN.clear()
    assert {r.key for r in ProtoCache(root, shipped="").list()} == want


def test_a_cache_folder_that_cannot_hold_the_index_is_indexed_in_memory(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    entries = write_synthetic_entries(root, 4)
    monkeypatch.setattr(index_mod, "_writable", lambda folder: False)  # a read-only cache (tests run as root)
    index_mod._OPEN.clear()
    assert {r.key for r in ProtoCache(root, shipped="").list()} == {e.key for e in entries}
    assert not (root / INDEX_FILE).exists() and index_mod.open_index(root).path is None


def test_own_entries_come_first_and_hide_the_shipped_copy_of_a_key(tmp_path):
    shipped_root, user_root = tmp_path / "shipped", tmp_path / "user"
    shipped = write_synthetic_entries(shipped_root, 6, seed=1)
    own = write_synthetic_entries(user_root, 3, seed=2)
    ProtoCache(user_root, shipped="").put(shipped[0])  # the user refitted a shipped text
    cache = ProtoCache(user_root, shipped=shipped_root)
    rows = cache.list(MODEL)
    assert [r.shipped for r in rows] == [False] * 4 + [True] * 5
    assert [r.key for r in rows].count(shipped[0].key) == 1
    assert cache.count(MODEL) == (4, 5)
    assert {r.key for r in cache.list(include_shipped=False)} == {e.key for e in own} | {shipped[0].key}


def test_a_put_and_a_delete_of_this_process_reach_its_index_at_once(tmp_path):
    root = tmp_path / "cache"
    entries = write_synthetic_entries(root, 3)
    cache = ProtoCache(root, shipped="")
    cache.list()
    newcomer = synthetic_entry(7, random.Random(3))
    cache.put(newcomer)
    cache.delete(entries[0].key)
    rows, total = index_mod.open_index(root).query([cache.entries_dir])  # the index itself, no refresh
    assert total == 3 and {r["key"] for _, r in rows} == {newcomer.key, entries[1].key, entries[2].key}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(search=st.text(max_size=8), order=st.sampled_from(list(ORDERS)), size=st.integers(1, 40))
def test_any_search_pages_exactly_the_matching_entries(search, order, size, small_cache):
    """Property: for any typed search, the pages put together are the entries whose text contains it
    (case-insensitive) or whose key starts with it, each once, and the total says how many."""
    root, entries = small_cache
    cache = ProtoCache(root, shipped="")
    needle = search.strip().casefold()
    want = {e.key for e in entries if not needle or needle in e.text.casefold() or e.key.startswith(needle)}
    seen, offset = [], 0
    while True:
        rows, total = cache.page(search=search, order=order, offset=offset, limit=size)
        assert total == len(want)
        if not rows:
            break
        seen += [r.key for r in rows]
        offset += size
    assert len(seen) == len(set(seen)) and set(seen) == want


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-small")
    return root, write_synthetic_entries(root, 80, seed=3)
