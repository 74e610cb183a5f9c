"""Many prompts that share a prefix, in one batch: sampled answers and teacher-forced scores.

Why: a controlled prompt experiment asks the same model the same task under many conditions
(a topic question, its paraphrases, control questions, none) and samples several answers to
each, with and without interventions. One at a time, SmolLM2 on one CPU core prefills ~250
tokens of code in 0.7 s and decodes 15 tokens/s; the conditions of one task share their first
~240 tokens (the chat header and the code), and decoding 50 rows at once costs ~2.3x one row
(measured: 113 vs 15 tokens/s). So the shared prefix is prefilled once (per distinct knockout
that reaches into it), the cache is copied to every row, and the rows continue together.

Layout: every row is ``prefix + suffix``; suffixes are left-padded to one length so that all
rows end together (pads are masked keys; RoPE positions skip them), then decoded (or scored)
in lockstep. A row may knock keys out of attention (Geva et al. 2023's attention knockout: the
score of a key becomes -inf) in chosen layers or (layer, head) pairs: each layer gets one
score_mod reading a per-row table, so rows with and without interventions share the batch.

The batch's tables are filled on the CPU and moved to the model's device once; ids, masks and
positions are made there.

Each row equals the one-row decode loop (:func:`~attnlab.inspect.llm.generation.generate_ids` with
the same sampling and the knockout's score_mods) up to float rounding (tested).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.arguments import expect_positive_int
from attnlab.functional.attention import ScoreMod
from attnlab.functional.score_mods import KeyBias
from attnlab.inspect.llm.batch_capture import BatchRecorder
from attnlab.inspect.llm.generation import Sampling, eos_ids, next_token
from attnlab.inspect.llm.steering import check_alpha
from attnlab.models.contract import CausalLM, as_causal_lm
from attnlab.models.loading import LoadedModel
from attnlab.modules.multihead import KVCache

GREEDY = Sampling()


@dataclass(frozen=True)
class Row:
    """One prompt of a batch, with at most one intervention on its attention, in ``layers``
    (None: all) or only in the (layer, head) pairs of ``heads``:

    - ``knock``: positions of ``ids`` whose keys are removed (Geva et al. 2023's attention
      knockout: the score becomes -inf);
    - ``steer``: positions PASTA emphasises (Zhang et al. 2023, eq. 2): every other key's
      weight is scaled by ``alpha`` and the row renormalised (log alpha added to its score).

    ``answer``: the tokens to score after the prompt (teacher forcing)."""

    ids: tuple[int, ...]
    knock: tuple[int, ...] = ()
    layers: tuple[int, ...] | None = None
    heads: tuple[tuple[int, int], ...] | None = None
    sampling: Sampling = GREEDY
    answer: tuple[int, ...] = ()
    steer: tuple[int, ...] = ()
    alpha: float = 1.0

    @property
    def everywhere(self) -> bool:
        """A knockout in every layer and head: the keys are simply masked (the fast path: no
        per-row table)."""
        return bool(self.knock) and not self.steer and self.layers is None and self.heads is None

    @property
    def moded(self) -> bool:
        """An intervention that needs a per-row table of key biases."""
        return bool(self.steer) or (bool(self.knock) and not self.everywhere)

    def sites(self, n_layers: int, n_heads: int) -> dict[int, list[int]]:
        """{layer: heads} where a table must change the scores (empty without an intervention,
        or for a knockout everywhere: then the attention mask does it)."""
        if not self.moded:
            return {}
        if self.heads is not None:
            out: dict[int, list[int]] = {}
            for layer, head in self.heads:
                out.setdefault(layer, []).append(head)
            return out
        return {layer: list(range(n_heads)) for layer in (self.layers or range(n_layers))}

    def touches(self, prefix: int) -> tuple[int, ...]:
        """The intervention's positions inside the first ``prefix`` tokens: what makes this
        row's prefill differ from a plain one. PASTA's queries before the emphasised span see
        only keys outside it, all scaled alike: unchanged, so only a span that starts inside
        the prefix counts."""
        return tuple(k for k in (self.knock or self.steer) if k < prefix)


@dataclass
class _Layout:
    rows: list[Row]
    prefix: int  # tokens shared by every row
    width: int  # longest suffix: every row's suffix is left-padded to it
    pads: list[int]

    def slot(self, r: int, j: int) -> int:
        """Where position ``j`` of row ``r``'s ids sits in the batch."""
        return j if j < self.prefix else j + self.pads[r]


def _common_prefix(rows: Sequence[Row]) -> int:
    first = rows[0].ids
    n = min(len(r.ids) for r in rows) - 1  # every row keeps at least one token of its own
    for r in rows[1:]:
        i = 0
        while i < n and r.ids[i] == first[i]:
            i += 1
        n = i
    return n


