"""Weight-only int8 (issue 23): the rows and scales, both kernels, a whole model against float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.models import load_model
from attnlab.models.quantized import INT8_ROWS, Int8Linear, check_format, quantize_rows

from .conftest import make_llama


def test_rows_round_to_the_nearest_step_of_their_own_scale():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 64)[:, None]
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # per row: half a step at most
    zero, s0 = quantize_rows(torch.zeros(2, 4))
    assert bool((zero == 0).all()) and bool((s0 > 0).all())  # no division by zero


@pytest.mark.parametrize("rows", [1, INT8_ROWS, INT8_ROWS + 1, 37])
def test_int8_linear_equals_its_dequantized_weight_on_both_paths(rows):
    g = torch.Generator().manual_seed(rows)
    lin = nn.Linear(96, 64, bias=True)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(rows, 96, generator=g)
    want = torch.nn.functional.linear(x, q.dequantized(), q.bias)
    got = q(x[None])[0]  # (1, M, K) in, leading dims kept
    # the int8 kernel rounds activations to bfloat16 (8 bits of mantissa): ~2^-8 relative
    tol = 3e-3 * float(x.abs().max() * q.dequantized().abs().sum(1).max())
    assert got.shape == (rows, 64) and float((got - want).abs().max()) <= tol
    torch.testing.assert_close(q.weight, q.dequantized())


def test_a_quantized_llm_stays_close_to_float32(tmp_path):
    folder = make_llama(tmp_path, seed=1)
    ref, lm = load_model(folder), load_model(folder)
    assert lm.model.quantize_weights("int8") is lm.model and lm.model.weights_format == "int8"
    assert not any(type(m) is nn.Linear for m in lm.model.layers.modules())
    ids = torch.arange(INT8_ROWS + 4).remainder(50).add(1).view(1, -1)  # (1, L): more rows than INT8_ROWS
    with torch.no_grad():
        a, b = ref.model(ids).logits, lm.model(ids).logits  # prefill: the dequantized path
        c = lm.model(ids[:, :1]).logits  # one row: the int8 kernel
    # ~1.4 % per layer on this 32-wide random model (steps of max|w|/127 per row), and both paths
    # round activations to bfloat16 (the kernel; bfloat16 GEMM where the CPU has it: ~0.1 % more);
    # SmolLM2's real cost, greedy text and perplexity, is in benchmarks/llm/quantized.py
    scale = float(a.abs().mean())
    assert float((a - b).abs().mean()) < 0.035 * scale
    assert float((a[:, :1] - c).abs().mean()) < 0.035 * scale
    assert lm.model.quantize_weights("float32").weights_format == "int8"  # no way back; no-op
    with pytest.raises(ValueError,
                       match=r"weights: expected one of \['float32', 'int8', 'int4'\], got 'int2'"):
        check_format("int2")


def test_load_model_and_generate_take_int8_and_refuse_what_cannot(tmp_path):
    import json

    from typer.testing import CliRunner

    from attnlab.cli.main import app

    folder = make_llama(tmp_path, seed=2)
    assert load_model(folder, weights="int8").model.weights_format == "int8"
    with pytest.raises(ValueError, match=r"weights: expected an attnlab decoder LLM for 'int8'"):
        load_model(None, weights="int8")  # the embedded encoder
    r = CliRunner().invoke(app, ["generate", "hi", "--model", str(folder), "--raw", "--weights", "int8",
                                 "--max-new-tokens", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["weights"] == "int8"
    r = CliRunner().invoke(app, ["generate", "hi", "--model", str(folder), "--weights", "fp8"])
    assert r.exit_code == 2
    assert "--weights: expected one of ['float32', 'int8', 'int4'], got 'fp8'" in r.output
