"""Attention rows recorded as the model computes them: one row per fed position, per layer/head.

A :class:`AttentionRecorder` registers forward hooks on the ``hook_pattern`` of the chosen
layers' attention modules. Each forward pass (the prompt's prefill, then one decode step per
generated token) hands it (B=1, H, Lq, Lk) weights; it keeps, for each query position p, the
row over keys 0..p, cast to ``dtype`` (fp16 by default) and restricted to the chosen heads.
Nothing is recomputed afterwards, and no layer's full fp32 matrix outlives its forward pass.

Memory: sum over positions of (p + 1) · layers · heads · bytes = N(N+1)/2 · L · H · 2 bytes in
fp16 — a 1,000-token conversation on all 270 heads of SmolLM2 is 270 MB (:meth:`nbytes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class AttentionRecorder:
    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        n_layers, n_heads = model.num_layers, model.num_heads
        self.layers = _select("layers", layers, n_layers)
        self.heads = _select("heads", heads, n_heads)
        kv = getattr(getattr(model, "cfg", None), "num_kv_heads", n_heads)
        group = n_heads // kv
        self.kv_group = [h // group for h in self.heads]  # K/V head each recorded query head reads
        self.dtype = dtype
        self.rows: list[Tensor] = []  # position p -> (len(layers), len(heads), p + 1)
        self._pending: dict[int, Tensor] = {}  # layer -> (H_sel, Lq, Lk) of the current pass
        self._handles = [
            model.layers[i].attention.hook_pattern.register_forward_hook(self._hook(i)) for i in self.layers
        ]
        self._head_idx = torch.tensor(self.heads)

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            # output (B, H, Lq, Lk); generation runs batch 1.
            self._pending[layer] = output[0].index_select(0, self._head_idx).to(self.dtype)
            if len(self._pending) == len(self.layers):
                self._flush()

        return hook

    def _flush(self) -> None:
        w = torch.stack([self._pending[i] for i in self.layers])  # (Ls, Hs, Lq, Lk)
        self._pending.clear()
        Lq, Lk = w.shape[-2:]
        start = Lk - Lq  # the queries are the newest Lq of Lk positions
        for r in range(Lq):
            self.rows.append(w[:, :, r, : start + r + 1].clone())  # (Ls, Hs, p + 1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> AttentionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows)

    def row(self, pos: int) -> Tensor:
        """Attention of position ``pos`` over keys 0..pos: (layers, heads, pos + 1)."""
        if not -len(self.rows) <= pos < len(self.rows):
            raise IndexError(f"pos: expected a recorded position in 0..{len(self.rows) - 1}, got {pos}")
        return self.rows[pos]

    def matrix(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Rows start..stop as one causal (layers, heads, n, stop) float32 tensor (zeros above)."""
        stop = len(self.rows) if stop is None else stop
        Ls, Hs = len(self.layers), len(self.heads)
        out = torch.zeros(Ls, Hs, stop - start, stop)
        for i, p in enumerate(range(start, stop)):
            out[:, :, i, : p + 1] = self.rows[p].float()
        return out


def _select(name: str, chosen: Sequence[int] | None, n: int) -> list[int]:
    if chosen is None:
        return list(range(n))
    out = []
    for c in chosen:
        if isinstance(c, bool) or not isinstance(c, int) or not -n <= c < n:
            raise ValueError(f"{name}: expected ints in 0..{n - 1}, got {list(chosen)!r}")
        out.append(c % n)
    if not out:
        raise ValueError(f"{name}: expected at least one index, got none")
    return sorted(set(out))
