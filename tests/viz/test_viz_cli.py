"""``attnlab plot-mask`` and ``attnlab render`` through typer's test runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from attnlab.cli import viz_cmds
from attnlab.viz import export_json

pytest.importorskip("torch")  # plot-mask materialises masks with attnlab.functional


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    viz_cmds.register(a)

    @a.callback()
    def main() -> None:  # a group, so that subcommands are addressed by name
        pass

    return a


def run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_plot_mask_json_and_files(app, tmp_path) -> None:
    png, svg = tmp_path / "m.png", tmp_path / "m.svg"
    code, out = run(app, "plot-mask", "--mask", "causal&window:1,0", "--q-len", "4",
                    "--png", str(png), "--svg", str(svg), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["matrix"] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert doc["visible_per_query"] == [1, 2, 2, 2] and doc["empty_rows"] == []
    assert doc["written"] == [str(png), str(svg)]
    assert png.read_bytes()[:4] == b"\x89PNG" and b"<svg" in svg.read_bytes()


def test_plot_mask_bottom_right_and_text(app) -> None:
    code, out = run(app, "plot-mask", "--mask", "causal:bottom-right", "--q-len", "2",
                    "--kv-len", "4", "--json")
    assert code == 0 and json.loads(out)["matrix"] == [[1, 1, 1, 0], [1, 1, 1, 1]]
    code, out = run(app, "plot-mask", "--mask", "prefix:2|full&~full", "--q-len", "3")
    assert code == 0
    assert "██·  2" in out and "███  3" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mask", "bogus"], "--mask: expected a term like causal"),
        (["--mask", "window:x,1"], "--mask: bad term 'window:x,1'"),
        (["--png", "m.jpg"], "--png: expected a file name ending in .png"),
        (["--q-len", "0"], "--q-len: expected 1..512 positions to draw, got 0"),  # names the option
    ],
)
def test_plot_mask_errors(app, args, message) -> None:
    code, out = run(app, "plot-mask", *args, "--json")
    assert code == 2
    assert message in json.loads(out)["error"]


def test_render_html_png_terminal_and_patterns(app, tmp_path) -> None:
    w = np.zeros((1, 2, 4, 4))
    w[0, 0] = np.eye(4)
    w[0, 1, :, 0] = 1.0
    src = tmp_path / "attn.json"
    export_json(w, ["a", "b", "c", "d"], path=src)
    html, png = tmp_path / "v.html", tmp_path / "g.png"
    code, out = run(app, "render", str(src), "--html", str(html), "--png", str(png), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["shape"] == [1, 2, 4, 4]
    assert [(p["head"], p["label"]) for p in doc["patterns"]] == [(0, "self"), (1, "sink")]
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, out = run(app, "render", str(src), "--head", "1", "--view", "model",
                    "--html", str(tmp_path / "m.html"))
    assert code == 0 and "layer 0, head 1: sink" in out and "wrote" in out
    code, out = run(app, "render", str(src), "--head", "5", "--json")
    assert code == 2 and "--head: expected a position in 0..1, got 5" in out
    code, out = run(app, "render", str(tmp_path / "nope.json"))
    assert code == 2 and "FILE: expected a JSON file" in out  # the argument typed, not viz's "source"
