"""What the bridged attention reads besides its arguments: the backend and the interventions.

transformers calls the registered attention function with the module, q, k, v and the mask it
built, nothing more; a per-call choice (backend, an extra mask, per-layer score_mods) must
therefore travel beside the call. A :class:`contextvars.ContextVar` carries it, the way
``attnlab.use_backend`` carries the backend (backends/registry.py): thread- and task-local,
restored on exit, nestable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from attnlab.arguments import expect_int
from attnlab.backends.registry import get_backend
from attnlab.functional.attention import ScoreMod
from attnlab.functional.masks import Mask, as_mask
from attnlab.functional.score_mods import compose


@dataclass(frozen=True)
class BridgeOptions:
    """The settings in force: ``backend`` None = attnlab's current backend
    (``attnlab.use_backend``); ``mask`` ANDed in every bridged layer; ``layer_masks`` and
    ``score_mods`` by ``layer_idx``. Masks and score_mods see positions in the whole sequence
    (cached keys included), so a knockout of key 3 stays on key 3 during generation."""

    backend: str | None = None
    mask: Mask | None = None
    layer_masks: Mapping[int, Mask] = field(default_factory=dict)
    score_mods: Mapping[int, ScoreMod] = field(default_factory=dict)

    def mask_for(self, layer: int | None) -> Mask | None:
        own = None if layer is None else self.layer_masks.get(layer)
        if self.mask is None or own is None:
            return self.mask if own is None else own
        return self.mask & own

    def score_mod_for(self, layer: int | None) -> ScoreMod | None:
        return None if layer is None else self.score_mods.get(layer)


_NONE = BridgeOptions()
_OPTIONS: ContextVar[BridgeOptions | None] = ContextVar("attnlab_hf_bridge", default=None)


def current_options() -> BridgeOptions:
    return _OPTIONS.get() or _NONE


def _layer_keys(name: str, given: object) -> dict[int, object]:
    if not isinstance(given, Mapping):
        raise TypeError(f"{name}: expected a mapping {{layer_idx: ...}}, got {type(given).__name__}")
    for k in given:
        expect_int(name, k, 0, expected="layer indices (ints >= 0) as keys")
    return dict(given)


def _merge_masks(outer: Mapping[int, Mask], inner: Mapping[int, Mask]) -> dict[int, Mask]:
    out = dict(outer)
    for k, m in inner.items():
        out[k] = out[k] & m if k in out else m
    return out


@contextlib.contextmanager
def bridge_interventions(*, mask: object = None, score_mods: Mapping[int, ScoreMod] | None = None,
                         backend: str | None = None) -> Iterator[BridgeOptions]:
    """Within the block, models loaded with ``attn_implementation="attnlab"`` run with these.

    ``mask``: a mask_mod / :class:`Mask` (True = may attend) ANDed with the model's own mask in
    every layer, or a mapping ``{layer_idx: mask_mod}`` for chosen layers. ``score_mods``:
    ``{layer_idx: score_mod(score, b, h, q_idx, kv_idx)}``, applied after the model's own
    (Gemma 2's soft-capping). ``backend``: an attnlab backend name for these calls (None keeps
    ``attnlab.use_backend``'s). Nested blocks AND their masks, compose their score_mods (outer
    first) and the innermost backend wins.
    """
    if backend is not None:
        get_backend(backend)  # a bad name fails here, naming the choices
    outer = current_options()
    everywhere: Mask | None = None
    layer_masks: dict[int, Mask] = {}
    if isinstance(mask, Mapping):
        layer_masks = {k: as_mask(m, f"mask[{k}]") for k, m in _layer_keys("mask", mask).items()}
    elif mask is not None:
        everywhere = as_mask(mask, "mask")
    mods: dict[int, ScoreMod] = dict(outer.score_mods)
    for k, f in _layer_keys("score_mods", score_mods or {}).items():
        if not callable(f):
            raise TypeError(f"score_mods[{k}]: expected a callable(score, b, h, q_idx, kv_idx), "
                            f"got {type(f).__name__}")
        mods[k] = compose(mods[k], f) if k in mods else f  # type: ignore[arg-type]
    if outer.mask is not None and everywhere is not None:
        everywhere = outer.mask & everywhere
    opts = BridgeOptions(
        backend=outer.backend if backend is None else backend,
        mask=outer.mask if everywhere is None else everywhere,
        layer_masks=_merge_masks(outer.layer_masks, layer_masks),
        score_mods=mods,
    )
    token = _OPTIONS.set(opts)
    try:
        yield opts
    finally:
        _OPTIONS.reset(token)
