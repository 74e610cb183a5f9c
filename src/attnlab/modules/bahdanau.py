"""Bahdanau (additive) attention for encoder-decoder models.

Bahdanau, Cho, Bengio 2014, "Neural Machine Translation by Jointly Learning to Align and
Translate". The previous decoder state s_{i-1} scores every source annotation h_j:

    e_ij = a(s_{i-1}, h_j) = v_aᵀ tanh(W_a s_{i-1} + U_a h_j)     (eq. 6; appendix A.1.2)
    α_ij = exp(e_ij) / Σ_k exp(e_ik)                                (eq. 6)
    c_i  = Σ_j α_ij h_j                                             (eq. 5)

Appendix A.1.2 notes that U_a h_j does not depend on i and "can be pre-computed":
:meth:`BahdanauAttention.project_keys` does that once per sentence, so a decoder step costs
O(Ls·A) instead of O(Ls·A·Dk).

This file also holds what every seq2seq attention module here shares: the :class:`Alignment`
output, the source padding mask (built with :mod:`attnlab.functional.masks`) and the rule for
non-finite memory: a source position whose weight is zero contributes nothing, even if it
holds a NaN or inf (padding an encoder never wrote, say), to the context and to every gradient,
as in the core attention (:mod:`attnlab.backends.nonfinite`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.backends.nonfinite import values_finite
from attnlab.functional.checks import expect_positive_int, expect_tensor
from attnlab.functional.masks import padding
from attnlab.functional.softmax import masked_softmax
from attnlab.modules.hooks import HookPoint


@dataclass
class Alignment:
    """One attention read of the source. ``weights`` are the alignments a decoder shows."""

    context: Tensor  # (B, Lq, Dk): Σ_s weights[s] · memory[s]
    weights: Tensor  # (B, Lq, Ls): zeros at padded / out-of-window positions
    scores: Tensor  # (B, Lq, Ls): before the softmax, unmasked (padded steps score as zeros)
    allowed: Tensor  # (B, Lq, Ls) bool, True = may attend
    centres: Tensor | None = None  # (B, Lq): local-p's predicted position p_t (Luong eq. 9)


def source_allowed(lengths: Tensor | None, batch: int, q_len: int, src_len: int,
                   device: torch.device) -> Tensor:
    """(B, Lq, Ls) bool: key s is a real source token (s < lengths[b]).

    ``lengths=None`` means no padding. Built with the mask language (True = may attend).
    """
    if lengths is None:
        return torch.ones(batch, q_len, src_len, dtype=torch.bool, device=device)
    b, h, q, kv = index_grid(batch, q_len, src_len, device)
    return padding(k_lengths=lengths).evaluate(b, h, q, kv, q_len, src_len)[:, 0].expand(
        batch, q_len, src_len)  # (B, 1, Lq|1, Ls) -> (B, Lq, Ls)


def index_grid(batch: int, q_len: int, src_len: int, device: torch.device
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index tensors b (B,1,1,1), h (1,1,1,1), q (1,1,Lq,1), kv (1,1,1,Ls) for Mask.evaluate."""
    return (torch.arange(batch, device=device).view(-1, 1, 1, 1),
            torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device),
            torch.arange(q_len, device=device).view(1, 1, -1, 1),
            torch.arange(src_len, device=device).view(1, 1, 1, -1))


def check_inputs(query: object, memory: object, lengths: object) -> tuple[Tensor, Tensor]:
    """query (B, Lq, Dq), memory (B, Ls, Dk), lengths (B,) ints in [0, Ls] or None.
    Returns the query and the memory with its padded steps zeroed (:func:`unpadded`)."""
    q = expect_tensor("query", query, ndim=3, floating=True)
    m = expect_tensor("memory", memory, ndim=3, floating=True)
    if m.shape[0] != q.shape[0]:
        raise ValueError(
            f"memory: expected batch {q.shape[0]} (as query), got shape {tuple(m.shape)}")
    if lengths is not None:
        ln = expect_tensor("lengths", lengths, ndim=1)
        if ln.shape[0] != q.shape[0] or ln.is_floating_point():
            raise ValueError(
                f"lengths: expected {q.shape[0]} integers, got {ln.dtype} {tuple(ln.shape)}")
        if bool((ln < 0).any()) or bool((ln > m.shape[1]).any()):
            raise ValueError(f"lengths: expected values in [0, {m.shape[1]}], got {ln.tolist()}")
    return q, unpadded(m, lengths if isinstance(lengths, Tensor) else None)


