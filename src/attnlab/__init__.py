"""attnlab: attention computed correctly and fast on a CPU, shown, trained and inspected.

>>> import torch, attnlab
>>> q = k = v = torch.randn(1, 2, 5, 8)
>>> out = attnlab.attention(q, k, v, mask=attnlab.masks.causal(), return_weights=True)
>>> out.weights.shape
torch.Size([1, 2, 5, 5])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Names resolve on first use (PEP 562), so that `import attnlab.viz` (numpy/matplotlib only) or
# `attnlab --help` does not import torch; `attnlab.attention` imports the backends when touched.
_WHERE = {
    "attention": "attnlab.backends", "backend_names": "attnlab.backends", "use_backend": "attnlab.backends",
    "masks": "attnlab.functional", "positional": "attnlab.functional", "score_mods": "attnlab.functional",
    "scores": "attnlab.functional",
    "AttentionOutput": "attnlab.functional.attention",
    "masked_softmax": "attnlab.functional.softmax",
    "KVCache": "attnlab.modules.multihead", "MultiHeadAttention": "attnlab.modules.multihead",
    "MultiHeadOutput": "attnlab.modules.multihead",
}


def __getattr__(name: str) -> object:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
    package = importlib.import_module(mod)
    # masks, scores, ...: submodules of attnlab.functional, imported on demand like any other
    value = getattr(package, name) if hasattr(package, name) else importlib.import_module(f"{mod}.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # the public names once each (a resolved name is also in globals()), not the loader's own
    return sorted({*__all__, "__version__"} | {n for n in globals() if n.startswith("__")})


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from attnlab.backends import attention, backend_names, use_backend
    from attnlab.functional import masks, positional, score_mods, scores
    from attnlab.functional.attention import AttentionOutput
    from attnlab.functional.softmax import masked_softmax
    from attnlab.modules.multihead import KVCache, MultiHeadAttention, MultiHeadOutput

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
