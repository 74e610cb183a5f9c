"""Open a real model's attention: capture, patch, analyse, compare, detect heads, rollout, flow.

Three rooms: this package (capture and analysis of any model's attention), ``inspect.llm``
(decoding, steering and the prompt experiments) and ``inspect.server`` (the local viewer).

>>> from attnlab.models import load_model
>>> from attnlab.inspect import capture, compare
>>> lm = load_model()                      # the embedded all-MiniLM-L6-v2
>>> cache = capture(lm, "The animal didn't cross the street because it was too tired")
>>> cache[3, 1].shape                      # layer 3, head 1: (q_len, k_len)
torch.Size([15, 15])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names resolve on first use (PEP 562): `attnlab inspect` loads capture and analysis, not the
# eight modules of patching, rollout, tradeoff and generation a command never touches.
_WHERE = {
    "focused_heads": "attnlab.inspect.analysis", "top_attended": "attnlab.inspect.analysis",
    "AttentionCache": "attnlab.inspect.attention_cache", "capture": "attnlab.inspect.attention_cache",
    "find_token": "attnlab.inspect.attention_cache",
    "GenerationCapture": "attnlab.inspect.llm.generation_capture",
    "generate": "attnlab.inspect.llm.generation_capture",
    "Comparison": "attnlab.inspect.comparison", "HeadShift": "attnlab.inspect.comparison",
    "compare": "attnlab.inspect.comparison",
    "attention_flow": "attnlab.inspect.flow",
    "HeadScores": "attnlab.inspect.heads", "detect_heads": "attnlab.inspect.heads",
    "Ablation": "attnlab.inspect.patching", "PatternPatch": "attnlab.inspect.patching",
    "ablated": "attnlab.inspect.patching", "patch_effect": "attnlab.inspect.patching",
    "record_scores": "attnlab.inspect.patching",
    "rollout": "attnlab.inspect.attention_rollout",
    "tradeoff": "attnlab.inspect.window_tradeoff",
}


def __getattr__(name: str) -> object:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'attnlab.inspect' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__} | {n for n in globals() if n.startswith("__")})


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from attnlab.inspect.analysis import focused_heads, top_attended
    from attnlab.inspect.attention_cache import AttentionCache, capture, find_token
    from attnlab.inspect.attention_rollout import rollout
    from attnlab.inspect.comparison import Comparison, HeadShift, compare
    from attnlab.inspect.flow import attention_flow
    from attnlab.inspect.heads import HeadScores, detect_heads
    from attnlab.inspect.llm.generation_capture import GenerationCapture, generate
    from attnlab.inspect.patching import Ablation, PatternPatch, ablated, patch_effect, record_scores
    from attnlab.inspect.window_tradeoff import tradeoff

__all__ = [
    "Ablation",
    "AttentionCache",
    "Comparison",
    "GenerationCapture",
    "HeadScores",
    "HeadShift",
    "PatternPatch",
    "ablated",
    "attention_flow",
    "capture",
    "compare",
    "detect_heads",
    "find_token",
    "focused_heads",
    "generate",
    "patch_effect",
    "record_scores",
    "rollout",
    "top_attended",
    "tradeoff",
]
