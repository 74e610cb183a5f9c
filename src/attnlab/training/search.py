"""Decoding: greedy and beam search with length normalisation, batched over sentences.

Both return, per sentence, the target ids (without ``</s>``), the summed log-probability,
and the alignment of every emitted step (the ``</s>`` step included when it was emitted),
so a translation can always be shown next to its attention.

Beam search keeps ``beam`` hypotheses per sentence; a hypothesis that emits ``</s>`` stays in
the beam, frozen, with its score. The winner maximises ``score / length^alpha`` (length
counted with ``</s>``): alpha = 0 is the raw sum, which favours short outputs; alpha = 1 the
mean per-token log-probability (Wu et al. 2016 discuss the choice). With ``beam=1`` the
search makes exactly the greedy choices (a test checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.data.vocab import BOS_ID, EOS_ID, PAD_ID
from attnlab.models.translation import TranslationModel


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, no </s>
    score: float  # Σ log p of the emitted tokens (</s> included)
    finished: bool  # ended with </s> (else stopped at max_len)
    weights: Tensor | None = None  # (steps, Ls_i): steps = len(tokens) + finished
    centres: Tensor | None = None  # (steps,) local-p's p_t


def max_lengths(src_lengths: Tensor, ratio: float = 2.0, extra: int = 10) -> Tensor:
    """Per-sentence decoding limit: ratio·|source| + extra tokens (``</s>`` included)."""
    return (src_lengths.float() * ratio).long() + extra


@torch.no_grad()
def greedy(model: TranslationModel, src: Tensor, src_lengths: Tensor, max_len: Tensor, *,
           cache: bool = True) -> list[Hypothesis]:
    """src (B, Ls), src_lengths (B,), max_len (B,): argmax at every step. ``cache=False``:
    a Transformer recomputes the whole prefix at every step (the reference for its KV cache)."""
    model.eval()
    memory = model.encode(src, src_lengths)
    state = _init_state(model, memory, cache)
    bsz = src.shape[0]
    y = torch.full((bsz,), BOS_ID, dtype=torch.long)
    done = torch.zeros(bsz, dtype=torch.bool)
    score = torch.zeros(bsz, dtype=torch.float64)
    steps: list[Tensor] = []
    weights: list[Tensor] = []
    centres: list[Tensor] = []
    for t in range(int(max_len.max())):
        out = model.step(y, state, memory)
        logp = torch.log_softmax(out.logits.float(), -1)  # (B, V)
        y = logp.argmax(-1)
        score += torch.where(done, 0.0, logp.gather(1, y[:, None])[:, 0].double())
        y = torch.where(done, PAD_ID, y)
        steps.append(y)
        if out.weights is not None:
            weights.append(out.weights)
        if out.centres is not None:
            centres.append(out.centres)
        done = done | (y == EOS_ID) | (t + 1 >= max_len)
        state = out.state
        if bool(done.all()):
            break
    toks = torch.stack(steps, 1)  # (B, T)
    w = torch.stack(weights, 1) if weights else None  # (B, T, Ls)
    c = torch.stack(centres, 1) if centres else None  # (B, T)
    return [_hypothesis(toks[b], float(score[b]), w, c, b, int(src_lengths[b]))
            for b in range(bsz)]


def _init_state(model: TranslationModel, memory: Any, cache: bool) -> Any:
    # asked only when off, so that any object with init_state(memory) can be searched
    return model.init_state(memory) if cache else model.init_state(memory, cache=False)


def _hypothesis(toks: Tensor, score: float, w: Tensor | None, c: Tensor | None, b: int,
                src_len: int) -> Hypothesis:
    ids = toks.tolist()
    finished = EOS_ID in ids
    tokens = ids[: ids.index(EOS_ID)] if finished else [i for i in ids if i != PAD_ID]
    n = len(tokens) + finished
    return Hypothesis(tokens, score, finished,
                      None if w is None else w[b, :n, :src_len].clone(),
                      None if c is None else c[b, :n].clone())


def _extend(past: Tensor | None, parents: Tensor, new: Tensor) -> Tensor:
    """Each hypothesis's history ``past`` (B, K, T, ...) taken from its parent beam ``parents``
    (B, K), with ``new`` (B, K, 1, ...) appended along time."""
    if past is None:
        return new
    idx = parents.view(*parents.shape, *[1] * (past.dim() - 2)).expand_as(past)  # (B, K) -> past's shape
    return torch.cat([past.gather(1, idx), new], 2)


@torch.no_grad()
def beam_search(model: TranslationModel, src: Tensor, src_lengths: Tensor, max_len: Tensor,
                beam: int = 5, alpha: float = 1.0, *, cache: bool = True) -> list[Hypothesis]:
    """Batched beam search: (B sentences × ``beam`` hypotheses) decoded together."""
    if beam < 1:
        raise ValueError(f"beam: expected >= 1, got {beam}")
    vocab = model.cfg.tgt_vocab_size
    if beam > vocab:  # before anything is allocated per hypothesis
        raise ValueError(f"beam: expected at most the target vocabulary size {vocab}, got {beam}")
    model.eval()
    bsz, k = src.shape[0], beam
    flat = torch.arange(bsz).repeat_interleave(k)  # (B·K,): sentence of each hypothesis
    memory = model.encode(src, src_lengths)
    state = _init_state(model, memory, cache).index_select(flat)
    memory = memory.index_select(flat)
    scores = torch.full((bsz, k), float("-inf"), dtype=torch.float64)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    done = torch.zeros(bsz, k, dtype=torch.bool)
    length = torch.zeros(bsz, k, dtype=torch.long)
    hist = torch.zeros(bsz, k, 0, dtype=torch.long)
    w_hist: Tensor | None = None  # (B, K, T, Ls)
    c_hist: Tensor | None = None  # (B, K, T)
    frozen = torch.full((vocab,), float("-inf"), dtype=torch.float64)
    frozen[PAD_ID] = 0.0  # a finished hypothesis may only grow by free padding
    y = torch.full((bsz * k,), BOS_ID, dtype=torch.long)
    for t in range(int(max_len.max())):
        out = model.step(y, state, memory)
        logp = torch.log_softmax(out.logits.float(), -1).double().view(bsz, k, vocab)
        logp = torch.where(done.unsqueeze(-1), frozen, logp)
        top, idx = (scores.unsqueeze(-1) + logp).view(bsz, k * vocab).topk(k, -1)  # (B, K)
        src_beam, tok = idx // vocab, idx % vocab
        pick = (src_beam + torch.arange(bsz).unsqueeze(1) * k).view(-1)  # (B·K,) flat parents
        was_done = done.gather(1, src_beam)
        done = was_done | (tok == EOS_ID)
        length = length.gather(1, src_beam) + (~was_done).long()
        hist = _extend(hist, src_beam, tok.unsqueeze(-1))  # (B, K, T + 1)
        if out.weights is not None:  # the parent's alignment produced this token
            w = out.weights.view(bsz, k, -1)  # (B·K, Ls) -> (B, K, Ls)
            w = w.gather(1, src_beam.unsqueeze(-1).expand_as(w)).unsqueeze(2)  # (B, K, 1, Ls)
            w_hist = _extend(w_hist, src_beam, w)  # (B, K, T + 1, Ls)
        if out.centres is not None:
            c = out.centres.view(bsz, k).gather(1, src_beam).unsqueeze(2)  # (B·K,) -> (B, K, 1)
            c_hist = _extend(c_hist, src_beam, c)  # (B, K, T + 1)
        scores = top
        state = out.state.index_select(pick)
        y = torch.where(was_done, PAD_ID, tok).view(-1)
        done = done | (t + 1 >= max_len).unsqueeze(1)  # out of budget: freeze
        if bool(done.all()):
            break
    norm = scores / length.clamp(min=1).double().pow(alpha)
    best = norm.argmax(-1)  # (B,)
    out_h = []
    for b in range(bsz):
        j = int(best[b])
        w_b = None if w_hist is None else w_hist[b: b + 1, j]  # (1, T, Ls)
        c_b = None if c_hist is None else c_hist[b: b + 1, j]
        out_h.append(_hypothesis(hist[b, j], float(scores[b, j]), w_b, c_b, 0,
                                 int(src_lengths[b])))
    return out_h


def decode(model: TranslationModel, src: Tensor, src_lengths: Tensor, *, beam: int = 1,
           alpha: float = 1.0, ratio: float = 2.0, cache: bool = True) -> list[Hypothesis]:
    expect_int("beam", beam, 1)
    if not math.isfinite(alpha) or alpha < 0:  # nan would rank every hypothesis as nan
        raise ValueError(f"alpha: expected a finite number >= 0, got {alpha}")
    limit = max_lengths(src_lengths, ratio)
    if beam == 1:
        return greedy(model, src, src_lengths, limit, cache=cache)
    return beam_search(model, src, src_lengths, limit, beam, alpha, cache=cache)
