"""Logit lens, direct logit attribution and activation patching, each against the same quantity
computed with hooks on transformers' eager model with the same weights (tiny llama from a GGUF,
tiny GPT-2), and the attribution's sum rule."""

from __future__ import annotations

import pytest
import torch

from attnlab.inspect.llm.activation_patching import activation_patching, logit_diff
from attnlab.inspect.llm.lens import direct_logit_attribution, logit_lens
from attnlab.models import load_model

from .conftest import write_llama_gguf

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def pair(tiny_llama, tmp_path_factory):
    from transformers import LlamaForCausalLM

    f = write_llama_gguf(tiny_llama, tmp_path_factory.mktemp("g") / "m.gguf", qtype="F32")
    hf = LlamaForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32,
                                          attn_implementation="eager").eval()
    return load_model(f), hf


def _ids(lm, text):
    return torch.tensor([lm.encode(text).ids])


def test_logit_lens_equals_transformers_hidden_states_through_its_norm(pair):
    lm, hf = pair
    lens = logit_lens(lm, CLEAN, position=-2)
    with torch.no_grad():
        ref = hf(_ids(lm, CLEAN), output_hidden_states=True)
        hs = ref.hidden_states  # embeddings, layer outputs (the last one normed)
        want = [hf.lm_head(hf.model.norm(h[0, -2])) for h in hs[:-1]] + [ref.logits[0, -2]]
    want_lp = torch.stack(want).log_softmax(-1)  # (L + 1, V)
    assert lens.layers == ["embed", "0", "1"]
    assert float((lens.log_probs - want_lp).abs().max()) < 1e-4
    assert lens.rank(int(ref.logits[0, -2].argmax()))[-1] == 0
    assert len(lens.to_dict(lm)["layers"]) == 3


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_direct_logit_attribution_adds_up_to_the_logit_difference(pair, tiny_gpt2, which):
    lm = pair[0] if which == "llama" else load_model(tiny_gpt2)
    ids = _ids(lm, CLEAN)
    with torch.no_grad():
        logits = lm.model(ids).logits[0, -1]
    a, b = (int(i) for i in logits.topk(2).indices)
    att = direct_logit_attribution(lm, CLEAN, a, b)
    assert att.total == pytest.approx(float(logits[a] - logits[b]), abs=1e-4)
    assert float(att.values.sum()) + att.constant == pytest.approx(att.total, abs=1e-4)
    assert att.heads.shape == (lm.num_layers, lm.num_heads)
    is_head = [p.startswith("L") and "H" in p for p in att.parts]
    assert torch.allclose(att.heads.sum(), att.values[is_head].sum())


def test_per_head_attribution_equals_transformers_o_proj_inputs(pair):
    lm, hf = pair
    ids = _ids(lm, CLEAN)
    a, b = 5, 9
    att = direct_logit_attribution(lm, ids[0], a, b)
    z, final = {}, {}
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda m, args, i=i: z.__setitem__(i, args[0][0, -1])) for i, layer in enumerate(hf.model.layers)]
    hooks.append(hf.model.norm.register_forward_pre_hook(
        lambda m, args: final.__setitem__("x", args[0][0, -1])))
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        for h in hooks:
            h.remove()
    H, Dh = hf.config.num_attention_heads, hf.config.head_dim
    x = final["x"].double()  # the final residual stream, before transformers' final norm
    s = torch.rsqrt(x.pow(2).mean() + hf.config.rms_norm_eps)
    readout = hf.model.norm.weight.double() * (hf.lm_head.weight[a] - hf.lm_head.weight[b]).double() * s
    for i, layer in enumerate(hf.model.layers):
        w_o = layer.self_attn.o_proj.weight.view(-1, H, Dh).double()  # (E, H, Dh)
        per_head = torch.einsum("hd,ehd->he", z[i].view(H, Dh).double(), w_o)  # (H, E)
        assert torch.allclose(att.heads[i], per_head @ readout, atol=1e-4), i


def _hf_metric(hf, ids, a, b, pre_hooks):
    handles = [m.register_forward_pre_hook(fn, with_kwargs=True) for m, fn in pre_hooks]
    try:
        with torch.no_grad():
            logits = hf(ids).logits[:, -1].double()
    finally:
        for h in handles:
            h.remove()
    return logits[:, a] - logits[:, b]


def test_activation_patching_equals_patching_transformers_with_hooks(pair):
    lm, hf = pair
    clean, corrupt = _ids(lm, CLEAN), _ids(lm, CORRUPT)
    assert clean.shape == corrupt.shape
    with torch.no_grad():
        logits = lm.model(clean).logits[0, -1]
    a, b = (int(i) for i in logits.topk(2).indices)
    res = activation_patching(lm, clean[0], corrupt[0], logit_diff(a, b), site="resid_pre")
    n = clean.shape[1]
    assert res.scores.shape == (lm.num_layers, n)
    with torch.no_grad():
        clean_hs = hf(clean, output_hidden_states=True).hidden_states
    for layer in range(lm.num_layers):
        for pos in (0, 3, n - 1):
            def put(m, args, kwargs, layer=layer, pos=pos):
                x = (args[0] if args else kwargs["hidden_states"]).clone()
                x[:, pos] = clean_hs[layer][:, pos]
                return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

            want = float(_hf_metric(hf, corrupt, a, b, [(hf.model.layers[layer], put)])[0])
            assert float(res.raw[layer, pos]) == pytest.approx(want, abs=1e-4)
    # layer 0's input is the embedding: patching the one differing token restores the clean run
    differ = int((clean[0] != corrupt[0]).nonzero()[0])
    assert float(res.scores[0, differ]) == pytest.approx(1.0, abs=1e-4)
    heads = activation_patching(lm, clean[0], corrupt[0], logit_diff(a, b), site="head")
    H, Dh = hf.config.num_attention_heads, hf.config.head_dim
    seen = {}
    grab = [(layer.self_attn.o_proj, lambda m, args, kw, i=i: seen.__setitem__(i, args[0].clone()))
            for i, layer in enumerate(hf.model.layers)]
    _hf_metric(hf, clean, a, b, grab)
    for layer in range(lm.num_layers):
        for h in range(H):
            def put_head(m, args, kwargs, layer=layer, h=h):
                z = args[0].clone()  # (B, L, H·Dh)
                z[..., h * Dh:(h + 1) * Dh] = seen[layer][..., h * Dh:(h + 1) * Dh]
                return (z,), kwargs

            o_proj = hf.model.layers[layer].self_attn.o_proj
            want = float(_hf_metric(hf, corrupt, a, b, [(o_proj, put_head)])[0])
            assert float(heads.raw[layer, h]) == pytest.approx(want, abs=1e-4)
    per_pos = activation_patching(lm, clean[0], corrupt[0], logit_diff(a, b), site="head_position")
    assert per_pos.scores.shape == (lm.num_layers, H, n)


def test_activation_patching_refuses_bad_input(pair):
    lm, _ = pair
    with pytest.raises(ValueError, match="corrupted: expected as many tokens as the clean prompt"):
        activation_patching(lm, CLEAN, CLEAN + " Mary", logit_diff(1, 2))
    with pytest.raises(ValueError, match="site: expected one of resid_pre"):
        activation_patching(lm, CLEAN, CORRUPT, logit_diff(1, 2), site="resid")
    with pytest.raises(ValueError, match="corrupted: the metric is the same on both prompts"):
        activation_patching(lm, CLEAN, CLEAN, logit_diff(1, 2))
