"""Every ```python snippet of docs/models.md and docs/viz.md runs, in order, in one namespace per
page, as written (issue 16, item 2: documented calls that failed). The folder docs/models.md
loads as ``path/to/gpt2`` is made here: a tiny random GPT-2, in a scratch working directory that
also receives the files the snippets write."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from .conftest import make_gpt2

DOCS = Path(__file__).resolve().parents[2] / "docs"


def snippets(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(encoding="utf-8"), flags=re.S)


def run(name: str) -> dict:
    ns: dict = {"__name__": f"docs_{name}"}
    for code in snippets(name):
        exec(compile(code, str(DOCS / name), "exec"), ns)
    return ns


@pytest.mark.slow
def test_models_doc_snippets_run(tmp_path, monkeypatch):
    make_gpt2(tmp_path / "path" / "to" / "gpt2")
    monkeypatch.chdir(tmp_path)
    assert len(snippets("models.md")) == 5
    ns = run("models.md")
    # What the comments next to the calls say.
    assert ns["cache"].weights.shape == (6, 12, 15, 15) and ns["cache"].find("it") == 10
    assert ns["out"].attentions is not None and ns["fast"].attentions is None  # backend="sdpa"
    torch.testing.assert_close(ns["fast"].last_hidden_state, ns["out"].last_hidden_state,
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(ns["eff"].patched.attentions[1][0, 2], ns["prev_token_pattern"])
    best = ns["cmp"].best
    assert (best.layer, best.head) == (3, 1)
    assert ns["gen"].new_tokens and ns["gen"].steps[1].shape[2] == 1
    assert ns["acts"].site(1, "attn.pattern").shape[:2] == (1, 4) and ns["res"].attentions is None
    assert not torch.allclose(ns["ablated_logits"], ns["res"].logits)
    row = ns["rollout"](ns["cache"])[10]  # rollout(capture(...)) used to raise AttributeError
    assert float(row.sum()) == pytest.approx(1.0) and int(row.argmax()) == 0  # [CLS]


@pytest.mark.slow
def test_viz_doc_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(snippets("viz.md")) >= 10
    ns = run("viz.md")
    assert ns["tokens"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "because", "it", "was",
                            "tired", ".", "[SEP]"]
    assert ns["weights"].shape == (6, 12, 13, 13)
    assert ns["report"].label == "previous"  # layer 0 head 2, as the doc says
    assert ns["data"].weights.shape == (6, 12, 13, 13)
    for f in ("heatmap.svg", "heatmap.png", "grid.png", "alignment.png", "mask.png",
              "head_view_static.png", "head.html", "model.html", "compare.html", "attention.json"):
        assert (tmp_path / f).stat().st_size > 1000, f