def unpadded(memory: Tensor, lengths: Tensor | None) -> Tensor:
    """memory (B, Ls, D) with the steps at or past each sentence's length zeroed.

    Padded steps are masked out of the softmax, but before it they go through the key
    projection and its tanh: a huge finite value there (1e38 in float32) overflows to ±inf,
    tanh(inf − inf) is NaN, and 0·NaN in the backward turns every attention parameter's
    gradient into NaN although the context is exact. Zeroed first, their values never reach
    a projection, a score or a gradient (the memory's gradient there is zero, as it is for
    any position the attention may not read)."""
    if lengths is None:
        return memory
    pad = torch.arange(memory.shape[1], device=memory.device) >= lengths.to(memory.device).unsqueeze(1)
    return memory.masked_fill(pad.unsqueeze(-1), 0.0) if bool(pad.any()) else memory  # (B, Ls, D)


def additive_from_keys(q_proj: Tensor, keys: Tensor, v: Tensor) -> Tensor:
    """vᵀ tanh(q_proj + keys): the additive score with both projections already applied.

    q_proj (B, Lq, A), keys (B, Ls, A), v (A,) -> (B, Lq, Ls). Same value as
    :func:`attnlab.functional.scores.additive` (tested), without re-projecting the keys.
    """
    hidden = tanh(q_proj.unsqueeze(-2) + keys.unsqueeze(-3))  # (B, Lq, Ls, A)
    return hidden @ v  # (B, Lq, Ls)


def tanh(x: Tensor) -> Tensor:
    """tanh(x) = 2·sigmoid(2x) − 1. Same function (float32 rounding aside); on a CPU torch's
    vectorised sigmoid is several times faster than its tanh (measured: 0.2 vs 1.2 ms on a
    (64, 1, 50, 128) tensor), and this tanh over (B, Lq, Ls, A) dominates an additive step."""
    return torch.sigmoid(2.0 * x) * 2.0 - 1.0


def nonfinite_positions(memory: Tensor) -> Tensor | None:
    """(B, Ls) bool: source positions whose vector in memory (B, Ls, D) holds a NaN or inf;
    None when there is none (the usual case, found with one cheap pass)."""
    if values_finite(memory):
        return None
    bad = ~torch.isfinite(memory).all(-1)  # (B, Ls)
    return bad if bool(bad.any()) else None  # else the sum merely overflowed


def finite_memory(memory: Tensor) -> Tensor:
    """memory (B, Ls, D) with its NaN/inf positions zeroed, for the key projections.

    A key projection is a matmul over the whole batch: one NaN row would reach every other
    row's gradient of the projection weights through 0·NaN. The keys of those positions are
    then zero vectors with finite scores; a row that does read such a position still gets a
    non-finite context (:func:`read`), as the unmasked sum would give it.
    """
    bad = nonfinite_positions(memory)
    return memory if bad is None else memory.masked_fill(bad.unsqueeze(-1), 0.0)


