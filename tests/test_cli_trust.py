"""python -m core with bad input (issue 13): one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.engine.models import TINY_MODEL

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_invalid_utf8_on_the_command_line_is_one_clear_line(tmp_path):
    # $'\xff' reaches Python as the lone surrogate '\udcff' (surrogateescape); it failed in the tokenizer with
    # "TypeError: TextEncodeInput must be Union[...]" after loading the model.
    done = _run("fit", "--text", b"caf\xe9", "--model", TINY_MODEL, "--cache", str(tmp_path))
    assert done.returncode == 2
    line = _error_line(done.stderr.decode("utf-8", "backslashreplace"))
    assert "--text is not valid UTF-8" in line and "byte 0xe9 at character 4" in line


def test_invalid_utf8_in_any_other_value_is_refused_too(tmp_path, capsys):
    from core.__main__ import main

    assert main(["fit", "--text", "ok", "--model", "org/\udcff", "--cache", str(tmp_path)]) == 2
    assert "--model is not valid UTF-8" in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--lr", "inf", "not a finite number"),
    ("--lr", "nan", "not a finite number"),
    ("--lr", "-inf", "not a finite number"),
    ("--lr", "1e999", "not a finite number"),
    ("--threshold", "nan", "not a finite number"),
    ("--threshold", "inf", "not a finite number"),
    ("--lr", "0", "must be > 0"),
    ("--threshold", "1.5", "must be in (0, 1]"),
    ("--max-steps", "0", "must be >= 1"),
    ("--batch-size", "0", "must be >= 1"),
    ("--redraw-after", "-1", "must be >= 0"),
    ("--max-steps", "1e3", "not a whole number"),
    ("--lr", "fast", "not a number"),
])
def test_bad_numbers_are_refused_while_parsing_the_arguments(capsys, option, value, expected):
    from core.__main__ import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["fit", "--text", "x", f"{option}={value}"])  # = lets "-inf" be a value
    assert exited.value.code == 2
    line = _error_line(capsys.readouterr().err)
    assert f"argument {option}" in line and expected in line


def test_good_numbers_still_reach_the_config():
    from core.__main__ import _config, build_parser

    config = _config(build_parser().parse_args(["fit", "--text", "x", "--lr", "1e-3", "--threshold", "1",
                                                "--max-steps", "7", "--seed", "-3", "--redraw-after", "0"]))
    assert (config.lr, config.threshold, config.max_steps, config.seed, config.redraw_after) == (1e-3, 1, 7, -3, 0)


def _bad_entry(cache: Path) -> str:
    folder = cache / "prototokens"
    folder.mkdir(parents=True)
    name = "ab" * 32 + ".json"
    (folder / name).write_text("{not json")
    return name


def test_list_prints_each_warning_once(tmp_path):
    # A real process: pytest's own log handlers hide Python's last-resort handler, which printed the cache's
    # log record while `list` printed the same warning from cache.warnings.
    name = _bad_entry(tmp_path)
    done = _run("list", "--cache", str(tmp_path))
    assert done.returncode == 0
    lines = [line for line in done.stderr.decode().splitlines() if name in line]
    assert len(lines) == 1 and lines[0].startswith("warning: Ignoring unreadable cache file"), done.stderr


@pytest.mark.parametrize(("filename", "content", "expected"), [
    ("deep.jsonl", b'{"text": ' + b"[" * 100_000 + b"}\n", "nested too deeply"),
    ("deep.json", b"[" * 100_000, "nested too deeply"),
    ("latin1.txt", b"caf\xe9\n", "cannot decode byte 0xe9 at position 3 as UTF-8"),
    ("many.txt", b"t\n" * 10_001, "the limit is 10,000 rows"),
    ("lone.jsonl", b'{"text": "\\udcff"}\n', "holds an invalid character"),
])
def test_bad_files_are_one_clear_line(tmp_path, capsys, filename, content, expected):
    from core.__main__ import main

    path = tmp_path / filename
    path.write_bytes(content)
    assert main(["fit", "--file", str(path), "--model", TINY_MODEL, "--max-steps", "1", "--quiet",
                 "--cache", str(tmp_path / "cache")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert expected in line and filename in line


def test_a_file_over_the_byte_cap_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    from core.__main__ import main
    from core.texts.textsets import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB

    path = tmp_path / "huge.txt"
    with open(path, "wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a file over the cap"))
    assert main(["fit", "--file", str(path), "--cache", str(tmp_path / "cache")]) == 2
    assert f"the limit is {MAX_UPLOAD_MB} MB" in _error_line(capsys.readouterr().err)


def test_txt_files_keep_their_lines_as_they_are(tmp_path):
    from core.__main__ import _read_texts, build_parser

    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeff  indented\n\nsame\nsame\n".encode())
    args = build_parser().parse_args(["fit", "--file", str(path)])
    assert _read_texts(args) == (["  indented", "same", "same"],
                                 ["texts.txt line 1", "texts.txt line 3", "texts.txt line 4"])


@pytest.mark.parametrize(("filename", "content"), [
    ("texts.jsonl", '{"text": "Rain at dawn.", "group": "a"}\n{"text": "Snow, then sun.", "note": 1}\n'),
    ("texts.json", '[{"text": "Rain at dawn."}, {"text": "Snow, then sun."}]'),
    ("texts.csv", 'group,text\na,Rain at dawn.\nb,"Snow, then sun."\n'),
    ("texts.txt", "Rain at dawn.\nSnow, then sun.\n"),
])
def test_a_valid_file_fits_each_of_its_texts_into_the_cache(tmp_path, capsys, filename, content):
    """`core fit --file` on each format it reads: one fit per text (a CSV's quoted comma kept), stored in the
    cache under the key printed for it, and exit code 0."""
    import json

    from core.__main__ import main
    from core.engine.cache import ProtoCache

    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    cache = tmp_path / "cache"
    assert main(["fit", "--file", str(path), "--model", TINY_MODEL, "--max-steps", "2", "--quiet", "--json",
                 "--cache", str(cache)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"key"')]
    stored = ProtoCache(cache)
    entries = [stored.get(row["key"]) for row in rows]
    assert sorted(entry.text for entry in entries) == ["Rain at dawn.", "Snow, then sun."]
    assert [entry.metrics["steps"] for entry in entries] == [row["steps"] for row in rows]


def test_list_shows_what_fit_stored(tmp_path):
    """`core list` lists an entry `core fit` just stored: its key, text, accuracy and steps, as JSON and as a line."""
    import json

    fitted = _run("fit", "--text", "Hello world", "--model", TINY_MODEL, "--max-steps", "600", "--json", "--quiet",
                  "--cache", str(tmp_path))
    assert fitted.returncode == 0, fitted.stderr
    row = json.loads(fitted.stdout.decode().splitlines()[0])
    listed = _run("list", "--cache", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    [mine] = [r for r in rows if r["key"] == row["key"]]
    assert mine["text"] == "Hello world" and mine["steps"] == row["steps"]
    assert mine["accuracy"] == pytest.approx(row["accuracy"])
    plain = _run("list", "--cache", str(tmp_path)).stdout.decode().splitlines()
    [line] = [line for line in plain if line.startswith(row["key"][:12])]
    assert f"{row['accuracy']:.3f}" in line and "'Hello world'" in line


def test_ctrl_c_in_fit_exits_130_and_keeps_the_best_vectors(tmp_path):
    """SIGINT during `core fit`: the fit stops, its best vectors so far are stored (status cancelled) and
    printed, and the exit code is 130, as a shell reports an interrupted command."""
    import json
    import signal
    import time

    from core.engine.cache import ProtoCache

    process = subprocess.Popen(
        [sys.executable, "-m", "core", "fit", "--text", "Hello world, a text that keeps the fit busy", "--model",
         TINY_MODEL, "--threshold", "1", "--max-steps", "100000", "--json", "--cache", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        # Ctrl-C's default action, as a shell gives a command it runs: a child inherits an ignored SIGINT, and
        # something earlier in a full test run leaves the test process ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # the progress bar on stderr counts steps; wait until a few have run
        import re

        seen = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            chunk = process.stderr.read1(4096)
            if not chunk:
                break
            seen += chunk
            steps = [int(n) for n in re.findall(rb"(\d+)/100000", seen)]
            if steps and max(steps) >= 5:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, (process.returncode, (seen + err).decode()[-2000:])
    said = (out + err).decode()[-2000:]
    assert b"Traceback" not in err, said
    row = json.loads(out.decode().splitlines()[0])
    entry = ProtoCache(tmp_path).get(row["key"])
    assert entry is not None and entry.metrics["status"] == "cancelled" and entry.metrics["steps"] >= 5, said
    assert row["steps"] == entry.metrics["steps"], said
