"""The embedded model end to end: fit, one-pass reconstruction from the cache, cache hit; the CLI."""

import json
import subprocess
import sys

import pytest
import torch

import core.engine.fit
from core.engine.fit import fit_and_cache, preset
from core.engine.models import TINY_MODEL
from core.engine.reconstruct import reconstruct
from tests.conftest import EMBEDDED_CONFIG_OVERRIDES, EMBEDDED_TEXTS, REPO


@pytest.mark.embedded
def test_short_text_fits_and_one_pass_decodes_it_exactly(embedded_lm, embedded_fitted):
    entry = embedded_fitted[0].entry
    assert 10 <= entry.n_tokens <= 16
    assert entry.metrics["accuracy"] == 1.0 and entry.metrics["converged"]
    rec = reconstruct(embedded_lm, entry.e, entry.m, entry.token_ids, entry.layout)
    assert rec.metrics.accuracy == 1.0
    assert rec.text == EMBEDDED_TEXTS[0]


@pytest.mark.embedded
def test_second_fit_is_a_cache_hit(embedded_lm, embedded_fitted, embedded_cache, monkeypatch):
    def no_optimising(*args, **kwargs):
        raise AssertionError("a cached text must not be optimised again")

    monkeypatch.setattr(core.engine.fit, "_fit_items", no_optimising)
    again = fit_and_cache(embedded_lm, EMBEDDED_TEXTS, preset("fast", **EMBEDDED_CONFIG_OVERRIDES), embedded_cache)
    assert all(o.cached for o in again)
    for first, second in zip(embedded_fitted, again):
        assert torch.equal(first.entry.e, second.entry.e) and torch.equal(first.entry.m, second.entry.m)


def _cli(*args, cache):
    return subprocess.run([sys.executable, "-m", "core", *args, "--cache", str(cache)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_fit_json_then_cache_hit(tmp_path):
    first = _cli("fit", "--text", "Hello world", "--model", TINY_MODEL, "--max-steps", "600", "--json", cache=tmp_path)
    assert first.returncode == 0, first.stderr
    row = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(row) == {"key", "n_tokens", "accuracy", "steps", "converged", "cached", "reconstruction"}
    assert row["converged"] and row["reconstruction"] == "Hello world" and not row["cached"]
    assert "fitting" in first.stderr  # the progress bar
    second = _cli("fit", "--text", "Hello world", "--model", TINY_MODEL, "--max-steps", "600", "--json", cache=tmp_path)
    assert json.loads(second.stdout.strip())["cached"] is True


@pytest.mark.parametrize("args,message", [
    (["fit", "--text", "   ", "--model", TINY_MODEL], "empty"),
    (["fit", "--text", "x" * 400, "--model", TINY_MODEL], "tokens"),
    (["fit", "--model", TINY_MODEL], "Nothing to fit"),
    (["fit", "--file", "/no/such/file.txt", "--model", TINY_MODEL], "No such file"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    from core.__main__ import main

    assert main([*args, "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_cli_fit_settings_and_prefit_flags_reach_the_library(monkeypatch):
    import core.shipped.prefit
    from core.__main__ import _config, build_parser, main

    args = build_parser().parse_args(["fit", "--text", "x", "--preset", "fast", "--init", "normal", "--redraw-after", "0"])
    config = _config(args)
    assert (config.preset, config.init, config.redraw_after, config.lr) == ("fast", "normal", 0, 0.05)
    fast = _config(build_parser().parse_args(["fit", "--text", "x", "--preset", "fast"]))
    assert (fast.redraw_after, fast.redraw_plateau) == (20, 100)
    args = build_parser().parse_args(["fit", "--text", "x", "--preset", "fast", "--redraw-plateau", "0"])
    assert _config(args).redraw_plateau == 0
    assert _config(build_parser().parse_args(["fit", "--text", "x", "--compute", "bfloat16"])).compute == "bfloat16"
    assert fast.compute == "" and fast.start == "mean"
    parse = build_parser().parse_args
    assert _config(parse(["fit", "--text", "x", "--preset", "fast", "--start", "nearest"])).start == "nearest"
    assert _config(parse(["fit", "--text", "x", "--preset", "fast", "--start", "draw"])).start == ""
    assert _config(parse(["fit", "--text", "x", "--start", "mean"])).start == "mean"
    shared = _config(parse(["fit", "--text", "x", "--preset", "fast", "--shared-m"]))
    assert shared.shared_m and shared.start == ""  # a shared m is fitted from draws
    seen = {}
    monkeypatch.setattr(core.shipped.prefit, "prefit_builtin", lambda **kwargs: seen.update(kwargs))
    assert main(["prefit", "--sets", "syntax", "--no-sweep", "--batch-size", "16"]) == 0
    assert seen["sweep"] is False and seen["sets"] == ["syntax"] and seen["batch_size"] == 16 and seen["fit"]
