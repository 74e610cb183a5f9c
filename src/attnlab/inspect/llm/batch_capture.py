"""Attention recorded per sequence while a batch decodes together.

The batch engine (:func:`~attnlab.inspect.llm.batch_rows.generate_rows`) prefills the prefix
the rows share once (batch 1), then runs the left-padded suffixes and every decode step as one
batch. A :class:`BatchRecorder` hooks ``attn.pattern`` once and hands each row's share of a
pass to that row's own :class:`~attnlab.inspect.recorder.AttentionRecorder`: the prefix pass
to every row, a batched pass row by row with the padding keys and queries dropped, nothing for
a row that has already stopped. Each row's recorder then holds exactly what a one-row decode
(:func:`~attnlab.inspect.llm.generation.generate_ids` with a recorder) records: the rows of
every position the model was fed, over that row's own keys.
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

    def _hook(self, layer: int):
        def hook(output: Tensor, _hook: HookPoint) -> None:
            Lq, Lk = output.shape[-2:]  # (B, H, Lq, Lk)
            w = output.index_select(1, self.rows[0].head_index)  # (B, H, Lq, Lk) -> (B, Hs, Lq, Lk)
            for b, feed in enumerate(self._targets):
                if not feed:
                    continue
                keys, queries = self._index_of(b, Lq, Lk)
                wb = w[b] if keys is None else w[b][:, queries][:, :, keys]  # (Hs, Lq', Lk'): own positions
                for r in feed:
                    self.rows[r].add(layer, wb)

        return hook

    def _index_of(self, b: int, Lq: int, Lk: int) -> tuple[Tensor | None, Tensor | None]:
        """Row b's real keys and its real queries (as rows of the pass); None: no padding. Made
        once per pass shape and row, not once per layer."""
        start, n = self._pads[b]
        if n == 0:
            return None, None
        key = (b, Lq, Lk)
        if key not in self._index_cache:
            keys = torch.cat([torch.arange(start), torch.arange(start + n, Lk)])  # real keys
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