def read(weights: Tensor, memory: Tensor) -> Tensor:
    """context = Σ_s weights[s] · memory[s]: (B, Lq, Ls) @ (B, Ls, Dk) -> (B, Lq, Dk).

    A position of zero weight (padding, outside a local window) contributes nothing even if it
    holds a NaN or inf; a plain matmul would give 0·NaN = NaN. Checked on the (small) context,
    so the usual, finite case costs one sum (a sum is finite only if every term is; ~2 µs for a
    (64, 1, 128) step, isfinite().all() takes ~15). Rows that do put weight on a non-finite
    position get the plain (non-finite) context, with no gradient through it.
    """
    context = weights @ memory  # (B, Lq, Ls) @ (B, Ls, Dk) -> (B, Lq, Dk)
    if math.isfinite(float(context.detach().sum())):
        return context
    bad = nonfinite_positions(memory)  # (B, Ls)
    if bad is None:
        return context  # the weights (or an overflow) made it non-finite, not the memory
    clean = weights @ memory.masked_fill(bad.unsqueeze(-1), 0.0)  # (B, Lq, Dk)
    reads_bad = ((weights != 0) & bad.unsqueeze(-2)).any(-1, keepdim=True)  # (B, Lq, 1)
    return torch.where(reads_bad, context.detach(), clean)


def align(scores: Tensor, allowed: Tensor) -> Tensor:
    """Masked softmax over the source (eq. 6): (B, Lq, Ls) -> weights (B, Lq, Ls).

    A row with nothing allowed gives zero weights (and so a zero context).
    """
    return masked_softmax(scores, allowed)[0]


class BahdanauAttention(nn.Module):
    """Additive attention (Bahdanau et al. 2014, eq. 6 with the A.1.2 parametrisation).

    ``query_dim`` is the decoder state size n, ``key_dim`` the annotation size 2n for a
    bidirectional encoder, ``attn_dim`` the hidden size n' of the alignment MLP.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int | None = None) -> None:
        super().__init__()
        for name, v in (("query_dim", query_dim), ("key_dim", key_dim)):
            expect_positive_int(name, v)
        attn_dim = query_dim if attn_dim is None else expect_positive_int("attn_dim", attn_dim)
        self.query_dim, self.key_dim, self.attn_dim = query_dim, key_dim, attn_dim
        self.w_a = nn.Linear(query_dim, attn_dim, bias=False)  # W_a ∈ R^{n'×n}
        self.u_a = nn.Linear(key_dim, attn_dim, bias=False)  # U_a ∈ R^{n'×2n}
        self.v_a = nn.Parameter(torch.empty(attn_dim))  # v_a ∈ R^{n'}
        nn.init.normal_(self.v_a, std=attn_dim ** -0.5)
        self.hook_weights = HookPoint()  # (B, Lq, Ls): read or patch alignments

    def project_keys(self, memory: Tensor, lengths: Tensor | None = None) -> Tensor:
        """U_a h_j for every annotation, once per sentence (A.1.2). (B, Ls, Dk) -> (B, Ls, A).
        NaN/inf annotations and padded steps (``lengths``) get zero keys (:func:`finite_memory`,
        :func:`unpadded`)."""
        return self.u_a(finite_memory(unpadded(memory, lengths)))

    def forward(self, query: Tensor, memory: Tensor, lengths: Tensor | None = None, *,
                keys: Tensor | None = None, allowed: Tensor | None = None,
                positions: Tensor | None = None) -> Alignment:
        """query s_{i-1} (B, Lq, Dq), memory h (B, Ls, Dk), lengths (B,) source lengths.

        ``keys`` (from :meth:`project_keys`) and ``allowed`` (B, 1|Lq, Ls) are optional
        caches a decoder passes at every step; ``positions`` is accepted and ignored so
        that all attention modules share one call signature.
        """
        q, m = check_inputs(query, memory, lengths)
        del positions  # global attention: every step reads the whole source
        keys = self.project_keys(m) if keys is None else keys
        scores = additive_from_keys(self.w_a(q), keys, self.v_a)  # e_ij: (B, Lq, Ls)
        if allowed is None:
            allowed = source_allowed(lengths, q.shape[0], q.shape[1], m.shape[1], m.device)
        allowed = allowed.expand_as(scores)
        weights = self.hook_weights(align(scores, allowed))  # α_ij, a hook may patch it
        context = read(weights, m)  # c_i (eq. 5): (B, Lq, Ls) @ (B, Ls, Dk) -> (B, Lq, Dk)
        return Alignment(context, weights, scores, allowed)
