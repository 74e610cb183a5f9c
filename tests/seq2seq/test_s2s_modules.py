"""Bahdanau and Luong attention modules: against functional scores and direct loops."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.functional.scores import additive, concat, dot, general
from attnlab.modules.bahdanau import BahdanauAttention, tanh
from attnlab.modules.luong import LuongAttention, LuongLocalM, LuongLocalP, make_luong

B, LQ, LS, D = 3, 5, 7, 6
LENGTHS = torch.tensor([7, 4, 1])


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, LQ, D, generator=g, dtype=dtype)
    m = torch.randn(B, LS, D, generator=g, dtype=dtype)
    return q, m


def _pair_score(mod, score: str, h: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
    """Luong eq. (8) for one (h_t, h̄_s) pair, written out."""
    sc = mod.scorer
    if score == "dot":
        return h @ hs
    if score == "general":
        return h @ sc.w_a @ hs
    return sc.v_a @ torch.tanh(sc.w_q.weight @ h + sc.w_k.weight @ hs)


def _local_loop(mod, score: str, q, m, lengths, *, predictive: bool, positions=None):
    """Direct per-sentence, per-step implementation of Luong §3.2 (eq. 7, 9, 10)."""
    w = torch.zeros(B, LQ, LS, dtype=q.dtype)
    ctx = torch.zeros(B, LQ, D, dtype=q.dtype)
    width = mod.window
    for b in range(B):
        n = int(lengths[b])
        for t in range(LQ):
            h = q[b, t]
            if predictive:  # eq. 9
                p = n * torch.sigmoid(mod.v_p.weight[0] @ torch.tanh(mod.w_p.weight @ h))
                window = [s for s in range(n) if abs(s - float(p.detach())) <= width]
            else:
                p = t if positions is None else int(positions[b, t])
                window = [s for s in range(n) if p - width <= s <= p + width]
            if not window:
                continue
            scores = torch.stack([_pair_score(mod, score, h, m[b, s]) for s in window])
            a = torch.softmax(scores, 0)  # eq. 7 inside the window
            for i, s in enumerate(window):
                weight = a[i]
                if predictive:  # eq. 10, σ = D/2
                    weight = weight * torch.exp(-((s - p) ** 2) / (2 * (width / 2) ** 2))
                w[b, t, s] = weight
                ctx[b, t] += weight * m[b, s]
    return w, ctx


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_local_m_matches_direct_loop(score):
    torch.manual_seed(1)
    mod = LuongLocalM(D, D, window=1, score=score).double()
    q, m = _inputs()
    out = mod(q, m, LENGTHS)
    w, ctx = _local_loop(mod, score, q, m, LENGTHS, predictive=False)
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.context, ctx)
    # Decoding passes explicit step indices, e.g. steps 3..7 of a longer target.
    pos = torch.arange(3, 3 + LQ).expand(B, LQ)
    out = mod(q, m, LENGTHS, positions=pos)
    w, ctx = _local_loop(mod, score, q, m, LENGTHS, predictive=False, positions=pos)
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.context, ctx)


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_local_p_matches_direct_loop(score):
    torch.manual_seed(2)
    mod = LuongLocalP(D, D, window=2, score=score).double()
    q, m = _inputs(3)
    out = mod(q, m, LENGTHS)
    w, ctx = _local_loop(mod, score, q, m, LENGTHS, predictive=True)
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.context, ctx)
    assert out.centres is not None and bool((out.centres < LENGTHS[:, None]).all())


def test_local_p_is_differentiable_including_the_position():
    torch.manual_seed(4)
    mod = LuongLocalP(D, D, window=3, score="general").double()
    q, m = _inputs(5)
    assert torch.autograd.gradcheck(lambda q_, m_: mod(q_, m_, LENGTHS).context,
                                    (q.requires_grad_(), m.requires_grad_()))
    mod(q, m, LENGTHS).context.sum().backward()
    assert mod.w_p.weight.grad is not None and mod.w_p.weight.grad.abs().sum() > 0  # via eq. 10


def test_local_m_gradcheck_and_window_past_the_end_gives_zero_context():
    mod = LuongLocalM(D, D, window=1, score="dot").double()
    q, m = _inputs(6)
    assert torch.autograd.gradcheck(lambda q_, m_: mod(q_, m_, LENGTHS).context,
                                    (q.requires_grad_(), m.requires_grad_()))
    out = mod(q, m, LENGTHS)
    # sentence 2 has one token: steps t >= 2 see nothing in [t-1, t+1]
    assert torch.equal(out.context[2, 2:], torch.zeros_like(out.context[2, 2:]))


def test_bahdanau_matches_functional_additive_and_masks_padding():
    torch.manual_seed(7)
    mod = BahdanauAttention(D, D, attn_dim=5).double()
    q, m = _inputs(8)
    out = mod(q, m, LENGTHS)
    ref = additive(q, m, mod.w_a.weight, mod.u_a.weight, mod.v_a)
    allowed = torch.arange(LS)[None, None, :] < LENGTHS[:, None, None]
    # Padded steps are zeroed before the key projection (their scores are a zero step's).
    torch.testing.assert_close(out.scores[allowed.expand_as(ref)], ref[allowed.expand_as(ref)])
    expect = torch.softmax(ref.masked_fill(~allowed, -math.inf), -1)
    torch.testing.assert_close(out.weights, expect)
    torch.testing.assert_close(out.context, expect @ m)
    assert torch.equal(out.weights[1, :, 4:], torch.zeros(LQ, 3, dtype=torch.float64))


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_luong_global_scores_match_functional(score):
    torch.manual_seed(9)
    mod = LuongAttention(D, D, score=score).double()
    q, m = _inputs(10)
    out = mod(q, m)
    sc = mod.scorer
    if score == "dot":
        ref = dot(q, m)
    elif score == "general":
        ref = general(q, m, sc.w_a)
    else:
        ref = concat(q, m, torch.cat([sc.w_q.weight, sc.w_k.weight], 1), sc.v_a)
    torch.testing.assert_close(out.scores, ref)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(B, LQ, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["bahdanau", "luong-dot", "luong-concat", "luong-local-m",
                                  "luong-local-p"])
def test_padding_does_not_change_a_sentence(kind):
    torch.manual_seed(11)
    mod = BahdanauAttention(D, D) if kind == "bahdanau" else make_luong(kind, D, D, window=2)
    q, m = _inputs(12, torch.float32)
    out = mod(q, m, LENGTHS)
    alone = mod(q[1:2], m[1:2, :4], LENGTHS[1:2])
    torch.testing.assert_close(out.context[1], alone.context[0])
    torch.testing.assert_close(out.weights[1, :, :4], alone.weights[0])


def test_hook_can_patch_alignments():
    mod = LuongAttention(D, D, score="dot").double()
    q, m = _inputs(13)
    uniform = torch.full((B, LQ, LS), 1.0 / LS, dtype=torch.float64)
    handle = mod.hook_weights.register_forward_hook(lambda _m, _i, _o: uniform)
    try:
        out = mod(q, m)
    finally:
        handle.remove()
    torch.testing.assert_close(out.context, uniform @ m)


def test_fast_tanh_matches_torch_tanh():
    x = torch.linspace(-20, 20, 1001)
    torch.testing.assert_close(tanh(x), torch.tanh(x), atol=1e-6, rtol=1e-6)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="score: expected one of dot, general, concat"):
        LuongAttention(D, D, score="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query_dim == key_dim"):
        LuongAttention(4, 6, score="dot")
    with pytest.raises(ValueError, match="window"):
        LuongLocalP(D, D, window=0)
    q, m = _inputs()
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 7\]"):
        LuongAttention(D, D).double()(q, m, torch.tensor([8, 1, 1]))
    with pytest.raises(TypeError, match="positions: expected integer"):
        LuongLocalM(D, D).double()(q, m, positions=torch.zeros(B, LQ))
    with pytest.raises(ValueError, match="kind: expected one of"):
        make_luong("luong-foo", D, D)
