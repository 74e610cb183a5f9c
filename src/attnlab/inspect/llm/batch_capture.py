"""Attention recorded per sequence while a batch decodes together.

The batch engine (:func:`~attnlab.inspect.llm.batch_rows.generate_rows`) prefills the prefix
the rows share once (batch 1), then runs the left-padded suffixes and every decode step as one
batch. A :class:`BatchRecorder` hooks ``attn.pattern`` once and hands each row's share of a
pass to that row's own :class:`~attnlab.inspect.recorder.AttentionRecorder`: the prefix pass
to every row, a batched pass row by row with the padding keys and queries dropped, nothing for
a row that has already stopped. A decode step (one query per row, the hot path) is packed for
the whole batch at once — one head selection, one dtype conversion, one masked_select of the
real keys — and each row keeps a view of that buffer; rows fed the same pass share its packed
rows. Each row's recorder then holds exactly what a one-row decode
(:func:`~attnlab.inspect.llm.generation.generate_ids` with a recorder) records: the rows of
every position the model was fed, over that row's own keys, on the CPU (one copy per pass
and layer, whatever the model's device).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from attnlab.inspect.recorder import AttentionRecorder
from attnlab.models.contract import as_causal_lm
from attnlab.modules.hooks import HookPoint


class BatchRecorder:
    """One :class:`AttentionRecorder` per row (``self.rows``), filled from batched passes."""

    def __init__(self, model: Any, n_rows: int, *, layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None, dtype: torch.dtype = torch.float16) -> None:
        lm = as_causal_lm(model, "recorder")
        self.rows = [AttentionRecorder(lm, layers=layers, heads=heads, dtype=dtype, hooked=False)
                     for _ in range(n_rows)]
        self.layers = self.rows[0].layers
        self._index = list(range(n_rows))  # batch row -> recorder, while a subset decodes
        self._targets: list[list[int]] = []  # per batch row of the running pass: recorders fed
        self._pads: list[tuple[int, int]] = []  # per batch row: (first pad key, pads)
        self._index_cache: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}
        self._real_cache: dict[int, tuple[Tensor | None, list[int]]] = {}
        self._handles = [h for i in self.layers
                         for h in lm.add_hook(lm.hook_name(i, "attn.pattern"), self._hook(i))]

    @contextmanager
    def rows_of(self, index: Sequence[int]) -> Iterator[None]:
        """Batch row b is recorder ``index[b]`` inside the block (a group decoded on its own)."""
        saved, self._index = self._index, [self._index[i] for i in index]
        try:
            yield
        finally:
            self._index = saved

    def before_pass(self, targets: Sequence[Sequence[int]], pads: Sequence[tuple[int, int]]) -> None:
        """The next pass's batch row b feeds the rows ``targets[b]`` (batch-local indices; empty:
        a row that has stopped); its keys ``pads[b] = (start, n)`` are padding, not positions."""
        self._targets = [[self._index[r] for r in t] for t in targets]
        self._pads = list(pads)
        self._index_cache.clear()
        self._real_cache.clear()

    def _hook(self, layer: int):
        def hook(output: Tensor, _hook: HookPoint) -> None:
            if output.shape[-2] == 1:  # (B, H, Lq=1, Lk): a decode step, every row at once
                self._add_step(layer, output)
                return
            Lq, Lk = output.shape[-2:]  # (B, H, Lq, Lk)
            w = output.index_select(1, self.rows[0].head_index)  # (B, H, Lq, Lk) -> (B, Hs, Lq, Lk)
            for b, feed in enumerate(self._targets):
                if not feed:
                    continue
                keys, queries = self._index_of(b, Lq, Lk, w.device)
                wb = w[b] if keys is None else w[b][:, queries][:, :, keys]  # (Hs, Lq', Lk'): own positions
                packed = self.rows[feed[0]].pack(wb)  # packed once: the rows fed the shared prefix share it
                for r in feed:
                    self.rows[r].add_packed(layer, *packed)

        return hook

    def _add_step(self, layer: int, output: Tensor) -> None:
        """A decode step: one head selection and one dtype conversion for the whole batch (and one
        masked_select where a row has padding or has stopped); each row gets a view of it."""
        real, keys = self._real_keys(output.shape[-1], output.device)
        x = output[:, :, 0].index_select(1, self.rows[0].head_index)  # (B, H, 1, Lk) -> (B, Hs, Lk), a copy
        Hs = x.shape[1]
        cpu, dtype = torch.device("cpu"), self.rows[0].dtype
        if real is None:  # every row fed, none padded
            per_row = x.to(cpu, dtype).unbind(0)  # B x (Hs, Lk)
        else:  # the fed rows' real keys, row by row, head by head: (sum of Hs·keys,)
            flat = x.masked_select(real[:, None]).to(cpu, dtype)
            parts = flat.split([Hs * n for n in keys])
            per_row = tuple(t.view(Hs, n) for t, n in zip(parts, keys, strict=True))  # fed rows x (Hs, keys)
        for feed, n, wb in zip([t for t in self._targets if t], keys, per_row, strict=True):
            for r in feed:
                self.rows[r].add_packed(layer, n - 1, 1, wb)  # its query is its own position n - 1

    def _real_keys(self, Lk: int, device: torch.device) -> tuple[Tensor | None, list[int]]:
        """(B, Lk) bool on ``device`` (the weights'): the keys each batch row records (none for a
        row that has stopped), or None when that is every key of every row; and each fed row's
        number of keys. Made once per pass, not once per layer."""
        if Lk not in self._real_cache:
            keys = [Lk - n for (_, n), t in zip(self._pads, self._targets, strict=True) if t]
            if len(keys) == len(self._targets) and all(n == 0 for _, n in self._pads):
                self._real_cache[Lk] = (None, keys)
            else:
                start, n = torch.tensor(self._pads, device=device).unbind(1)  # (B,) each
                at = torch.arange(Lk, device=device)  # (Lk,)
                pad = (at >= start[:, None]) & (at < (start + n)[:, None])  # (B, Lk)
                fed = torch.tensor([bool(t) for t in self._targets], device=device)  # (B,)
                self._real_cache[Lk] = (~pad & fed[:, None], keys)
        return self._real_cache[Lk]

    def _index_of(self, b: int, Lq: int, Lk: int,
                  device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """Row b's real keys and its real queries (as rows of the pass, on ``device``); None: no
        padding. Made once per pass shape and row, not once per layer."""
        start, n = self._pads[b]
        if n == 0:
            return None, None
        key = (b, Lq, Lk)
        if key not in self._index_cache:
            at = torch.arange(Lk, device=device)  # (Lk,)
            keys = torch.cat([at[:start], at[start + n:]])  # real keys
            self._index_cache[key] = (keys, keys[keys >= Lk - Lq] - (Lk - Lq))
        return self._index_cache[key]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> BatchRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
