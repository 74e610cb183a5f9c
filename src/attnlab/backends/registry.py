"""Backend registry: what each kernel can do, which one ``auto`` picks, and why."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from torch import Tensor

from attnlab.functional.attention import AttentionOutput, ScoreMod
from attnlab.functional.mask_input import NormalizedMask

AUTO_NOTES = """\
Measured on a 2-core CPU (benchmarks/RESULTS.md): SDPA's fused flash kernel is the fastest for
dense and causal attention; tiled wins wherever the mask is sparse, and its memory stays
linear where SDPA would materialise a Lq x Lk mask.
An explicit backend="name" (or `with attnlab.use_backend(name)`) that cannot serve a call
raises a ValueError saying what it lacks; it never silently falls back."""


@dataclass(frozen=True)
class Capabilities:
    returns_weights: bool = False
    returns_lse: bool = False
    mask_mod: bool = True  # accepts predicate masks (maybe by materialising them)
    dense_mask: bool = True
    score_mod: bool = False
    dropout: bool = False
    backward: bool = True
    gqa: bool = True
    non_cpu: bool = True  # runs on tensors off the CPU (CUDA); False: CPU-only, never auto's choice there


@dataclass
class AttentionCall:
    """One attention request, after validation: 4-D tensors and a normalised mask."""

    q: Tensor  # (B, Hq, Lq, Dh)
    k: Tensor  # (B, Hkv, Lk, Dh)
    v: Tensor  # (B, Hkv, Lk, Dv)
    mask: NormalizedMask
    score_mod: ScoreMod | None
    scale: float
    dropout_p: float
    training: bool
    return_weights: bool
    v_finite: bool = False  # dispatch found no NaN/inf in v (kernels need not check it again)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.q.shape[0], self.q.shape[1], self.q.shape[2], self.k.shape[2])

    @property
    def dropout_active(self) -> bool:
        return self.training and self.dropout_p > 0


# The backend ``auto`` gives the calls no backend prefers: the reference, which serves every call.
AUTO_FALLBACK = "eager"


def _always(call: AttentionCall) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    capabilities: Capabilities
    run: Callable[[AttentionCall], AttentionOutput]
    auto_rank: int = 100  # lower is tried earlier by ``auto``
    # Calls auto gives this backend when it can serve them; its docstring is what
    # `attnlab backends --explain` says (explain_auto).
    prefers: Callable[[AttentionCall], bool] = field(default=_always)

    def unsupported(self, call: AttentionCall) -> list[str]:
        """Why this backend cannot serve ``call`` (empty when it can)."""
        c, why = self.capabilities, []
        if call.return_weights and not c.returns_weights:
            why.append("cannot return weights")
        if call.score_mod is not None and not c.score_mod:
            why.append("does not take a score_mod")
        if call.mask.mod is not None and not c.mask_mod:
            why.append("does not take a mask_mod")
        if (call.mask.dense is not None or call.mask.bias is not None) and not c.dense_mask:
            why.append("does not take a dense mask")
        if call.dropout_active and not c.dropout:
            why.append("does not do dropout")
        if call.q.shape[1] != call.k.shape[1] and not c.gqa:
            why.append("does not share K/V heads (GQA)")
        if call.q.device.type != "cpu" and not c.non_cpu:
            why.append(f"is CPU-only (got tensors on {call.q.device})")
        return why


_REGISTRY: dict[str, Backend] = {}
_CURRENT: ContextVar[str] = ContextVar("attnlab_backend", default="auto")


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {['auto', *_REGISTRY]}, got {name!r}")
    return _REGISTRY[name]


def current_backend() -> str:
    return _CURRENT.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with attnlab.use_backend("eager"): ...`` makes ``backend="auto"`` calls use ``name``."""
    if name != "auto":
        get_backend(name)
    token = _CURRENT.set(name)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _prefers_text(b: Backend) -> str:
    doc = inspect.getdoc(b.prefers) if b.prefers is not _always else None
    return " ".join(doc.split()) if doc else "every call it can serve"


def explain_auto() -> str:
    """The auto rule in words, generated from the registry: the same ranks, capabilities and
    ``prefers`` predicates (their docstrings) that :func:`choose_backend` uses."""
    caps = list(Capabilities().__dict__)
    lines = ['How backend="auto" chooses (`attnlab backends --explain`): backends are tried in '
             "auto_rank order; the first that can serve the call and prefers it runs it, and "
             f"{AUTO_FALLBACK} (the reference) takes what none prefers."]
    for i, b in enumerate(sorted(_REGISTRY.values(), key=lambda b: b.auto_rank), start=1):
        lacks = [c.replace("_", " ") for c in caps if not getattr(b.capabilities, c)]
        cannot = f"cannot: {', '.join(lacks)}" if lacks else "serves every call"
        lines.append(f"{i}. {b.name} (auto_rank {b.auto_rank}; {cannot}). Prefers: {_prefers_text(b)}")
    return "\n".join(lines) + "\n" + AUTO_NOTES + "\n"


def __getattr__(name: str) -> str:
    if name == "AUTO_RULE":  # the rule's text, always generated from the current registry
        return explain_auto()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def choose_backend(call: AttentionCall) -> tuple[Backend, str]:
    """The ``auto`` rule: the lowest-ranked backend that can serve and prefers the call."""
    ranked = sorted(_REGISTRY.values(), key=lambda b: b.auto_rank)
    for b in ranked:
        why = b.unsupported(call)
        if not why and b.prefers(call):
            return b, f"{b.name}: lowest auto_rank ({b.auto_rank}) that serves and prefers this call"
    fallback = get_backend(AUTO_FALLBACK)
    return fallback, f"{fallback.name}: the reference serves every call"
