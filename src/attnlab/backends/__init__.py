"""Interchangeable attention kernels behind one signature, with declared capabilities."""

from attnlab.backends import eager as _eager  # noqa: F401  (registers "eager")
from attnlab.backends import sdpa as _sdpa  # noqa: F401  (registers "sdpa")
from attnlab.backends import tiled as _tiled  # noqa: F401  (registers "tiled")
from attnlab.backends.dispatch import attention
from attnlab.backends.registry import (
    AttentionCall,
    Backend,
    Capabilities,
    backend_names,
    choose_backend,
    current_backend,
    get_backend,
    register_backend,
    use_backend,
)
from attnlab.backends.tiled import (
    BlockMap,
    block_map,
    choose_blocks,
    count_allowed,
    tiled_attention,
    tiled_options,
)
from attnlab.backends.weights import weights_for

__all__ = [
    "AttentionCall",
    "Backend",
    "BlockMap",
    "Capabilities",
    "attention",
    "backend_names",
    "block_map",
    "choose_backend",
    "choose_blocks",
    "count_allowed",
    "current_backend",
    "get_backend",
    "register_backend",
    "tiled_attention",
    "tiled_options",
    "use_backend",
    "weights_for",
]
