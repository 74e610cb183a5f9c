"""Open a real model's attention: capture, patch, analyse, compare, detect heads, rollout, flow.

>>> from attnlab.models import load_model
>>> from attnlab.inspect import capture, compare
>>> lm = load_model()                      # the embedded all-MiniLM-L6-v2
>>> cache = capture(lm, "The animal didn't cross the street because it was too tired")
>>> cache[3, 1].shape                      # layer 3, head 1: (q_len, k_len)
torch.Size([15, 15])
"""

from attnlab.inspect.analysis import focused_heads, top_attended
from attnlab.inspect.capture import AttentionCache, GenerationCapture, capture, find_token, generate
from attnlab.inspect.compare import Comparison, HeadShift, compare
from attnlab.inspect.flow import attention_flow
from attnlab.inspect.heads import HeadScores, detect_heads
from attnlab.inspect.patching import Ablation, PatternPatch, ablated, patch_effect, record_scores
from attnlab.inspect.rollout import rollout
from attnlab.inspect.tradeoff import tradeoff

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