def _by_first_token(rows: Sequence[Row]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.ids[0] if r.ids else -1, []).append(i)
    return list(groups.values())


def _layout(rows: Sequence[Row], limit: int | None = None) -> _Layout:
    if not rows:
        raise ValueError("rows: expected at least one row, got none")
    for i, r in enumerate(rows):
        if not r.ids:
            raise ValueError(f"rows[{i}]: expected prompt ids, got none")
        bad = [k for k in r.knock if not 1 <= k < len(r.ids)]
        if bad:  # position 0's query sees only key 0: knocking it out leaves nothing to attend to
            raise ValueError(f"rows[{i}]: expected knockout positions in 1..{len(r.ids) - 1}, got {bad}")
        if r.steer:
            if r.knock:
                raise ValueError(f"rows[{i}]: expected one intervention (knock or steer), got both")
            bad = [k for k in r.steer if not 0 <= k < len(r.ids)]
            if bad:
                raise ValueError(f"rows[{i}]: expected steer positions in 0..{len(r.ids) - 1}, got {bad}")
            check_alpha(r.alpha)
    p = _common_prefix(rows)
    if limit is not None:  # e.g. where the added words start: knockouts of them then stay out of it
        p = min(p, limit)
    if p < 1:
        one = [i for i, r in enumerate(rows) if len(r.ids) == 1]
        if one:  # the prefix must leave every row one token of its own
            raise ValueError(f"rows[{one[0]}]: expected at least 2 ids (the first shared by every row and "
                             f"prefilled once, the last the row's own), got 1")
        raise ValueError("rows: expected prompts that share at least their first token (a chat header), "
                         "got prompts that differ from the start")
    width = max(len(r.ids) - p for r in rows)
    return _Layout(list(rows), p, width, [width - (len(r.ids) - p) for r in rows])


def _tables(lay: _Layout, n_layers: int, n_heads: int, total: int,
            rows: Sequence[int]) -> dict[int, Tensor]:
    """Per layer with an intervention, a (len(rows), H, total) float table added to the scores:
    -inf at knocked-out keys, log(alpha) at the keys outside a PASTA span, else 0. On the CPU
    (filled entry by entry): :func:`_mods` moves them to the model's device."""
    out: dict[int, Tensor] = {}
    cpu = torch.device("cpu")
    for b, r in enumerate(rows):
        row = lay.rows[r]
        sites = row.sites(n_layers, n_heads)
        if not sites:
            continue
        if row.steer:
            inside = torch.zeros(total, dtype=torch.bool, device=cpu)
            inside[[lay.slot(r, j) for j in row.steer]] = True
            entry = torch.where(inside, 0.0, math.log(row.alpha))  # (total,)
        else:
            entry = torch.zeros(total, device=cpu)
            entry[[lay.slot(r, j) for j in row.knock]] = float("-inf")
        for layer, heads in sites.items():
            t = out.setdefault(layer, torch.zeros(len(rows), n_heads, total, device=cpu))
            t[b, heads] = entry  # (heads, total)
    return out


def _mods(tables: dict[int, Tensor], device: torch.device) -> dict[int, ScoreMod]:
    # Query-free, so attention folds each into its mask and keeps its fused kernel.
    return {layer: KeyBias(t.to(device), "intervention[per row]") for layer, t in tables.items()}


PrefixStore = dict[tuple, list[Tensor]]


def _prefill(model: CausalLM, lay: _Layout, n_heads: int, room: int,
             store: PrefixStore | None = None, recorder: BatchRecorder | None = None) -> list[KVCache]:
    """The shared prefix, once per distinct knockout inside it, copied to every row. ``store``
    keeps each prefilled prefix for later calls on the same prompts; ``recorder`` gets each
    prefix pass for the rows it serves (then nothing comes from ``store``)."""
    groups: dict[tuple, list[int]] = {}
    for r, row in enumerate(lay.rows):
        inside = row.touches(lay.prefix)
        key = (inside, bool(row.steer), row.alpha, row.layers, row.heads) if inside else ()
        groups.setdefault(key, []).append(r)
    dev = model.device
    ids = torch.tensor([lay.rows[0].ids[: lay.prefix]], device=dev)  # (1, P)
    per_row: list[list[Tensor]] = [[] for _ in lay.rows]  # per row: k0, v0, k1, v1, ...
    for gkey, members in groups.items():
        r0 = members[0]
        skey = (lay.rows[0].ids[: lay.prefix], gkey)
        if store is not None and skey in store and recorder is None:
            for r in members:
                per_row[r] = store[skey]
            continue
        full = lay.prefix + lay.width
        tables = _tables(lay, model.num_layers, n_heads, full, [r0]) if gkey else {}
        tables = {k: t[:, :, : lay.prefix] for k, t in tables.items()}
        keep = torch.ones(1, lay.prefix, dtype=torch.long, device=dev)  # (1, P)
        if lay.rows[r0].everywhere:
            keep[0, [k for k in lay.rows[r0].knock if k < lay.prefix]] = 0
        cache = model.new_cache()
        if recorder is not None:
            recorder.before_pass([members], [(0, 0)])
        model(ids, keep, cache=cache, score_mods=_mods(tables, dev) or None, logits_to_keep=1,
              need_weights=recorder.layers if recorder is not None else False, keep_weights=False)
        kv: list[Tensor] = []
        for c in cache:
            assert c.k is not None and c.v is not None  # the prefill filled every layer
            kv += [c.k, c.v]
        if store is not None:
            store[skey] = kv
        for r in members:
            per_row[r] = kv
    out: list[KVCache] = []
    for i in range(model.num_layers):
        k = torch.cat([per_row[r][2 * i] for r in range(len(lay.rows))])  # (B, Hkv, P, Dh)
        v = torch.cat([per_row[r][2 * i + 1] for r in range(len(lay.rows))])
        out.append(KVCache.holding(k, v, room))  # room for the suffix and every new token, allocated once
    return out


