"""Sizes and counts the CLI takes from the user: capped or checked, one clear line (issue 16, item 3)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from attnlab.cli.main import app


def _run(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(app, [*args, "--json"])
    return res.exit_code, json.loads(res.output)


def test_plot_mask_caps_the_drawn_size_and_says_how_to_slice():
    code, out = _run("plot-mask", "--q-len", "100000")  # was 1.7 M lines / a 74 GiB MemoryError
    assert code == 2 and "expected 1..512 positions to draw, got 100000" in out["error"]
    assert "count_allowed" in out["error"]
    code, out = _run("plot-mask", "--q-len", "512")
    assert code == 0 and len(out["matrix"]) == 512


def test_token_lists_take_commas_or_spaces_and_a_wrong_count_is_an_error():
    code, out = _run("plot-mask", "--q-len", "3", "--tokens", "the,cat sat")
    assert code == 0
    code, out = _run("plot-mask", "--q-len", "4", "--tokens", "a,b,c")
    assert code == 2 and out["error"] == "--tokens: expected 4 labels (one per key position), got 3"
    code, out = _run("walk", "--q", "[[1,0],[0,1]]", "--tokens", "a b")
    assert code == 0 and out["q_tokens"] == ["a", "b"] and out["k_tokens"] == ["a", "b"]
    code, out = _run("walk", "--q", "[[1,0],[0,1]]", "--tokens", "a,b,c")  # was replaced by q0/q1
    assert code == 2 and out["error"].startswith("--tokens: expected 2 labels (one per row of --q and --k)")


def test_walk_refuses_overflow_instead_of_printing_infinity():
    res = CliRunner().invoke(app, ["walk", "--q", "[[1e308,1e308]]", "--json"])
    assert res.exit_code == 2 and "Infinity" not in res.output and "NaN" not in res.output
    assert "overflow float64" in json.loads(res.output)["error"]
