"""core.engine.corpus and `core fit` as torchrun workers: shards, resume, the gathered summary, the manifest, faults.

The multi-worker tests run torchrun with 2 workers on gloo and the tiny model on the CPU, as a researcher's
cluster job would run on GPUs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from core.engine import corpus
from core.engine.cache import ENTRY_DIR, ProtoCache
from core.engine.models import TINY_MODEL
from core.engine.sets import load_manifest
from core.texts.textsets import TextSetError
from tests.conftest import REPO

WORDS = "river stone cloud lamp green music paper window bread silver north quiet".split()
# 20 lines, 16 distinct texts: 4 duplicates are fitted once.
DISTINCT = [" ".join(words) for words in itertools.islice(itertools.combinations(WORDS, 3), 0, None, 13)][:16]
LINES = DISTINCT + DISTINCT[:4]
FIT = ["--model", TINY_MODEL, "--preset", "fast", "--max-steps", "60", "--quiet", "--json"]


def _write_corpus(folder: Path, lines=LINES) -> Path:
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _torchrun(*args, workers: int = 2, timeout: int = 300, background: bool = False):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
               "-m", "core", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _one_worker(*args, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _summary(stdout: str) -> dict:
    return next(json.loads(line) for line in stdout.splitlines()[::-1] if line.startswith('{"corpus"'))


def _entry_files(cache: Path) -> list[Path]:
    return sorted((cache / ENTRY_DIR).glob("*.json"))


# ---- the pieces --------------------------------------------------------------------------------------

def test_a_worker_is_read_from_torchrun_s_environment():
    assert corpus.worker_from_env({}) == corpus.Worker(0, 1, 0, 1)
    worker = corpus.worker_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (worker.rank, worker.world_size, worker.local_rank, worker.local_world_size) == (3, 4, 1, 2)
    assert not worker.is_main and corpus.worker_from_env({"WORLD_SIZE": "2"}).is_main
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        corpus.worker_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not a whole number"):
        corpus.worker_from_env({"WORLD_SIZE": "two"})


def test_shards_are_stable_cover_every_text_once_and_spread_them():
    texts = [[i, i + 1, i * 7 % 13] for i in range(400)]
    for world in (1, 2, 3, 8):
        shards = [corpus.shard_of(t, world) for t in texts]
        assert shards == [corpus.shard_of(list(t), world) for t in texts]  # same answer every time
        counts = Counter(shards)
        assert set(counts) == set(range(world)) and min(counts.values()) > 0.6 * len(texts) / world
    # pinned: a rerun on another machine or Python makes the same shards (no salted hash())
    assert [corpus.shard_of([1, 2, 3], 4), corpus.shard_of([42], 4)] == [
        int.from_bytes(__import__("hashlib").sha256(b"[1, 2, 3]").digest()[:8], "big") % 4,
        int.from_bytes(__import__("hashlib").sha256(b"[42]").digest()[:8], "big") % 4]


def test_threads_split_the_node_between_its_workers():
    assert corpus.worker_threads(corpus.Worker(0, 2, 0, 2), cpus=16) == 8
    assert corpus.worker_threads(corpus.Worker(0, 4, 3, 4), cpus=2) == 1


def test_the_plan_drops_duplicates_and_names_a_bad_text_by_where_it_is(tiny_lm):
    plan = corpus.plan_corpus(tiny_lm, ["ab", "cd", "ab", "ef"], "e+m*N")
    assert plan.texts == ["ab", "cd", "ef"] and plan.duplicates == 1 and len(plan.targets) == 3
    worker_texts = [plan.shard(corpus.Worker(r, 2, r, 2)) for r in range(2)]
    assert sorted(worker_texts[0] + worker_texts[1]) == [0, 1, 2]
    with pytest.raises(TextSetError, match=r"^corpus.txt line 9 \('x x x"):
        corpus.plan_corpus(tiny_lm, ["ab", "x " * 400], "e+m*N", ["corpus.txt line 1", "corpus.txt line 9"])


# ---- one worker: the same job -------------------------------------------------------------------------

def test_one_worker_fits_the_corpus_lists_it_and_a_rerun_fits_nothing(tmp_path):
    path = _write_corpus(tmp_path)
    cache = tmp_path / "cache"
    first = _one_worker("fit", "--file", str(path), "--cache", str(cache), *FIT)
    assert first.returncode == 0, first.stderr
    total = _summary(first.stdout)["corpus"]
    assert (total["texts"], total["fitted"], total["cached"], total["set"]) == (16, 16, 0, "corpus")
    assert "4 duplicate texts in the input: fitted once" in first.stderr
    record = load_manifest(cache)["corpus"]
    assert record.texts == list(dict.fromkeys(LINES)) and len(set(record.keys)) == 16
    assert {p.stem for p in _entry_files(cache)} == set(record.keys)  # each text exactly once
    again = _one_worker("fit", "--file", str(path), "--cache", str(cache), *FIT)
    assert _summary(again.stdout)["corpus"] | {"seconds": 0, "texts_per_minute": 0} == \
        total | {"fitted": 0, "cached": 16, "steps": 0, "seconds": 0, "texts_per_minute": 0}


def test_faults_before_fitting_are_one_line(tmp_path):
    bad = _write_corpus(tmp_path, ["ab cd", "", "x " * 300])
    result = _one_worker("fit", "--file", str(bad), "--cache", str(tmp_path / "c"), *FIT)
    assert result.returncode == 2 and not (tmp_path / "c" / ENTRY_DIR).exists()
    assert result.stderr.strip().splitlines()[-1].startswith("error: corpus.txt line 3 ('x x x")
    (tmp_path / "a-file").write_text("not a folder")
    unwritable = _one_worker("fit", "--file", str(_write_corpus(tmp_path)), "--cache", str(tmp_path / "a-file"), *FIT)
    assert unwritable.returncode == 2 and "cannot be written" in unwritable.stderr.splitlines()[-1]


# ---- torchrun: two workers on gloo ----------------------------------------------------------------------

def test_two_workers_fit_every_text_once_and_gather_the_summary(tmp_path):
    path = _write_corpus(tmp_path)
    cache = tmp_path / "cache"
    run = _torchrun("fit", "--file", str(path), "--cache", str(cache), *FIT)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = _summary(run.stdout)
    workers, total = summary["workers"], summary["corpus"]
    plan_texts = list(dict.fromkeys(LINES))
    assert [w["rank"] for w in workers] == [0, 1] and all(w["texts"] > 0 for w in workers)
    assert sum(w["texts"] for w in workers) == total["texts"] == total["fitted"] == 16
    assert total["steps"] == sum(w["steps"] for w in workers) and total["converged"] == sum(w["converged"] for w in workers)
    record = load_manifest(cache)["corpus"]
    assert record.texts == plan_texts and {p.stem for p in _entry_files(cache)} == set(record.keys)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"key"')]
    assert sorted(r["key"] for r in rows) == sorted(record.keys)  # every text reported once, by its worker
    # each worker fitted exactly its shard: the texts whose hash names its rank
    two = ProtoCache(cache, shipped="")
    shards = Counter(corpus.shard_of(two.get(k).token_ids, 2) for k in record.keys)
    assert [shards[0], shards[1]] == [w["texts"] for w in workers]

    # the same texts fitted by one worker reach the same accuracies
    alone = tmp_path / "alone"
    single = _one_worker("fit", "--file", str(path), "--cache", str(alone), *FIT)
    assert single.returncode == 0, single.stderr
    one = ProtoCache(alone, shipped="")
    assert [two.get(k).metrics["accuracy"] for k in record.keys] == [one.get(k).metrics["accuracy"] for k in record.keys]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_killed_worker_loses_only_its_running_texts_and_a_rerun_fits_only_what_is_missing(tmp_path):
    path = _write_corpus(tmp_path)
    cache = tmp_path / "cache"
    slow = ["--model", TINY_MODEL, "--preset", "paper", "--max-steps", "150", "--batch-size", "1", "--quiet", "--json"]
    run = _torchrun("fit", "--file", str(path), "--cache", str(cache), *slow, background=True)
    try:
        deadline = time.monotonic() + 240
        while len(_entry_files(cache)) < 3 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert run.poll() is None, "the fit ended before a worker could be killed"
        workers = _children(run.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0  # torchrun reports the dead worker and stops the other
    kept = {p.stem: p.stat().st_mtime_ns for p in _entry_files(cache)}
    finished = {k for k in kept if ProtoCache(cache, shipped="").get(k).metrics.get("status") != "cancelled"}
    assert 0 < len(finished) < 16
    again = _torchrun("fit", "--file", str(path), "--cache", str(cache), *slow)
    assert again.returncode == 0, again.stderr[-2000:]
    total = _summary(again.stdout)["corpus"]
    assert total["cached"] == len(finished) and total["fitted"] == 16 - len(finished)
    assert {p.stem for p in _entry_files(cache)} == set(load_manifest(cache)["corpus"].keys)
    assert all((cache / ENTRY_DIR / f"{k}.json").stat().st_mtime_ns == kept[k] for k in finished), \
        "a finished text was fitted again"


def test_more_workers_than_texts_and_shared_m_are_said_in_one_line(tmp_path):
    path = _write_corpus(tmp_path, ["ab cd"])
    run = _torchrun("fit", "--file", str(path), "--cache", str(tmp_path / "c"), *FIT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 workers for 1 text: some workers have nothing to fit" in run.stderr
    assert _summary(run.stdout)["corpus"]["fitted"] == 1
    shared = _torchrun("fit", "--file", str(path), "--cache", str(tmp_path / "c"), "--shared-m", *FIT)
    assert shared.returncode != 0 and "cannot be split across workers" in shared.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is here: bench/gpu.py measures")
def test_the_gpu_bench_says_in_one_line_that_there_is_no_gpu():
    run = subprocess.run([sys.executable, "bench/gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "no CUDA device here: nothing to measure (run this on the GPU machine)"
