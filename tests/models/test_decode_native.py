"""The native decode step (issue 23): one call per token computes what the model's own layers
compute with the same quantized weights in float32 (up to its 16-bit activations), writes the
same KV cache, is used by the decode loop only where nothing can tell, and says why not."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.functional.masks import causal
from attnlab.inspect.llm.generation import generate_ids
from attnlab.models import fast_decode
from attnlab.models.fast_decode import (
    FastDecoder,
    choose_decoder,
    fast_decoder,
    layout,
    pack_int4,
    pack_int8,
    why_not,
)
from attnlab.models.gemma3 import GLOBAL, LOCAL, Gemma3, Gemma3Config
from attnlab.models.llama import Llama, LlamaConfig
from attnlab.models.loading import LoadedModel
from attnlab.models.native_build import FLAGS, KernelUnavailable, build, decode_library, load
from attnlab.models.quantized import Int8Linear
from attnlab.models.quantized_int4 import Int4Linear, int4_available

pytestmark = pytest.mark.skipif(isinstance(decode_library(), str),
                                reason=f"no decode kernel: {decode_library()}")

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 33]])  # (1, 10)


def quantized_llama(weights: str, kv_heads: int = 4, seed: int = 0, bias: bool = False,
                    max_positions: int = 128) -> Llama:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=kv_heads, head_dim=16, max_positions=max_positions, attention_bias=bias)
    m = Llama(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1) if p.ndim == 2 else p.uniform_(0.5, 1.5)  # norms away from 1
    m.quantize_weights(weights)
    return m


def quantized_gemma3(weights: str = "int8", softcap: float | None = None) -> Gemma3:
    """Local (window 6) and global layers, QK-norm, norms around each sublayer, GELU-tanh."""
    torch.manual_seed(0)
    cfg = Gemma3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                       num_kv_heads=1, head_dim=32, max_positions=128, layer_types=(LOCAL, GLOBAL, LOCAL),
                       sliding_window=6, final_logit_softcapping=softcap)
    m = Gemma3(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1 if p.ndim == 2 else 0.3)  # norm weights around 0: (1 + w) near 1
    m.quantize_weights(weights)
    return m


def float_reference(m: nn.Module):
    """Hooks making every quantized layer compute in float32 from its dequantized weight (and
    keeping the decode loop off the native path, hooks being what it must see)."""
    def fwd(mod: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs[0].float(), mod.dequantized(), mod.bias)

    quantized = [mod for mod in m.modules() if isinstance(mod, (Int4Linear, Int8Linear))]
    return [mod.register_forward_hook(fwd) for mod in quantized]


def decode_both(m: nn.Module, tokens=(11, 12, 13, 14, 15), dec: FastDecoder | None = None,
                prompt: torch.Tensor = IDS):
    """Logits of each token after the prompt: the native step and the float reference, with their caches."""
    dec = dec or FastDecoder(m)
    with torch.inference_mode():
        c_nat, c_ref = m.new_cache(), m.new_cache()
        m(prompt, cache=c_nat)
        m(prompt, cache=c_ref)
        nat = [dec.step(t, c_nat) for t in tokens]
        handles = float_reference(m)
        try:
            ref = [m(torch.tensor([[t]]), cache=c_ref).logits[0, -1] for t in tokens]
        finally:
            for h in handles:
                h.remove()
    return nat, ref, c_nat, c_ref


WEIGHTS = [pytest.param("int8", 4, id="int8"),
           pytest.param("int8", 2, id="int8-gqa"),  # two query heads per K/V head
           pytest.param("int4", 4, id="int4-stacked"),
           pytest.param("int4", 2, id="int4-q-with-int8-kv")]  # 32-row k/v do not pack: int8, one by one


@pytest.mark.parametrize("weights, kv_heads", WEIGHTS)
def test_native_step_equals_float32_math_on_the_same_weights_and_cache(weights, kv_heads):
    if weights == "int4" and int4_available():
        pytest.skip(int4_available())
    m = quantized_llama(weights, kv_heads)
    if kv_heads == 2 and weights == "int4":
        a = m.layers[0].attention
        assert isinstance(a.q_proj, Int4Linear) and isinstance(a.k_proj, Int8Linear)
    nat, ref, c_nat, c_ref = decode_both(m)
    for a, b in zip(nat, ref, strict=True):
        # 16-bit activations (1/32639 of a block's largest value) are all that differs
        assert float((a - b).abs().max()) < 2e-3 * float(b.abs().max())
        assert a.shape == (256,)
    for ln, lr in zip(c_nat, c_ref, strict=True):
        assert len(ln) == len(lr) == IDS.shape[1] + 5
        torch.testing.assert_close(ln.k, lr.k, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(ln.v, lr.v, atol=2e-3, rtol=2e-3)
        assert ln.v_finite is True


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_gemma3_local_and_global_layers_equal_float32_math(softcap):
    m = quantized_gemma3(softcap=softcap)
    assert why_not(m) is None
    lay = layout(m)
    assert not isinstance(lay, str) and [ll.window for ll in lay.layers] == [6, 0, 6]
    assert lay.norm_offset == 1.0 and lay.act == 1 and lay.embed_scale == pytest.approx(8.0)
    nat, ref, c_nat, c_ref = decode_both(m)  # 10 + 5 positions: the local layers' window slides
    for a, b in zip(nat, ref, strict=True):
        assert float((a - b).abs().max()) < 2e-3 * float(b.abs().max())
    if softcap is not None:
        assert float(nat[0].abs().max()) < softcap
    for ln, lr in zip(c_nat, c_ref, strict=True):
        torch.testing.assert_close(ln.k, lr.k, atol=2e-3, rtol=2e-3)


def test_a_window_left_out_would_fail_the_comparison():
    # the same comparison with the kernel told every layer is global: the local layers part
    m = quantized_gemma3()
    dec = FastDecoder(m)
    for i in range(len(dec.layers)):
        dec.layers[i].window = 0
    nat, ref, _, _ = decode_both(m, dec=dec)
    assert float((nat[-1] - ref[-1]).abs().max()) > 2e-3 * float(ref[-1].abs().max())


def test_a_wrong_kernel_would_fail_the_comparison():
    # the comparison above can fail: the same step against a model whose down projection is zeroed
    m = quantized_llama("int8")
    nat, _, _, _ = decode_both(m)
    with torch.no_grad():
        m.layers[1].mlp.down.qweight.zero_()
    _, ref, _, _ = decode_both(m, dec=FastDecoder(m))
    assert float((nat[0] - ref[0]).abs().max()) > 2e-3 * float(ref[0].abs().max())


def test_biases_go_through_the_kernel():
    m = quantized_llama("int8", bias=True)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, Int8Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.5)
    nat, ref, _, _ = decode_both(m)
    assert float((nat[-1] - ref[-1]).abs().max()) < 2e-3 * float(ref[-1].abs().max())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="-march=x86-64-v2 is x86's")
def test_the_plain_loops_equal_the_vnni_instructions(tmp_path):
    # machines without AVX-512 VNNI run the plain loops: built here without it, same sums
    flags = tuple("-march=x86-64-v2" if f == "-march=native" else f for f in FLAGS)
    plain = load(build(flags, tmp_path))
    assert plain.attnlab_vnni() == 0
    m = quantized_llama("int8", kv_heads=2)
    fast, _, c1, _ = decode_both(m)
    slow, _, c2, _ = decode_both(m, dec=FastDecoder(m, plain))
    for a, b in zip(fast, slow, strict=True):  # float sums in another order: a 16-bit rounding may flip
        assert float((a - b).abs().max()) < 2e-4 * float(b.abs().max())
    torch.testing.assert_close(c1[1].v, c2[1].v, atol=1e-4, rtol=1e-4)


def test_a_default_device_elsewhere_changes_nothing():
    # the kernel reads addresses: its buffers are made on the CPU whatever torch's default device
    m = quantized_llama("int8")
    first, _, _, _ = decode_both(m)
    dec = FastDecoder(m)
    with torch.inference_mode():
        cache = m.new_cache()
        m(IDS, cache=cache)
        with torch.device("meta"):
            got = dec.step(11, cache)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, first[0])


def test_a_long_cache_on_two_threads_equals_float32_math():
    # past 256 keys the heads are split over the threads; the cache regrows on the way
    m = quantized_llama("int8", kv_heads=2, max_positions=512)
    ids = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(1))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        nat, ref, c_nat, _ = decode_both(m, tokens=tuple(range(20, 60)), prompt=ids)
    finally:
        torch.set_num_threads(old)
    assert len(c_nat[0]) == 340
    for a, b in zip(nat, ref, strict=True):
        assert float((a - b).abs().max()) < 2e-3 * float(b.abs().max())


def test_nan_goes_through_as_in_float32_and_a_cache_list_must_match_the_layers():
    m = quantized_llama("int8")
    with torch.no_grad():
        m.token_embedding.weight[11, 3] = float("nan")
    dec = FastDecoder(m)
    with torch.inference_mode():
        cache = m.new_cache()
        m(IDS, cache=cache)
        assert bool(dec.step(11, cache).isnan().all())
        assert cache[0].v_finite is False
        with pytest.raises(ValueError, match=r"cache: expected 2 KVCache \(one per layer\), got 1"):
            dec.step(12, cache[:1])


def test_two_threads_give_the_one_thread_answer():
    m = quantized_llama("int8")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _, _, _ = decode_both(m)
        torch.set_num_threads(2)
        two, _, _, _ = decode_both(m)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_tiles_hold_what_the_layout_comment_says():
    q = torch.randint(0, 16, (32, 64))
    d, mn = torch.rand(32, 2), torch.rand(32, 2)
    w, dt, mt = pack_int4(q, d, mn)
    assert w.shape == (2, 2, 4, 64) and dt.shape == (2, 2, 16)
    # tile 1, block 1, vector j = 2, row r = 3, e = 1: inputs 32 + 16 + 1 (low), 32 + 20 + 1 (high)
    byte = int(w[1, 1, 2, 4 * 3 + 1])
    assert byte & 15 == q[16 + 3, 32 + 16 + 1] and byte >> 4 == q[16 + 3, 32 + 20 + 1]
    assert dt[1, 1, 3] == d[19, 1] and mt[1, 1, 3] == mn[19, 1]
    q8 = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    w8, sums = pack_int8(q8)
    assert w8[0, 1, 5].flatten()[4 * 7 + 2] == q8[7, 32 + 4 * 5 + 2]
    assert sums[0, 1, 7] == int(q8[7, 32:].sum())


def test_packed_weights_follow_in_place_changes():
    m = quantized_llama("int8")
    dec = fast_decoder(m)
    assert isinstance(dec, FastDecoder) and fast_decoder(m) is dec  # packed once
    with torch.no_grad():
        m.layers[0].attention.q_proj.qweight.mul_(-1)
    again = fast_decoder(m)
    assert isinstance(again, FastDecoder) and again is not dec
    nat, ref, _, _ = decode_both(m, dec=again)
    assert float((nat[0] - ref[0]).abs().max()) < 2e-3 * float(ref[0].abs().max())


def test_what_keeps_a_model_on_the_pytorch_path_is_said():
    assert "int8 or int4" in str(why_not(quantized_llama("float32")))
    assert "Llama-family or Gemma 3 model is needed, got Decoder" in str(why_not(gpt2_model()))
    m = quantized_llama("int8")
    assert why_not(m) is None
    handle = m.layers[1].hook_resid_mid.add_hook(lambda x, h: None)
    try:
        assert "hook" in str(fast_decoder(m))
        with pytest.raises(ValueError, match="decode_kernel: 'native' cannot decode this run: a hook"):
            choose_decoder(m, "native")
        assert choose_decoder(m, "auto")[1].startswith("torch (a hook")
    finally:
        handle.remove()
    assert choose_decoder(m, "torch") == (None, "torch (asked for)")
    assert choose_decoder(m, "auto", "a mask is given") == (None, "torch (a mask is given)")
    with pytest.raises(ValueError, match="decode_kernel: expected one of auto, native, torch, got 'fast'"):
        choose_decoder(m, "fast")
    m.train()
    assert "training" in str(fast_decoder(m))


def gpt2_model() -> nn.Module:
    from attnlab.models.decoder import Decoder, DecoderConfig

    return Decoder(DecoderConfig(vocab_size=256, hidden_size=64, num_layers=1, num_heads=4,
                                 intermediate_size=128, max_positions=32)).eval()


class _Tok:
    max_tokens = 128

    def token_id(self, text: str) -> None:
        return None


def test_the_decode_loop_uses_it_and_gives_the_tokens_of_the_pytorch_path():
    m = quantized_llama("int8")
    lm = LoadedModel(m, _Tok(), "tiny", None, "llama", "attnlab")  # type: ignore[arg-type]
    seen: dict[str, list[torch.Tensor]] = {"native": [], "torch": []}
    runs = {}
    for kernel in ("native", "torch"):
        keep = seen[kernel].append
        runs[kernel] = generate_ids(lm, IDS[0].tolist(), max_new_tokens=8, stop_ids=set(),
                                    decode_kernel=kernel, on_logits=lambda x, keep=keep: keep(x.clone()))
    assert runs["native"][2]["decode_kernel"] == "native"
    assert runs["torch"][2]["decode_kernel"] == "torch (asked for)"
    # packed after the first prefill (whose fused stacks move the layers' buffers): a second run
    # finds the same packed weights instead of repacking
    packed = fast_decode._DECODERS.get(m)
    assert packed is not None
    generate_ids(lm, IDS[0].tolist(), max_new_tokens=3, stop_ids=set())
    assert fast_decode._DECODERS.get(m) is packed
    # torch's int8 kernel rounds activations to bfloat16: the tokens agree where no near-tie parts them
    parted = next((i for i, (a, b) in enumerate(zip(runs["native"][0], runs["torch"][0], strict=True))
                   if a != b), 8)
    for a, b in list(zip(seen["native"], seen["torch"], strict=True))[:parted + 1]:
        assert float((a - b).abs().max()) < 0.05 * float(b.abs().max())
    # a recorder, a mask or score_mods keep the loop on PyTorch, and say so
    _, _, t = generate_ids(lm, IDS[0].tolist(), max_new_tokens=3, stop_ids=set(),
                             mask=causal("bottom-right"))
    assert t["decode_kernel"] == "torch (a mask is given)"


def test_cache_reserve_and_advance_take_in_what_was_written():
    m = quantized_llama("int8")
    with torch.inference_mode():
        cache = m.new_cache()
        m(IDS, cache=cache)
        c = cache[0]
        k, v = c.reserve(3)
        assert k.shape[2] >= IDS.shape[1] + 3 and len(c) == IDS.shape[1]
        k[:, :, len(c)] = 1.0
        v[:, :, len(c)] = float("inf")
        c.advance(1, finite=False)
        assert len(c) == IDS.shape[1] + 1 and bool((c.k[:, :, -1] == 1).all()) and c.v_finite is False
        with pytest.raises(ValueError, match=r"cache: expected advance\(100\) after reserve\(100\)"):
            c.advance(100, finite=True)
    from attnlab.modules.multihead import KVCache

    with pytest.raises(ValueError, match="cache: expected keys and values already cached"):
        KVCache().reserve(1)


def test_no_compiler_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(KernelUnavailable, match=r"no C\+\+ compiler found"):
        build(FLAGS, tmp_path)
    monkeypatch.delenv("CXX")
    with pytest.raises(KernelUnavailable, match=r"failed to build decode_step\.cpp"):
        build((*FLAGS, "-fno-such-flag"), tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_a_kernel_that_cannot_load_keeps_auto_on_pytorch(monkeypatch):
    m = quantized_llama("int8")
    monkeypatch.setattr(fast_decode, "decode_library", lambda: "no C++ compiler found")
    assert choose_decoder(m, "auto") == (None, "torch (no C++ compiler found)")
