"""Interchangeable attention kernels behind one signature, with declared capabilities."""

from attnlab.backends import eager as _eager  # noqa: F401  (registers "eager")
from attnlab.backends import sdpa as _sdpa  # noqa: F401  (registers "sdpa")
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

__all__ = [
    "AttentionCall",
    "Backend",
    "Capabilities",
    "attention",
    "backend_names",
    "choose_backend",
    "current_backend",
    "get_backend",
    "register_backend",
    "use_backend",
]
