"""Linear layers that read the same input, run as one matmul: attention's q/k/v projections
(``Concat(x W^Q, x W^K, x W^V) = x Concat(W^Q, W^K, W^V)``, Vaswani et al. 2017 §3.2.2) and a
gated MLP's gate/up pair (Shazeer 2020). A decode step multiplies one row by each weight, so
every matmul is a kernel call and a few casts around it: q/k/v and gate/up as two calls
instead of five per layer.

The layers keep their own parameters (their names, hooks on the attention's ``hook_q`` etc.,
state dicts, training): :class:`FusedRows` stacks their weights' rows into one tensor and points
each layer's weight at its slice of it, the way FSDP's flat parameters do, so the layers and
the stack read the same memory and nothing is held twice. A stack is used only while that is
still true (no weight re-assigned, moved or converted since), without autograd and without a
module hook on a layer; otherwise the layers run one by one, as before.

``nn.Linear`` stacks ``weight`` and ``bias``; another layer type takes part by a classmethod
``stack_rows(layers) -> (module, names)``: the module computing all layers' rows, and the names
of the tensors it re-pointed (``Int8Linear``: int8 rows with their per-row scales;
``Int4Linear``: packed 4-bit rows, with a copy of the scales kept per layer).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module


class _StackedLinear(nn.Module):
    """``F.linear`` with the stacked rows of several ``nn.Linear`` (not registered anywhere: the
    layers own the parameters, this only reads them)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias  # (ΣN, K), (ΣN,): plain tensors, not parameters

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)  # (..., ΣN)


def _stack_linears(layers: Sequence[nn.Linear]) -> tuple[nn.Module, tuple[str, ...]]:
    with torch.no_grad():
        w = torch.cat([m.weight for m in layers])  # (ΣN, K)
        b = None if layers[0].bias is None else torch.cat([m.bias for m in layers])  # (ΣN,)
        start = 0
        for m in layers:
            n = m.out_features
            m.weight.data = w[start : start + n]  # the same Parameter, now a view of the stack
            if b is not None:
                m.bias.data = b[start : start + n]
            start += n
    return _StackedLinear(w, b), ("weight",) if b is None else ("weight", "bias")


def _memory(t: Tensor) -> tuple[int, int]:
    """(address, version) of a tensor; inference tensors keep no version (0)."""
    return t.data_ptr(), (0 if t.is_inference() else t._version)


def _stackable(layers: Sequence[nn.Module]) -> bool:
    first = layers[0]
    if any(type(m) is not type(first) for m in layers):
        return False
    if type(first) is nn.Linear:
        ws: list[Tensor] = [m.weight for m in layers]  # type: ignore[misc]
        same = all(w.dtype == ws[0].dtype and w.device == ws[0].device and w.shape[1] == ws[0].shape[1]
                   for w in ws)
        return same and len({m.bias is None for m in layers}) == 1
    return callable(getattr(type(first), "stack_rows", None))


class FusedRows:
    """``layers`` (reading the same input) run as one: ``fused(x)`` gives their outputs in order
    once :meth:`usable` said yes."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers = list(layers)
        self._run: nn.Module | None = None
        self._names: tuple[str, ...] = ()
        self._ptrs: list[tuple[int, int]] = []

    def __getstate__(self) -> dict:
        # A copy or a pickle drops the stack (its layers get weights of their own): rebuilt on use.
        return {**self.__dict__, "_run": None, "_ptrs": []}

    def _pointers(self) -> list[tuple[int, int]]:
        # Each tensor's memory and version: a tensor re-assigned, or written in place where the
        # stack holds a copy of it (Int4Linear's scales; load_state_dict writes in place), makes
        # the stack rebuild. The modules' own dicts, not getattr: nn.Module.__getattr__ costs
        # ~1 us a name, and this runs at every call.
        return [_memory(m._parameters[n] if n in m._parameters else m._buffers[n])  # type: ignore[arg-type]
                for m in self.layers for n in self._names]

    def _build(self) -> bool:
        if not _stackable(self.layers):
            return False
        # Outside inference mode: the stack becomes the layers' own weights, which must stay
        # usable with autograd afterwards.
        with torch.inference_mode(False):
            if type(self.layers[0]) is nn.Linear:
                self._run, self._names = _stack_linears(self.layers)  # type: ignore[arg-type]
            else:
                self._run, self._names = type(self.layers[0]).stack_rows(self.layers)  # type: ignore[attr-defined]
        self._ptrs = self._pointers()
        return True

    def usable(self) -> bool:
        """May the stack stand in for the layers now? Builds (or rebuilds) it if need be."""
        if torch.is_grad_enabled() and any(p.requires_grad for m in self.layers for p in m.parameters()):
            return False  # gradients must reach each layer's own parameters
        if _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return False  # a module hook must see each layer's call
        for m in self.layers:
            if m._forward_hooks or m._forward_pre_hooks:
                return False
        return (self._run is not None and self._pointers() == self._ptrs) or self._build()

    def __call__(self, x: Tensor) -> Tensor:
        assert self._run is not None
        return self._run.forward(x)  # (..., K) -> (..., ΣN), the layers' outputs side by side


def fused_call(owner: nn.Module, attr: str, layers: Sequence[nn.Module], x: Tensor) -> Tensor | None:
    """The outputs of ``layers`` on ``x`` side by side (..., ΣN) from one matmul (split them with
    ``.split([m.out_features ...], -1)``), the stack kept on ``owner`` as ``attr``
    (a plain attribute: not a parameter, a buffer or a submodule); None when the layers must run
    one by one (gradients to their weights, a module hook, layers that cannot stack)."""
    fused: FusedRows | None = owner.__dict__.get(attr)
    if fused is None or not all(map(operator.is_, layers, fused.layers)):
        fused = owner.__dict__[attr] = FusedRows(layers)  # new, or a layer was replaced (quantized)
    return fused(x) if fused.usable() else None
