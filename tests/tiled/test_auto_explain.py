"""`attnlab backends --explain` and the auto rule read the same registry data: change the data
(ranks, prefers predicates, the fallback) and both the text and the choice follow."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from attnlab import masks
from attnlab.backends import registry
from attnlab.backends.registry import AttentionCall, choose_backend, explain_auto
from attnlab.functional.mask_input import normalize_mask


def _call(lq: int, lk: int, mask=None) -> AttentionCall:
    q, k, v = torch.zeros(1, 2, lq, 8), torch.zeros(1, 2, lk, 8), torch.zeros(1, 2, lk, 8)
    nm = normalize_mask(mask, (1, 2, lq, lk), dtype=q.dtype, device=q.device)
    return AttentionCall(q, k, v, nm, None, 0.35, 0.0, False, False)


def _listed(text: str) -> list[tuple[str, int]]:
    """The backends the text lists, in its order, with the rank it gives each."""
    return [(m[1], int(m[2])) for m in re.finditer(r"^\d+\. (\w+) \(auto_rank (\d+);", text, re.M)]


def test_the_text_lists_the_backends_in_auto_rank_order(monkeypatch):
    ranked = sorted(registry._REGISTRY.values(), key=lambda b: b.auto_rank)
    assert _listed(explain_auto()) == [(b.name, b.auto_rank) for b in ranked]
    long_window = _call(2048, 2048, masks.sliding_window(128))
    assert choose_backend(long_window)[0].name == "tiled"
    # sdpa moved to the front: the text lists it first and auto now gives it the call
    monkeypatch.setitem(registry._REGISTRY, "sdpa", replace(registry.get_backend("sdpa"), auto_rank=1))
    assert _listed(explain_auto())[0] == ("sdpa", 1)
    assert choose_backend(long_window)[0].name == "sdpa"


def test_the_fallback_the_text_names_is_the_one_auto_uses(monkeypatch):
    def never(call: AttentionCall) -> bool:
        """no call (a test)."""
        return False

    for name in list(registry._REGISTRY):
        monkeypatch.setitem(registry._REGISTRY, name, replace(registry.get_backend(name), prefers=never))
    toy = replace(registry.get_backend("eager"), name="toy", auto_rank=99)
    monkeypatch.setitem(registry._REGISTRY, "toy", toy)
    monkeypatch.setattr(registry, "AUTO_FALLBACK", "toy")
    text = explain_auto()
    assert "and toy (the reference) takes what none prefers." in text
    assert text.count("Prefers: no call (a test).") == len(registry._REGISTRY)
    assert choose_backend(_call(4, 4)) == (toy, "toy: the reference serves every call")


def test_the_cli_prints_the_generated_text(monkeypatch):
    from attnlab.cli.main import app

    monkeypatch.setitem(registry._REGISTRY, "eager", replace(registry.get_backend("eager"), auto_rank=7))
    res = CliRunner().invoke(app, ["backends", "--explain"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "1. eager (auto_rank 7; serves every call)." in res.output
    assert explain_auto() in res.output


@pytest.fixture(autouse=True)
def _registry_untouched():
    before = dict(registry._REGISTRY)
    yield
    assert before == registry._REGISTRY  # monkeypatch put every backend back
