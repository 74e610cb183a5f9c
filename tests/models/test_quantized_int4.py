"""Weight-only int4 (issue 23): groups of 32 with a bfloat16 scale and zero, torch's packing read
back, the kernel against the unpacked weight, stacked rows, a whole model against float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models import load_model
from attnlab.models import quantized_int4 as q4
from attnlab.models.llama import Llama, LlamaConfig
from attnlab.models.quantized import Int8Linear, bf16_gemm
from attnlab.models.quantized_int4 import GROUP, INT4_ROWS, Int4Linear, quantize_groups
from attnlab.modules.fused import fused_call

from .conftest import make_llama

pytestmark = pytest.mark.skipif(q4.int4_available() is not None, reason=str(q4.int4_available()))


def test_groups_round_to_the_nearest_step_and_read_q4_1_blocks_back():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64)[:, None]
    q, scale, zero = quantize_groups(w)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15
    assert scale.shape == zero.shape == (64, 96 // GROUP) and scale.dtype == torch.bfloat16
    s, z = scale.float().repeat_interleave(GROUP, 1), zero.float().repeat_interleave(GROUP, 1)  # (N, K)
    back = (q.float() - 8) * s + z
    assert bool(((back - w).abs() <= 0.51 * s + 1e-6).all())  # half a step (of the rounded scale)
    # A GGUF Q4_1 block is d·q + m with q in [0, 15] hitting 0 and 15: read back to bfloat16 rounding
    d = torch.rand(64, 3, 1, generator=g) * 0.01 + 1e-3
    m = -8 * d + 0.001 * torch.randn(64, 3, 1, generator=g)
    qq = torch.randint(0, 16, (64, 3, GROUP), generator=g)
    qq[..., 0], qq[..., 1] = 0, 15
    w41 = (d * qq + m).view(64, 96)
    q, scale, zero = quantize_groups(w41)
    assert torch.equal(q.view(64, 3, GROUP), qq.int())
    s, z = scale.float().repeat_interleave(GROUP, 1), zero.float().repeat_interleave(GROUP, 1)  # (N, K)
    # bfloat16 keeps 8 bits: the scale's rounding, centred (7.5 steps at most), and the zero's
    bound = 7.5 * s * 2**-8 + z.abs() * 2**-8 + 1e-7
    assert bool(((q.float() - 8) * s + z - w41).abs().le(bound).all())


@pytest.mark.parametrize("rows", [1, INT4_ROWS, INT4_ROWS + 1, 37])
def test_int4_linear_equals_its_unpacked_weight_on_both_paths(rows):
    g = torch.Generator().manual_seed(rows)
    lin = nn.Linear(96, 128, bias=True)
    layer = Int4Linear.from_linear(lin)
    q, _, _ = quantize_groups(lin.weight)
    block = q4.packing_block()
    assert block is not None and torch.equal(q4._unpack(layer.packed, block).int(), q)  # packing read back
    x = torch.randn(rows, 96, generator=g)
    _, scale, zero = quantize_groups(lin.weight)  # the weight built apart from the layer's unpacking
    s, z = (t.float().repeat_interleave(GROUP, 1) for t in (scale, zero))  # (N, K)
    w4 = (q.float() - 8) * s + z
    torch.testing.assert_close(layer.dequantized(), w4, atol=1e-7, rtol=1e-6)
    got = layer(x[None])[0]  # (1, M, K) in, leading dims kept
    assert got.shape == (rows, 128)
    exact = F.linear(x, w4, lin.bias.detach())
    if rows > INT4_ROWS and not bf16_gemm():  # unpacked float32 GEMM
        torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)
    elif rows > INT4_ROWS:  # unpacked, bfloat16 GEMM: x, w and the product each rounded (2^-8 each)
        bound = 2**-6 * (x.abs() @ w4.abs().T + lin.bias.detach().abs())  # (M, N)
        assert bool(((got - exact).abs() <= bound).all())
        assert not torch.equal(got, exact)  # it did run in bfloat16
    else:  # the kernel: activations rounded to bfloat16 on the way in, its output too (2^-8 each)
        want = F.linear(x.bfloat16().float(), w4, lin.bias.detach())
        bound = 2**-7 * (x.abs() @ w4.abs().T + lin.bias.detach().abs())  # (M, N)
        assert bool(((got - want).abs() <= bound).all())
        assert not torch.equal(got, exact)  # it did run the kernel
    w = lin.weight.detach()
    assert float((layer.weight - w).abs().max()) <= 1.1 * float(w.abs().max()) / 15  # half a step, ~


def test_int4_refuses_shapes_and_machines_it_cannot_serve(monkeypatch):
    with pytest.raises(ValueError, match=r"weight: expected \(N, K\) with N a multiple of 64 and K of 32 "
                                         r"for int4, got \(96, 64\)"):
        Int4Linear(torch.randn(96, 64))
    monkeypatch.setattr(q4, "int4_available", lambda: "no kernel here (test)")
    with pytest.raises(ValueError, match=r"weights: 'int4' is not available here: no kernel here \(test\); "
                                         r"'int8' is"):
        int4_llama().quantize_weights("int4")


def int4_llama(seed: int = 0, kv_heads: int = 4) -> Llama:
    """q/k/v and gate/up rows in whole packing blocks (64), so they stack."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=kv_heads, head_dim=16, max_positions=128)
    m = Llama(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    return m


def on_the_grid(m: Llama) -> Llama:
    with torch.no_grad():
        for layer in m.layers.modules():
            if type(layer) is nn.Linear:
                q, scale, zero = quantize_groups(layer.weight)
                s, z = (t.float().repeat_interleave(GROUP, 1) for t in (scale, zero))  # (N, K)
                layer.weight.copy_((q.float() - 8) * s + z)
    return m


def test_stacked_int4_rows_decode_like_the_layers_one_by_one():
    # float32 weights already on the 4-bit grid, as a Q4_1 file's are: int4 keeps them as they are
    m, ref = on_the_grid(int4_llama()), on_the_grid(int4_llama())
    m.quantize_weights("int4")
    assert m.weights_format == "int4"
    assert {type(x) for x in m.layers.modules() if hasattr(x, "in_features")} == {Int4Linear}
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]])
    with torch.inference_mode():
        cache = m.new_cache()
        m(ids, cache=cache)
        fused = [m(torch.tensor([[t]]), cache=cache).logits for t in (11, 12, 13)]  # the stacks
        mlp = m.layers[1].mlp
        assert mlp.__dict__["_gate_up"]._run.packed.shape[0] == 256  # gate and up as one stack
        # a module hook anywhere makes every layer run on its own (views of the stack's) rows
        handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
        try:
            cache = m.new_cache()
            m(ids, cache=cache)
            plain = [m(torch.tensor([[t]]), cache=cache).logits for t in (11, 12, 13)]
        finally:
            handle.remove()
        for a, b in zip(fused, plain, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        want = ref(torch.cat([ids, torch.tensor([[11]])], 1)).logits[:, -1]  # float32
    got = fused[0][:, -1]
    # what is left: bfloat16 activations into the kernel, and the 8-bit unembedding
    assert float((got - want).abs().mean()) < 0.02 * float(want.abs().mean())


def test_load_model_takes_int4_and_keeps_int8_where_the_shape_does_not_pack(tmp_path):
    import json

    from typer.testing import CliRunner

    from attnlab.cli.main import app

    folder = make_llama(tmp_path, seed=3)  # hidden 32, MLP 64: only gate and up have 64-row blocks
    lm = load_model(folder, weights="int4")
    block = lm.model.layers[0]
    assert lm.model.weights_format == "int4"
    assert type(block.mlp.gate) is type(block.mlp.up) is Int4Linear
    assert type(block.mlp.down) is type(block.attention.q_proj) is Int8Linear
    assert lm.model.quantize_weights("int8").weights_format == "int4"  # quantized once; no-op after
    r = CliRunner().invoke(app, ["generate", "hi", "--model", str(folder), "--raw", "--weights", "int4",
                                 "--max-new-tokens", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["weights"] == "int4"


@pytest.mark.parametrize(("qtype", "bits", "gate_kind"), [("Q4_1", 4, Int4Linear), ("Q5_0", 5, Int8Linear),
                                                        ("Q8_0", 8, Int8Linear)])
def test_int4_never_goes_below_the_bits_a_gguf_stored(tmp_path, qtype, bits, gate_kind):
    from .conftest import write_llama_gguf

    folder = make_llama(tmp_path / "hf", seed=4)  # gate and up: 64 rows, 32 inputs (int4 shapes)
    lm = load_model(write_llama_gguf(folder, tmp_path / "m.gguf", qtype=qtype), weights="int4")
    bits_of = lm.model.file_bits
    assert bits_of["layers.0.mlp.gate.weight"] == bits and bits_of["layers.1.attention_norm.weight"] == 32
    assert type(lm.model.layers[1].mlp.gate) is type(lm.model.layers[1].mlp.up) is gate_kind
    assert type(lm.model.layers[1].mlp.down) is Int8Linear  # 32 rows: no 64-row block


def test_the_stack_follows_scales_written_in_place():
    """Each layer keeps its own copy of its scales (the stack's are strided): a state dict loaded
    in place must rebuild the stack, not leave it computing with the old scales."""
    a, b = Int4Linear.from_linear(nn.Linear(64, 128)), Int4Linear.from_linear(nn.Linear(64, 64))
    other = Int4Linear.from_linear(nn.Linear(64, 128))
    owner = nn.Module()
    x = torch.randn(1, 64)
    with torch.no_grad():
        assert fused_call(owner, "_ab", (a, b), x) is not None  # the stack is built
        a.load_state_dict(other.state_dict())  # copy_ into a's own buffers
        got = fused_call(owner, "_ab", (a, b), x)
    assert got is not None
    torch.testing.assert_close(got, torch.cat([other(x), b(x)], -1))
