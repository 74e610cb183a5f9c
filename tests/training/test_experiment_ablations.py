"""Issue 12 (d): `attnlab experiment ablations` (heads x positions, Vaswani et al. Table 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.training.experiments.ablations import (
    HEADS,
    POSITIONS,
    run_ablations,
    variant_configs,
)
from attnlab.training.experiments.common import deterministic_view

NAMES = ["h1-sinusoidal", "h2-sinusoidal", "h4-sinusoidal", "h8-sinusoidal", "h4-learned",
         "h4-rotary", "h4-none"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One quick run through the CLI, shared by the tests below (seconds)."""
    out = tmp_path_factory.mktemp("ablations")
    res = CliRunner().invoke(app, ["experiment", "ablations", "--quick", "--out", str(out),
                                   "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_cli_writes_the_files_and_both_tables(cli_run: tuple[Path, dict[str, Any]]) -> None:
    out, got = cli_run
    for name in ("results.json", "table.md", "ablations.png"):
        assert (out / name).stat().st_size > 0
    assert [s["variant"] for s in got["summary"]] == NAMES  # the shared h4-sinusoidal once
    assert all((out / n / "results.json").is_file() for n in NAMES)  # one run folder each
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == got["summary"] and saved["threads"] == 1
    assert saved["heads"] == list(HEADS) and saved["positions"] == list(POSITIONS)
    for s in got["summary"]:
        assert s["parameters"] > 0 and s["valid_loss"] > 0 and s["d_head"] * s["heads"] == 16
        assert s["steps"] == 10 and 0 <= s["test_bleu"] <= 100
    by_name = {s["variant"]: s for s in got["summary"]}
    # learned positions add two tables (source, target) of max_len x d_model parameters
    assert by_name["h4-learned"]["parameters"] - by_name["h4-sinusoidal"]["parameters"] \
        == 2 * 256 * 16
    assert {r["variant"] for r in got["rows"]} == set(NAMES)
    table = (out / "table.md").read_text()
    assert "| heads | d_head |" in table and "| positions | d_head |" in table
    assert "| rotary | 4 |" in table and "| 8 | 2 |" in table


def test_deterministic_and_reused(cli_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, got = cli_run
    again = run_ablations(tmp_path, quick=True, threads=1)  # trained afresh, same seed
    assert deterministic_view(again.summary) == deterministic_view(got["summary"])
    assert again.rows == got["rows"]  # BLEU by source length: the same table twice
    reused = run_ablations(out, quick=True, threads=1)  # finished folders are read back
    assert reused.summary == got["summary"]  # clock columns too: nothing was retrained


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["experiment", "ablations", "--quick", "--out", str(tmp_path / "x")]
    bad = runner.invoke(app, [*base, "--threads", "-1"])
    assert bad.exit_code == 2 and "--threads: expected an integer from 1 to" in bad.output
    assert "Traceback" not in bad.output
    bad = runner.invoke(app, [*base, "--set", "model.nope=1", "--json"])
    assert bad.exit_code == 2 and "model.nope" in json.loads(bad.stdout)["error"]
    bad = runner.invoke(app, [*base, "--set", "model.heads=2", "--json"])
    assert bad.exit_code == 2 and "varies" in json.loads(bad.stdout)["error"]
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_other_settings_in_the_folder_are_refused(cli_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = cli_run
    with pytest.raises(ValueError, match="--out"):
        run_ablations(out, quick=True, threads=1, overrides=["model.ffn=48"])


def test_variants_share_everything_but_heads_and_positions() -> None:
    cfgs = variant_configs(threads=2)
    assert list(cfgs) == NAMES
    dicts = [c.to_dict() for c in cfgs.values()]
    for d in dicts:
        assert d["model"]["d_model"] == 64 and d["train"]["threads"] == 2
        d["model"].pop("heads"), d["model"].pop("positions")
    assert all(d == dicts[0] for d in dicts)
