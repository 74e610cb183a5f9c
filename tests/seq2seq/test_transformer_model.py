"""The Transformer from attnlab's parts: shapes, masks, parity with torch's layers, every
config key reaching the model, head masks, files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.data.io import FormatError
from attnlab.functional.masks import causal, materialize, padding
from attnlab.models.transformer import (
    LMConfig,
    Transformer,
    TransformerConfig,
    TransformerLayer,
    TransformerLM,
    ablation_masks,
    attention_sites,
    head_mask,
)
from attnlab.models.translators import load_translator
from attnlab.modules.multihead import MultiHeadAttention

V_SRC, V_TGT = 17, 19


def model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(src_vocab_size=V_SRC, tgt_vocab_size=V_TGT, d_model=32, heads=4, layers=2, ffn=48,
               dropout=0.0)
    return Transformer(TransformerConfig(**{**cfg, **kw})).eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V_SRC, (3, 7), generator=g)
    lengths = torch.tensor([7, 4, 2])
    for b, n in enumerate(lengths.tolist()):
        src[b, n:] = 0  # PAD
    tgt = torch.randint(4, V_TGT, (3, 5), generator=g)
    return src, lengths, tgt


def test_shapes_of_logits_and_every_attention():
    m = model()
    src, lengths, tgt = batch()
    out = m(src, lengths, tgt, need_weights=True)
    assert out.logits.shape == (3, 5, V_TGT)
    assert [w.shape for w in out.encoder_self] == [(3, 4, 7, 7)] * 2
    assert [w.shape for w in out.decoder_self] == [(3, 4, 5, 5)] * 2
    assert [w.shape for w in out.cross] == [(3, 4, 5, 7)] * 2
    assert out.weights is not None and out.weights.shape == (3, 5, 7)  # last layer, mean of heads
    torch.testing.assert_close(out.weights, out.cross[-1].mean(1))
    plain = m(src, lengths, tgt)
    assert plain.encoder_self is None and plain.weights is None
    torch.testing.assert_close(plain.logits, out.logits)  # eager (weights) == sdpa path


def test_padding_keys_are_never_attended_and_do_not_matter():
    m = model()
    src, lengths, tgt = batch()
    out = m(src, lengths, tgt, need_weights=True)
    for b, n in enumerate(lengths.tolist()):
        for w in (*out.encoder_self, *out.cross):
            assert bool((w[b, ..., n:] == 0).all())  # exact zeros on padded keys
            torch.testing.assert_close(w[b].sum(-1), torch.ones(w.shape[1:-1]))
    other = src.clone()
    other[1, 4:] = 5  # garbage where sentence 1 is padding
    torch.testing.assert_close(m(other, lengths, tgt).logits[1], out.logits[1])


def test_decoder_is_causal():
    m = model()
    src, lengths, tgt = batch()
    out = m(src, lengths, tgt, need_weights=True)
    upper = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    for w in out.decoder_self:
        assert bool((w[..., upper] == 0).all())
    later = tgt.clone()
    later[:, 3:] = 6  # change the future: earlier predictions must not move
    torch.testing.assert_close(m(src, lengths, later).logits[:, :3], out.logits[:, :3])


def _copy_layer(ours: TransformerLayer, theirs: nn.Module, cross: bool) -> None:
    with torch.no_grad():
        ours.self_attn.load_state_dict(MultiHeadAttention.from_torch(theirs.self_attn).state_dict())
        if cross:
            assert ours.cross_attn is not None and ours.norm_cross is not None
            ours.cross_attn.load_state_dict(
                MultiHeadAttention.from_torch(theirs.multihead_attn).state_dict())
            ours.norm_cross.load_state_dict(theirs.norm2.state_dict())
        assert ours.ffn is not None and ours.norm_ffn is not None
        ours.ffn.w1.load_state_dict(theirs.linear1.state_dict())
        ours.ffn.w2.load_state_dict(theirs.linear2.state_dict())
        ours.norm_self.load_state_dict(theirs.norm1.state_dict())
        ours.norm_ffn.load_state_dict((theirs.norm3 if cross else theirs.norm2).state_dict())


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_layer_matches_torch(norm):
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True,
                                        norm_first=norm == "pre").eval()
    ours = TransformerLayer(32, 4, 48, dropout=0.0, attn_dropout=0.0, norm=norm).eval()
    _copy_layer(ours, theirs, cross=False)
    x = torch.randn(3, 7, 32)
    lengths = torch.tensor([7, 4, 2])
    allowed = materialize(padding(k_lengths=lengths), 1, 7, batch=3)  # (B, 1, 1, Ls)
    got = ours(x, self_mask=allowed).x
    want = theirs(x, src_key_padding_mask=~allowed[:, 0, 0])  # torch: True = padding
    for b, n in enumerate(lengths.tolist()):  # torch's fast path may zero padded rows
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_layer_matches_torch(norm):
    torch.manual_seed(0)
    theirs = nn.TransformerDecoderLayer(32, 4, 48, dropout=0.0, batch_first=True,
                                        norm_first=norm == "pre").eval()
    ours = TransformerLayer(32, 4, 48, dropout=0.0, attn_dropout=0.0, norm=norm, cross=True).eval()
    _copy_layer(ours, theirs, cross=True)
    x, mem = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    lengths = torch.tensor([7, 4, 2])
    allowed = materialize(padding(k_lengths=lengths), 1, 7, batch=3)
    assert ours.cross_attn is not None
    got = ours(x, self_mask=causal("bottom-right"), memory_kv=ours.cross_attn.project_kv(mem),
               cross_mask=allowed).x
    want = theirs(x, mem, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5),
                  tgt_is_causal=True, memory_key_padding_mask=~allowed[:, 0, 0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_projected_kv_equals_key_value_and_refuses_both():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    q, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    direct = mha(q, mem, need_weights=True)
    projected = mha(q, kv=mha.project_kv(mem), need_weights=True)
    torch.testing.assert_close(projected.output, direct.output)
    torch.testing.assert_close(projected.weights, direct.weights)
    with pytest.raises(ValueError, match=r"kv: expected no key, value, cache or rotary .* got key"):
        mha(q, mem, kv=mha.project_kv(mem))
    with pytest.raises(ValueError, match=r"kv\[0\]: expected \(B, Hkv, Lk, Dh\)"):
        mha(q, kv=(torch.randn(2, 5, 16), torch.randn(2, 5, 16)))


# Each config key, a value other than the default, and what must then differ in the model.
KEYS = {
    "d_model": (48, lambda m: m.src_embed.tokens.weight.shape[1] == 48),
    "heads": (2, lambda m: all(s.heads == 2 for s in attention_sites(m))),
    "layers": (3, lambda m: len(m.encoder) == len(m.decoder) == 3),
    "ffn": (40, lambda m: m.encoder[0].ffn.w1.out_features == 40),
    "dropout": (0.3, lambda m: m.encoder[0].drop.p == 0.3 and m.src_embed.drop.p == 0.3),
    "attn_dropout": (0.2, lambda m: all(s.module.dropout == 0.2 for s in attention_sites(m))),
    "positions": ("learned", lambda m: m.src_embed.table is not None),
    "norm": ("pre", lambda m: m.encoder[0].pre and isinstance(m.encoder_norm, nn.LayerNorm)),
    "tie_embeddings": (False, lambda m: m.out is not None and m.out_bias is None),
    "max_len": (64, lambda m: True),  # checked with learned positions below
}


def test_every_config_key_reaches_the_model():
    names = {f for f in TransformerConfig.__dataclass_fields__} - {"src_vocab_size", "tgt_vocab_size"}
    assert names == set(KEYS)
    base = model()
    for key, (value, check) in KEYS.items():
        assert not check(base) or key == "max_len", key
        assert check(model(**{key: value})), key
    learned = model(positions="learned", max_len=64)
    assert learned.src_embed.table is not None and learned.src_embed.table.num_embeddings == 64
    src, lengths, tgt = batch()
    with pytest.raises(ValueError, match=r"model\.max_len=6"):
        model(positions="learned", max_len=6)(src, lengths, tgt)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rotary"])
def test_positions_make_the_encoder_order_aware(positions):
    """Without positions self-attention is permutation-equivariant (a bag of tokens)."""
    perm = torch.tensor([2, 0, 1, 4, 3])
    src = torch.tensor([[5, 6, 7, 8, 9]])
    n = torch.tensor([5])
    for kind, equivariant in (("none", True), (positions, False)):
        m = model(positions=kind)
        a = m.encode(src, n).states[:, perm]
        b = m.encode(src[:, perm], n).states
        assert torch.allclose(a, b, atol=1e-5) == equivariant, kind


def test_head_mask_ablates_one_head_through_hook_z():
    m = model()
    src, lengths, tgt = batch()
    base = m(src, lengths, tgt).logits
    with head_mask(m, {"decoder.1.cross": torch.ones(4)}):
        torch.testing.assert_close(m(src, lengths, tgt).logits, base)
    masks = ablation_masks(m, [("decoder.1.cross", 2)])
    assert masks["decoder.1.cross"].tolist() == [1.0, 1.0, 0.0, 1.0]
    seen = []  # what W^O reads: Concat(head_1..head_h) (B, Lt, H·Dh), Dh = 8
    site = {s.name: s for s in attention_sites(m)}["decoder.1.cross"].module
    handle = site.out_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    with head_mask(m, masks):
        ablated = m(src, lengths, tgt).logits
    handle.remove()
    assert bool((seen[0][..., 16:24] == 0).all()) and bool((seen[0][..., 8:16] != 0).all())
    assert not torch.allclose(ablated, base)
    torch.testing.assert_close(m(src, lengths, tgt).logits, base)  # removed after the block
    with pytest.raises(ValueError, match=r"unknown attention 'decoder\.9\.cross'"):
        ablation_masks(m, [("decoder.9.cross", 0)])
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(4,\)"), \
            head_mask(m, {"encoder.0.self": torch.ones(3)}):
        pass
    assert [s.name for s in attention_sites(m)] == [
        "encoder.0.self", "encoder.1.self", "decoder.0.self", "decoder.0.cross",
        "decoder.1.self", "decoder.1.cross"]


def test_lm_attention_only_and_cached_equals_uncached():
    torch.manual_seed(0)
    lm = TransformerLM(LMConfig(vocab_size=11, d_model=32, heads=4, layers=2,
                                attention_only=True, positions="rotary")).eval()
    assert all(layer.ffn is None for layer in lm.layers)
    assert not any("ffn" in name for name, _ in lm.named_parameters())
    ids = torch.randint(0, 11, (2, 9))
    full = lm(ids, need_weights=True)
    assert full.logits.shape == (2, 9, 11) and full.weights[0].shape == (2, 4, 9, 9)
    cache = lm.new_cache()
    steps = [lm(ids[:, :4], cache=cache).logits] + [lm(ids[:, i:i + 1], cache=cache).logits
                                                     for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=1e-5, rtol=1e-5)
    with_mlp = TransformerLM(LMConfig(vocab_size=11, d_model=32, heads=4, layers=2))
    assert all(layer.ffn is not None for layer in with_mlp.layers)
    assert lm.embed.tokens.padding_idx is None and bool(lm.embed.tokens.weight[0].any())  # 0: a token
    assert [s.name for s in attention_sites(lm)] == ["layers.0.self", "layers.1.self"]


def test_save_load_and_architecture_mismatch(tmp_path):
    m = model(positions="rotary", norm="pre", tie_embeddings=False)
    m.save(tmp_path / "tf")
    again = load_translator(tmp_path / "tf")
    assert isinstance(again, Transformer) and again.cfg == m.cfg
    src, lengths, tgt = batch()
    torch.testing.assert_close(again.eval()(src, lengths, tgt).logits, m(src, lengths, tgt).logits)
    from attnlab.models.seq2seq import Seq2Seq

    with pytest.raises(FormatError, match=r"model.arch=rnn\), got 'attnlab.transformer/1' "
                                          r"\(a model.arch=transformer model\)"):
        Seq2Seq.load(tmp_path / "tf")
    lm = TransformerLM(LMConfig(vocab_size=11, d_model=16, heads=2, layers=1))
    lm.save(tmp_path / "lm")
    torch.testing.assert_close(TransformerLM.load(tmp_path / "lm").embed.tokens.weight,
                               lm.embed.tokens.weight)


@pytest.mark.parametrize(("kw", "message"), [
    ({"d_model": 30}, "model.d_model: expected a multiple of model.heads=4"),
    ({"positions": "alibi"}, "model.positions: expected one of sinusoidal, learned, rotary, none"),
    ({"norm": "sandwich"}, "model.norm: expected one of post, pre, got 'sandwich'"),
    ({"heads": 0}, "model.heads: expected an int >= 1, got 0"),
    ({"dropout": 1.0}, r"model.dropout: expected a float in \[0, 1\), got 1.0"),
    ({"d_model": 12, "heads": 4, "positions": "rotary"}, "model.heads: rotary positions need an even"),
])
def test_config_errors_name_the_key(kw, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**kw)
