"""Any transformers model through attnlab's attention (issue 22, item 4).

``register()`` adds ``"attnlab"`` to transformers' ``AttentionInterface`` and
``AttentionMaskInterface`` (transformers' documented way to plug in an attention function:
docs/attention_interface); a model loaded with ``attn_implementation="attnlab"`` then runs
every attention call through ``attnlab.backends.dispatch.attention`` on attnlab's current
backend (``attnlab.use_backend``) or the one given to :func:`bridge_interventions`, which also
adds masks and per-layer score_mods. Each bridged module gets attnlab hook points
(``module.attnlab_hooks.hook_q/k/v/pattern/z``); :func:`attention_modules` lists them by layer.
"""

from attnlab.models.hf_bridge.attention import (
    NAME,
    AttentionHooks,
    attention_modules,
    attnlab_attention,
    hooks_of,
    register,
)
from attnlab.models.hf_bridge.context import BridgeOptions, bridge_interventions, current_options
from attnlab.models.hf_bridge.masks import BridgeMask, attnlab_mask, tensor_mask

__all__ = [
    "NAME",
    "AttentionHooks",
    "BridgeMask",
    "BridgeOptions",
    "attention_modules",
    "attnlab_attention",
    "attnlab_mask",
    "bridge_interventions",
    "current_options",
    "hooks_of",
    "register",
    "tensor_mask",
]
