"""Help pages and usage errors (issue 16, item 5): flags show no `<bool>` type, and with --json a
usage error is one JSON object naming the option, what was expected and what was given."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from attnlab.cli.main import app


def _paths(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _paths(sub, (*path, name))


def test_no_help_page_shows_a_type_for_flags():
    runner = CliRunner()
    pages = list(_paths(typer.main.get_command(app)))
    assert len(pages) > 20
    for path in pages:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "140"})
        assert res.exit_code == 0, path
        assert "<bool>" not in res.output, path  # was on every flag, --help included
    walk = runner.invoke(app, ["walk", "--help"], env={"COLUMNS": "140"}).output
    assert "--no-scale" in walk
    assert "comma- and/or space-separated" in walk


@pytest.mark.parametrize(("args", "error", "usage"), [
    (["plot-mask", "--q-len", "x"], "--q-len: expected a valid integer, got 'x'", "attnlab plot-mask"),
    (["walk", "--exampel", "it"], "--exampel: expected an option of this command (did you mean --example?), "
                                  "got an unknown option", "attnlab walk"),
    (["translate", "hi"], "--model: expected a value (it is required), got none", "attnlab translate"),
    (["render"], "FILE: expected a value (it is required), got none", "attnlab render"),
    (["walk", "extra"], "ARGS: expected no more arguments, got 'extra'", "attnlab walk"),
    (["nosuch"], "COMMAND: expected one of walk, ", "attnlab [OPTIONS] COMMAND"),
    (["experiment", "nope"], "COMMAND: expected one of bottleneck, ", "attnlab experiment"),
])
def test_usage_errors_under_json_are_one_json_object(args, error, usage):
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 2
    doc = json.loads(res.stdout)  # was click's usage box, not JSON
    assert doc["error"].startswith(error) and usage in doc["usage"]


def test_usage_errors_without_json_keep_clicks_usage_text():
    res = CliRunner().invoke(app, ["plot-mask", "--q-len", "x"])
    assert res.exit_code == 2 and "Usage: attnlab plot-mask" in res.output
    res = CliRunner().invoke(app, ["plot-mask", "--q-len", "2", "--json", "--help"])
    assert res.exit_code == 0 and "Usage: attnlab plot-mask" in res.output
    res = CliRunner().invoke(app, ["walk", "--q", "--json"])  # here --json is the value of --q
    assert res.exit_code == 2 and "error: --q: expected JSON" in res.stderr and not res.stdout
