import math

import pytest
import torch

import attnlab
from attnlab import masks, positional, score_mods, scores
from attnlab.functional.masks import index_grids


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(score_mods.alibi_slopes(8),
                               torch.tensor([2.0 ** -(i + 1) for i in range(8)], dtype=torch.float64))
    s6 = score_mods.alibi_slopes(6)  # 4 from the power of two, then every other of 8
    assert s6.tolist()[:4] == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    assert s6.tolist()[4:] == [2 ** -1, 2 ** -3]


def test_alibi_equals_an_explicit_additive_bias():
    q, k, v = (torch.randn(1, 4, 6, 8) for _ in range(3))
    slopes = score_mods.alibi_slopes(4).float().view(1, 4, 1, 1)
    dist = (torch.arange(6).view(1, -1) - torch.arange(6).view(-1, 1)).float()  # kv - q
    bias = slopes * dist
    a = attnlab.attention(q, k, v, score_mod=score_mods.alibi(4), mask=masks.causal()).context
    b = attnlab.attention(q, k, v, mask=bias.masked_fill(dist > 0, float("-inf"))).context
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_softcap_temperature_compose():
    s = torch.linspace(-100, 100, 11).view(1, 1, 1, -1)
    b, h, q, kv = index_grids(1, 1, 1, 11)
    capped = score_mods.softcap(30.0)(s, b, h, q, kv)
    assert capped.abs().max() < 30 and torch.allclose(capped[..., 5], s[..., 5])
    both = score_mods.compose(score_mods.temperature(2.0), score_mods.softcap(30.0))(s, b, h, q, kv)
    torch.testing.assert_close(both, 30 * torch.tanh(s / 2 / 30))
    with pytest.raises(ValueError, match="cap"):
        score_mods.softcap(0)


def test_relative_position_bias_is_learnable():
    table = torch.zeros(2, 5, requires_grad=True)
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    out = attnlab.attention(q, k, v, score_mod=score_mods.relative_position_bias(table, 2))
    out.context.sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"table: expected shape \(H, 7\)"):
        score_mods.relative_position_bias(table, 3)


def test_score_functions():
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    torch.testing.assert_close(scores.scaled_dot(q, k), q @ k.T / 2)
    W = torch.randn(4, 4)
    torch.testing.assert_close(scores.general(q, k, W), q @ W @ k.T)
    wq, wk, v = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6)
    direct = torch.stack([torch.stack([v @ torch.tanh(wq @ q[i] + wk @ k[j]) for j in range(5)])
                          for i in range(3)])
    torch.testing.assert_close(scores.additive(q, k, wq, wk, v), direct, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scores.concat(q, k, torch.cat([wq, wk], 1), v), direct, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"weight: expected shape \(Dq, Dk\) = \(4, 4\)"):
        scores.general(q, k, torch.randn(3, 4))


def test_sinusoidal_values():
    pe = positional.sinusoidal(50, 16, dtype=torch.float64)
    assert pe[0, 0::2].abs().max() == 0 and torch.all(pe[0, 1::2] == 1)
    assert math.isclose(pe[7, 2].item(), math.sin(7 / 10000 ** (2 / 16)), rel_tol=1e-12)
    assert math.isclose(pe[7, 3].item(), math.cos(7 / 10000 ** (2 / 16)), rel_tol=1e-12)


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    cos, sin = positional.rotary_cos_sin(40, 16, dtype=torch.float64)
    rq = positional.apply_rotary(q.expand(40, 16), cos, sin)
    rk = positional.apply_rotary(k.expand(40, 16), cos, sin)
    assert math.isclose(float(rq[10] @ rk[7]), float(rq[33] @ rk[30]), rel_tol=1e-9)
    assert not math.isclose(float(rq[10] @ rk[7]), float(rq[10] @ rk[9]), rel_tol=1e-3)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(40))
    c2, _ = positional.rotary_cos_sin(5, 16, offset=35, dtype=torch.float64)
    torch.testing.assert_close(c2, cos[35:])
    with pytest.raises(ValueError, match="even"):
        positional.rotary_cos_sin(4, 7)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "eager"])
def test_key_bias_runs_as_a_mask_and_equals_the_same_score_mod(backend):
    # A query-free bias per (row, head, key): -inf removes a key, finite entries add; folded into
    # the mask, so SDPA (no score_mod support) runs it; GQA: 4 query heads over 2 K/V heads.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64) for _ in range(2))
    table = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)  # longer than Lk: a decode loop's
    table[0, 1, [2, 3]] = float("-inf")
    table[1, :, 0] = float("-inf")
    kb = score_mods.KeyBias(table)
    got = attnlab.attention(q, k, v, score_mod=kb, mask=masks.causal(), backend=backend).context

    def same(s, b, h, qi, kv):  # the closure a user would write
        return s + table[b, h, kv]

    want = attnlab.attention(q, k, v, score_mod=same, mask=masks.causal(), backend="eager").context
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_key_bias_refuses_a_table_that_does_not_fit():
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    with pytest.raises(ValueError, match=r"table of shape \(1 or B=1, 1 or H=2, >= Lk=4\), got \(1, 3, 4\)"):
        attnlab.attention(q, k, v, score_mod=score_mods.KeyBias(torch.zeros(1, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        score_mods.KeyBias(torch.full((1, 1, 4), float("nan")))
