"""The inspect result is typed: dataclasses the CLI reads by attribute, JSON from to_dict()."""

from __future__ import annotations

import ast
import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from attnlab.inspect.inspection import inspect_text
from attnlab.inspect.inspection_report import (
    BackendCheck,
    Focus,
    FocusedHead,
    HeadWeights,
    InspectReport,
    LayerTop,
    ModelInfo,
    TokenWeight,
)
from attnlab.models.loading import load_model


def test_inspect_text_returns_typed_parts_and_the_json_keys_tools_read():
    lm = load_model(None)  # the embedded all-MiniLM-L6-v2
    rep = inspect_text(lm, flow=True).report
    assert isinstance(rep, InspectReport)
    assert rep.focus is not None and rep.focus.token == "it"
    assert all(isinstance(lay, LayerTop) for lay in rep.top_attended)
    assert isinstance(rep.top_attended[0].mean[0], TokenWeight)
    assert all(isinstance(h, FocusedHead) for h in rep.focused_heads)
    assert rep.model.layers == 6 and rep.model.kind == "encoder"
    d = json.loads(json.dumps(rep.to_dict()))
    assert list(d) == ["model", "text", "tokens", "special", "truncated", "total_tokens", "shape", "focus",
                       "top_attended", "focused_heads", "rollout", "flow"]
    assert list(d["rollout"][0]) == ["position", "token", "weight"]
    assert list(d["top_attended"][0]) == ["layer", "mean", "heads"]


def test_the_cli_reads_no_report_by_string_keys():
    src = Path(__file__).resolve().parents[2] / "src" / "attnlab" / "cli" / "model_cmds.py"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_print_inspect")
    keyed = sorted(ast.unparse(n) for n in ast.walk(fn) if isinstance(n, ast.Subscript)
                   and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str))
    # only the patching module's next-token dict is still a dict (25 string keys before)
    assert keyed == ["nt['after']", "nt['before']"], keyed


def _small_report() -> InspectReport:
    model = ModelInfo("m", "/m", "bert", "encoder", "attnlab", 1, 1, 8, [])
    return InspectReport(model, "a b", ["a", "b"], [False, False], False, 2, [1, 1, 1, 2, 2])


def test_the_report_is_frozen_and_parts_are_added_with_replace():
    rep = _small_report()
    with pytest.raises(FrozenInstanceError):
        rep.html = "x.html"  # type: ignore[misc]
    full = replace(rep, backend_check=BackendCheck("sdpa", 0.0), focus=Focus("b", 1),
                   top_attended=[LayerTop(0, [TokenWeight("a", 0.5, 0)], [[TokenWeight("a", 0.5, 0)]])],
                   rollout=[TokenWeight("a", 0.75, 0)], flow=[TokenWeight("a", 0.25, 0)],
                   head=HeadWeights(0, 0, [[1.0, 0.0], [0.5, 0.5]]), html="p.html", png="p.png",
                   export="e.json")
    assert list(rep.to_dict()) == ["model", "text", "tokens", "special", "truncated", "total_tokens", "shape"]
    d = full.to_dict()
    assert list(d) == ["model", "text", "tokens", "special", "truncated", "total_tokens", "shape",
                       "backend_check", "focus", "top_attended", "focused_heads", "rollout", "flow", "head",
                       "html", "png", "export"]
    assert d["backend_check"] == {"backend": "sdpa", "max_abs_diff_vs_eager": 0.0}
    assert d["focus"] == {"token": "b", "position": 1}
    assert d["top_attended"][0]["heads"] == [[{"position": 0, "token": "a", "weight": 0.5}]]
    assert d["flow"] == [{"position": 0, "token": "a", "weight": 0.25}]
    assert d["head"] == {"layer": 0, "head": 0, "weights": [[1.0, 0.0], [0.5, 0.5]]}
    assert "html" not in rep.to_dict()  # replace left the original as it was


def test_without_a_focus_the_focus_parts_are_left_out():
    lm = load_model(None)
    rep = inspect_text(lm, "a cat sat on the mat").report
    assert rep.focus is None and rep.top_attended == [] and rep.flow is None
    assert list(rep.to_dict()) == ["model", "text", "tokens", "special", "truncated", "total_tokens", "shape"]


def test_inspect_refuses_a_capture_it_could_not_hold_before_running():
    from types import SimpleNamespace

    from attnlab.inspect.inspection import _check_capture_size

    llm = SimpleNamespace(max_tokens=8192, num_layers=30, num_heads=9)  # SmolLM2's shape
    _check_capture_size(llm, 20, 100)  # type: ignore[arg-type]  # 120 positions: 16 MB
    with pytest.raises(ValueError, match=r"generate_tokens: 1 text tokens \+ 5,000 generated .*27\.0 GB"):
        _check_capture_size(llm, 1, 5000)  # type: ignore[arg-type]  # used to run out of memory
    with pytest.raises(ValueError, match=r"text: 8,000 tokens .*expected at most 2 GB"):
        _check_capture_size(llm, 8000, 0)  # type: ignore[arg-type]