def _suffix(lay: _Layout, device: torch.device,
            extra: Sequence[Sequence[int]] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, attention_mask, position_ids) of the padded suffixes (+ ``extra`` tokens per row,
    right-padded; their padding comes after every real token, so causality hides it), filled on
    the CPU row by row and moved to ``device`` once."""
    n_extra = max((len(e) for e in extra), default=0)
    B, W = len(lay.rows), lay.width + n_extra
    cpu = torch.device("cpu")
    ids = torch.zeros(B, W, dtype=torch.long, device=cpu)  # (B, W)
    keep = torch.ones(B, lay.prefix + W, dtype=torch.long, device=cpu)  # (B, P + W) 1 = real token
    pos = torch.zeros(B, W, dtype=torch.long, device=cpu)
    for r, row in enumerate(lay.rows):
        tail = list(row.ids[lay.prefix :]) + (list(extra[r]) if extra else [])
        pad = lay.pads[r]
        ids[r, pad : pad + len(tail)] = torch.tensor(tail, device=cpu)
        keep[r, lay.prefix : lay.prefix + pad] = 0
        pos[r] = torch.arange(W, device=cpu) - pad + lay.prefix
        pos[r, :pad] = lay.prefix  # pads: any position (masked as keys, ignored as queries)
        if row.everywhere:
            keep[r, [lay.slot(r, j) for j in row.knock]] = 0
    return ids.to(device), keep.to(device), pos.to(device)


def _check_room(model: CausalLM, rows: Sequence[Row], need: int, what: str) -> None:
    longest = max(len(r.ids) for r in rows)
    if longest + need > model.max_positions:
        raise ValueError(f"prompt: expected at most {model.max_positions - need} tokens to leave room for "
                         f"{need} {what} (the model's context is {model.max_positions}), got {longest}")


@torch.inference_mode()
def generate_rows(lm: LoadedModel, rows: Sequence[Row], *, max_new_tokens: int,
                  stop_ids: set[int] | None = None, prefix_limit: int | None = None,
                  prefix_store: PrefixStore | None = None,
                  recorder: BatchRecorder | None = None) -> list[tuple[list[int], str]]:
    """Decode every row (its own sampling and knockout) together: per row, the new ids (the
    stop token included, as :func:`generate_ids` returns them) and "eos" or "max_new_tokens".
    ``prefix_limit`` caps the shared prefix; ``prefix_store`` (a dict) reuses prefixes across
    calls on the same prompts; ``recorder`` (one recorder per row) records each row's attention
    as :func:`generate_ids` would."""
    expect_positive_int("max_new_tokens", max_new_tokens)
    groups = _by_first_token(rows)
    if len(groups) > 1:  # nothing shared (no chat header): one batch per first token
        out: dict[int, tuple[list[int], str]] = {}
        for g in groups:
            with recorder.rows_of(g) if recorder is not None else contextlib.nullcontext():
                got = generate_rows(lm, [rows[i] for i in g], max_new_tokens=max_new_tokens,
                                    stop_ids=stop_ids, recorder=recorder)
            out.update(zip(g, got, strict=True))
        return [out[i] for i in range(len(rows))]
    model = as_causal_lm(lm.model, "--model")
    lay = _layout(rows, prefix_limit)
    _check_room(model, rows, max_new_tokens, "new tokens")
    stops = eos_ids(lm) if stop_ids is None else stop_ids
    total = lay.prefix + lay.width + max_new_tokens
    dev = model.device
    mods = _mods(_tables(lay, model.num_layers, model.num_heads, total, range(len(rows))), dev)
    cache = _prefill(model, lay, model.num_heads, lay.width + max_new_tokens, prefix_store, recorder)
    need = recorder.layers if recorder is not None else False
    pads = [(lay.prefix, n) for n in lay.pads]
    ids, keep, pos = _suffix(lay, dev)
    gens = [None if r.sampling.greedy else torch.Generator().manual_seed(r.sampling.seed) for r in rows]
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    one = torch.ones(len(rows), 1, dtype=torch.long, device=dev)  # (B, 1): each step's new key is real
    for _ in range(max_new_tokens):
        if recorder is not None:  # a row that has stopped is fed its last token again: not recorded
            recorder.before_pass([[] if d else [r] for r, d in enumerate(done)], pads)
        logits = model(ids, keep, position_ids=pos, cache=cache, score_mods=mods or None,
                       logits_to_keep=1, need_weights=need, keep_weights=False).logits
        assert logits is not None
        nxt = []
        for r, row in enumerate(rows):
            t = new[r][-1] if done[r] else next_token(logits[r, -1], row.sampling, gens[r])
            if not done[r]:
                new[r].append(t)
                done[r] = t in stops
            nxt.append(t)
        if all(done):
            break
        ids = torch.tensor(nxt, device=dev)[:, None]  # (B, 1)
        keep = torch.cat([keep, one], dim=1)  # (B, past + 1)
        pos = pos[:, -1:] + 1  # (B, 1)
    return [(n, "eos" if d else "max_new_tokens") for n, d in zip(new, done, strict=True)]


def _answer_logits(lm: LoadedModel, rows: Sequence[Row], prefix_limit: int | None,
                   prefix_store: PrefixStore | None) -> Tensor:
    """Teacher forcing of every row's ``answer``: logits (B, A + 1, V) where position t predicts
    answer[t] and position len(answer) the token after it (A: the longest answer)."""
    model = as_causal_lm(lm.model, "--model")
    lay = _layout(rows, prefix_limit)
    for i, r in enumerate(rows):
        if not r.answer:
            raise ValueError(f"rows[{i}]: expected answer ids to score, got none")
    n_ans = max(len(r.answer) for r in rows)
    _check_room(model, rows, n_ans, "answer tokens")
    total = lay.prefix + lay.width + n_ans
    dev = model.device
    mods = _mods(_tables(lay, model.num_layers, model.num_heads, total, range(len(rows))), dev)
    cache = _prefill(model, lay, model.num_heads, lay.width + n_ans, prefix_store)
    ids, keep, pos = _suffix(lay, dev, [r.answer for r in rows])
    logits = model(ids, keep, position_ids=pos, cache=cache, score_mods=mods or None,
                   logits_to_keep=n_ans + 1).logits
    assert logits is not None
    return logits  # (B, A + 1, V)


def _per_first_token(rows: Sequence[Row], each) -> list | None:
    """Rows with nothing shared (no chat header) go one batch per first token."""
    groups = _by_first_token(rows)
    if len(groups) == 1:
        return None
    out: dict[int, object] = {}
    for g in groups:
        out.update(zip(g, each([rows[i] for i in g]), strict=True))
    return [out[i] for i in range(len(rows))]


@torch.inference_mode()
def score_rows(lm: LoadedModel, rows: Sequence[Row], *, prefix_limit: int | None = None,
               prefix_store: PrefixStore | None = None) -> list[list[float]]:
    """Teacher forcing: per row, log p(answer token t | prompt, answer[:t]) for every token of
    its ``answer`` (float64 log-softmax of the model's logits), under the row's intervention."""
    apart = _per_first_token(rows, lambda g: score_rows(lm, g))
    if apart is not None:
        return apart
    logits = _answer_logits(lm, rows, prefix_limit, prefix_store)
    n_ans = logits.shape[1] - 1
    logp = logits[:, :n_ans].double().log_softmax(-1)  # (B, A, V): position t predicts answer[t]
    scores = []
    for b, row in enumerate(rows):
        a = torch.tensor(row.answer, device=logp.device)
        scores.append(logp[b, torch.arange(len(a), device=logp.device), a].tolist())
    return scores


@torch.inference_mode()
def logit_diff_rows(lm: LoadedModel, rows: Sequence[Row], a: int, b: int, *,
                    prefix_limit: int | None = None, prefix_store: PrefixStore | None = None) -> list[float]:
    """Per row, logit(a) - logit(b) for the token after its ``answer`` (teacher-forced context),
    under the row's intervention: the metric of activation patching (Wang et al. 2022) and of
    a knockout sweep, one forward for both tokens."""
    apart = _per_first_token(rows, lambda g: logit_diff_rows(lm, g, a, b))
    if apart is not None:
        return apart
    logits = _answer_logits(lm, rows, prefix_limit, prefix_store)
    at = torch.tensor([len(r.answer) for r in rows], device=logits.device)
    last = logits[torch.arange(len(rows), device=logits.device), at].double()  # (B, V)
    return (last[:, a] - last[:, b]).tolist()
