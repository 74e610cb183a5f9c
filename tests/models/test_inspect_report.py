"""The inspect result is typed: dataclasses the CLI reads by attribute, JSON from to_dict()."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from attnlab.inspect.inspect_report import FocusedHead, InspectReport, LayerTop, TokenWeight
from attnlab.inspect.report import inspect_text
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
