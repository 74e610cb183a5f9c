import pytest
import torch
from torch import nn

import attnlab
from attnlab import KVCache, MultiHeadAttention, masks


@pytest.mark.parametrize("same_dim", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_parity_with_nn_multiheadattention(same_dim, bias):
    torch.manual_seed(0)
    kdim = None if same_dim else 6
    ref = nn.MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=kdim, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(2, 5, 16)
    kv = torch.randn(2, 7, kdim or 16)
    pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # torch: True = ignore
    r_out, r_w = ref(x, kv, kv, key_padding_mask=pad, average_attn_weights=False)
    o = ours(x, kv, mask=~pad.view(2, 1, 1, 7), need_weights=True)  # attnlab: True = attend
    torch.testing.assert_close(o.output, r_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o.weights, r_w, atol=1e-6, rtol=1e-5)


def test_causal_self_attention_matches_torch_and_fully_masked_rows_stay_finite():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(1, 4, 8)
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
    torch.testing.assert_close(ours(x, mask=masks.causal()).output, ref(x, x, x, attn_mask=causal)[0],
                               atol=1e-5, rtol=1e-5)
    # torch gives NaN where every key is masked; attnlab gives the output projection of zeros
    nothing = torch.zeros(1, 4, dtype=torch.bool)
    out = ours(x, mask=nothing.view(1, 1, 1, 4)).output
    torch.testing.assert_close(out, ours.out_proj.bias.expand_as(out))


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa = MultiHeadAttention(16, 4, n_kv_heads=2).eval()
    mha = MultiHeadAttention(16, 4).eval()
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for src, dst in ((gqa.k_proj, mha.k_proj), (gqa.v_proj, mha.v_proj)):
            w = src.weight.view(2, 4, 16).repeat_interleave(2, 0).reshape(16, 16)
            b = src.bias.view(2, 4).repeat_interleave(2, 0).reshape(16)
            dst.weight.copy_(w), dst.bias.copy_(b)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(gqa(x).output, mha(x).output, atol=1e-6, rtol=1e-5)
    assert MultiHeadAttention(16, 4, n_kv_heads=1).k_proj.out_features == 4  # MQA


def test_kv_cache_step_by_step_equals_full_causal_forward():
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4, n_kv_heads=2).eval()
    x = torch.randn(2, 6, 16)
    full = m(x, mask=masks.causal(), need_weights=True)
    cache = KVCache()
    first = m(x[:, :2], mask=masks.causal("bottom-right"), cache=cache)  # a 2-token prompt
    steps = [first.output]
    for t in range(2, 6):
        steps.append(m(x[:, t:t + 1], mask=masks.causal("bottom-right"), cache=cache).output)
    torch.testing.assert_close(torch.cat(steps, 1), full.output, atol=1e-6, rtol=1e-5)
    assert len(cache) == 6


def test_cross_attention_with_kdim_vdim_and_weights():
    m = MultiHeadAttention(8, 2, kdim=5, vdim=3)
    out = m(torch.randn(2, 4, 8), torch.randn(2, 9, 5), torch.randn(2, 9, 3), need_weights=True)
    assert out.output.shape == (2, 4, 8) and out.weights.shape == (2, 2, 4, 9)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, 2, 4))


def test_hook_point_ablates_a_head():
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 3, 8)
    base = m(x).output

    def ablate(module, inputs, z):
        z = z.clone()
        z[:, 1] = 0
        return z

    h = m.hook_z.register_forward_hook(ablate)
    try:
        ablated = m(x).output
    finally:
        h.remove()
    merged_head0 = attnlab.attention(
        m._heads(m.q_proj(x), 2), m._heads(m.k_proj(x), 2), m._heads(m.v_proj(x), 2)).context
    merged_head0[:, 1] = 0
    expect = m.out_proj(merged_head0.transpose(1, 2).reshape(1, 3, 8))
    torch.testing.assert_close(ablated, expect, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ablated, base)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(1, 6, 8)
    m.eval()
    torch.testing.assert_close(m(x).output, m(x).output)
    m.train()
    assert not torch.allclose(m(x).output, m(x).output)


@pytest.mark.parametrize(
    ("ctor", "pattern"),
    [(lambda: MultiHeadAttention(10, 4), "embed_dim: expected a multiple of num_heads=4"),
     (lambda: MultiHeadAttention(8, 4, n_kv_heads=3), "n_kv_heads: expected a divisor"),
     (lambda: MultiHeadAttention(8, 0), "num_heads"),
     (lambda: MultiHeadAttention(8, 2, dropout=1.0), "dropout")],
)
def test_bad_constructor_arguments(ctor, pattern):
    with pytest.raises(ValueError, match=pattern):
        ctor()


def test_bad_forward_inputs():
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"query: expected last dim 8, got shape \(1, 3, 7\)"):
        m(torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match="query: expected 3 dims"):
        m(torch.randn(3, 8))
    with pytest.raises(ValueError, match="key/value"):
        m(torch.randn(1, 3, 8), torch.randn(1, 4, 8), torch.randn(1, 5, 8))
