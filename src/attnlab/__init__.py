"""attnlab: attention computed correctly and fast on a CPU, shown, trained and inspected.

>>> import torch, attnlab
>>> q = k = v = torch.randn(1, 2, 5, 8)
>>> out = attnlab.attention(q, k, v, mask=attnlab.masks.causal(), return_weights=True)
>>> out.weights.shape
torch.Size([1, 2, 5, 5])
"""

from attnlab.backends import attention, backend_names, use_backend
from attnlab.functional import masks, positional, score_mods, scores
from attnlab.functional.attention import AttentionOutput
from attnlab.functional.softmax import masked_softmax
from attnlab.modules.multihead import KVCache, MultiHeadAttention, MultiHeadOutput

__version__ = "0.1.0"

__all__ = [
    "AttentionOutput",
    "KVCache",
    "MultiHeadAttention",
    "MultiHeadOutput",
    "attention",
    "backend_names",
    "masked_softmax",
    "masks",
    "positional",
    "score_mods",
    "scores",
    "use_backend",
]
