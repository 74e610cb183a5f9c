"""Attention rows recorded as the model computes them: one row per fed position, per layer/head.

A :class:`AttentionRecorder` adds hooks at the ``attn.pattern`` hook point of the chosen layers
(by name: ``model.hook_name(layer, "attn.pattern")``, any :class:`CausalLM`). Each forward pass
(the prompt's prefill, then one decode step per generated token) hands it (B=1, H, Lq, Lk)
weights; at once, inside that layer's hook, it packs
the causal triangle — for each query position p the row over keys 0..p — of the chosen heads
into one flat ``dtype`` (fp16 by default) buffer. Nothing is recomputed afterwards, and no
layer's full matrix outlives its own hook.

The rows are kept on the CPU whatever the model's device (they go to files and pictures): each
pass's packed rows are copied there once, inside the hook.

Memory: sum over positions of (p + 1) · layers · heads · bytes = N(N+1)/2 · L · H · 2 bytes in
fp16 — a 1,000-token conversation on all 270 heads of SmolLM2 is 270 MB (:meth:`nbytes`). The
peak adds one layer's (H, N, N) weights of the forward pass that is running (the prefill's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.models.contract import as_causal_lm
from attnlab.modules.hooks import HookPoint


class AttentionRecorder:
    def __init__(
        self,
        model: Any,  # a CausalLM (attnlab.models.contract)
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float16,
        hooked: bool = True,
    ) -> None:
        lm = as_causal_lm(model, "recorder")
        n_layers, n_heads = lm.num_layers, lm.num_heads
        self.layers = _select("layers", layers, n_layers)
        self.heads = _select("heads", heads, n_heads)
        group = n_heads // lm.num_kv_heads
        self.kv_group = [h // group for h in self.heads]  # K/V head each recorded query head reads
        self.dtype = dtype
        # Per recorded layer, one packed chunk per forward pass: (first position, rows, (Hs, T)),
        # the rows p = first .. first + rows - 1 concatenated, each p + 1 long.
        self._chunks: dict[int, list[tuple[int, int, Tensor]]] = {i: [] for i in self.layers}
        self._n = 0  # positions recorded (by every layer)
        self.head_index = torch.tensor(self.heads, device=lm.device)  # selects from the model's weights
        # hooked=False: filled by add() from elsewhere (one recorder per row of a batch)
        self._handles = [h for i in self.layers if hooked
                         for h in lm.add_hook(lm.hook_name(i, "attn.pattern"), self._hook(i))]

    def _hook(self, layer: int):
        def hook(output: Tensor, _hook: HookPoint) -> None:
            self.add(layer, output[0].index_select(0, self.head_index))  # (B=1, H, Lq, Lk) -> (Hs, Lq, Lk)

        return hook

    def add(self, layer: int, w: Tensor) -> None:
        """Record one pass of ``layer``: the recorded heads' weights (Hs, Lq, Lk) of the newest
        Lq of Lk positions (the passes of every layer in order, the last layer's closes a pass)."""
        self.add_packed(layer, *self.pack(w))

    def pack(self, w: Tensor) -> tuple[int, int, Tensor]:
        """(first position, rows, (Hs, T) ``dtype`` rows in their own CPU memory) of the weights
        (Hs, Lq, Lk) of one pass, as :meth:`add_packed` takes them."""
        Lq, Lk = w.shape[-2:]
        first = Lk - Lq  # the queries are the newest Lq of Lk positions
        self._expect(first)
        cpu = torch.device("cpu")
        if Lq == 1:  # a decode step: its one row sees every key
            flat = w[:, 0].to(cpu, self.dtype, copy=True)  # (Hs, 1, Lk) -> (Hs, Lk), its own memory
        else:
            keep = torch.ones(Lq, Lk, dtype=torch.bool, device=w.device).tril(first)  # row r: keys ..first+r
            flat = w[:, keep].to(cpu, self.dtype)  # (Hs, T) row-major
        return first, Lq, flat

    def add_packed(self, layer: int, first: int, rows: int, flat: Tensor) -> None:
        """Record one pass of ``layer`` packed already: ``flat`` (Hs, T) in ``self.dtype``, the
        rows of positions first..first + rows - 1 concatenated, each p + 1 long. Kept as given
        (not copied): a batch hands each row a view of one packed buffer."""
        self._expect(first)
        self._chunks[layer].append((first, rows, flat))
        if layer == self.layers[-1]:
            self._n += rows

    def _expect(self, first: int) -> None:
        if first != self._n:
            raise ValueError(f"recorder: expected a pass starting at position {self._n} (use a KV cache "
                             f"and one recorder per generation), got one starting at {first}")

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> AttentionRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for cs in self._chunks.values() for _, _, t in cs)

    def _layer_row(self, layer: int, pos: int) -> Tensor:
        for first, n, flat in self._chunks[layer]:
            if first <= pos < first + n:
                r = pos - first
                off = r * (first + 1) + r * (r - 1) // 2  # lengths first+1, first+2, ... before row r
                return flat[:, off : off + pos + 1]  # (Hs, pos + 1)
        raise IndexError(pos)

    def row(self, pos: int) -> Tensor:
        """Attention of position ``pos`` over keys 0..pos: (layers, heads, pos + 1)."""
        expect_int("pos", pos, -self._n, self._n - 1, expected=f"a recorded position in 0..{self._n - 1}",
                   error=IndexError)
        pos %= self._n
        return torch.stack([self._layer_row(i, pos) for i in self.layers])  # (Ls, Hs, pos + 1)

    @property
    def rows(self) -> list[Tensor]:
        """Every recorded row, position by position: (layers, heads, p + 1) each."""
        return [self.row(p) for p in range(self._n)]

    def packed(self) -> Tensor:
        """Every recorded row in one tensor (layers, heads, N(N+1)/2): row p at p(p+1)/2."""
        n = self._n
        out = torch.empty(len(self.layers), len(self.heads), n * (n + 1) // 2, dtype=self.dtype, device="cpu")
        for li, i in enumerate(self.layers):
            at = 0
            for _, _, flat in self._chunks[i]:  # chunks are consecutive positions, in order
                out[li, :, at : at + flat.shape[1]] = flat
                at += flat.shape[1]
        return out

    def matrix(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Rows start..stop as one causal (layers, heads, n, stop) float32 tensor (zeros above)."""
        stop = self._n if stop is None else stop
        Ls, Hs = len(self.layers), len(self.heads)
        out = torch.zeros(Ls, Hs, stop - start, stop, device="cpu")
        for i, p in enumerate(range(start, stop)):
            out[:, :, i, : p + 1] = self.row(p).float()
        return out


def _select(name: str, chosen: Sequence[int] | None, n: int) -> list[int]:
    if chosen is None:
        return list(range(n))
    out = []
    for c in chosen:
        expect_int(name, c, -n, n - 1, expected=f"ints in 0..{n - 1}", got=list(chosen))
        out.append(c % n)
    if not out:
        raise ValueError(f"{name}: expected at least one index, got none")
    return sorted(set(out))
