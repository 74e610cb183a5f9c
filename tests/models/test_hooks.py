"""Named hook points: every site on every attnlab model, one way in (hooks / run_with_cache),
values equal to transformers' on the same weights, errors that name close hook names."""

from __future__ import annotations

import pytest
import torch

from attnlab.models import load_model
from attnlab.models.contract import CausalLM, as_causal_lm
from attnlab.models.transformer import LMConfig, TransformerLM
from attnlab.modules.hooks import SITES, HookedModel

from .conftest import write_llama_gguf

TEXT = "The animal didn't cross the street because it was too tired"


@pytest.fixture(scope="module")
def models(tiny_bert, tiny_gpt2, tiny_llama):
    return {"bert": load_model(tiny_bert), "gpt2": load_model(tiny_gpt2), "llama": load_model(tiny_llama)}


def test_every_site_of_every_layer_has_a_name_on_every_model(models):
    lm_cfg = LMConfig(vocab_size=20, d_model=16, heads=2, layers=2, ffn=32, max_len=16)
    nets: list[HookedModel] = [m.model for m in models.values()] + [TransformerLM(lm_cfg)]
    for net in nets:
        points = net.hook_points
        for layer in range(2):
            for site in SITES:
                name = net.hook_name(layer, site)
                assert name in points and points[name].name == name, (type(net).__name__, site)
        assert "hook_embed" in points or isinstance(net, TransformerLM)
    assert models["llama"].model.hook_name(3 - 4, "attn.pattern") == "layers.1.attention.hook_pattern"
    assert TransformerLM(lm_cfg).hook_name(0, "attn.z") == "layers.0.self_attn.hook_z"
    assert "final_norm.hook_scale" in models["llama"].model.hook_points


def test_bad_names_say_what_is_close(models):
    net = models["llama"].model
    with pytest.raises(ValueError, match=r"did you mean layers\.0\.attention\.hook_pattern"):
        net.hook_point("layers.0.attention.hook_patern")
    with pytest.raises(ValueError, match=r"site: expected one of .*did you mean attn\.pattern"):
        net.hook_name(0, "attn.patern")
    with pytest.raises(ValueError, match=r"layer: expected an int in 0\.\.1, got 7"):
        net.hook_name(7, "resid_pre")
    with pytest.raises(TypeError, match="fn: expected a callable"):
        net.add_hook("hook_embed", "not a function")


def test_hooks_are_removed_on_exit_even_on_error(models):
    net = models["gpt2"].model
    hooks = [("layers.0.hook_resid_post", lambda x, h: None)]
    with pytest.raises(RuntimeError, match="boom"), net.hooks(hooks):
        assert net.hook_points["layers.0.hook_resid_post"].active
        raise RuntimeError("boom")
    assert not any(hp.active for hp in net.hook_points.values())


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_run_with_cache_holds_the_residual_stream_and_patterns(models, name):
    lm = models[name]
    enc = lm.encode(TEXT)
    ids = torch.tensor([enc.ids])
    net = lm.model
    out, cache = net.run_with_cache(ids, need_weights=True,
                                    names_filter=lambda n: n.endswith(("hook_resid_post", "hook_pattern")))
    assert set(cache) == {net.hook_name(i, s) for i in range(net.num_layers)
                          for s in ("resid_post", "attn.pattern")}
    for i in range(net.num_layers - (0 if name == "bert" else 1)):  # decoders end with the final norm
        assert torch.equal(cache.site(i, "resid_post"), out.hidden_states[i + 1])
    for i in range(net.num_layers):
        assert torch.equal(cache.site(i, "attn.pattern"), out.attentions[i])
    assert cache.shapes()[net.hook_name(0, "attn.pattern")] == (1, net.num_heads, len(enc), len(enc))
    with pytest.raises(KeyError, match="close names"):
        cache["layers.0.hook_resid_pst"]


def test_a_pattern_hook_alone_turns_weights_on_and_scores_are_q_dot_k(models):
    net = models["llama"].model
    ids = torch.tensor([models["llama"].encode(TEXT).ids])
    out, cache = net.run_with_cache(ids, names_filter=lambda n: n.startswith("layers.1.attention."))
    assert out.attentions is None  # not asked for: only the hook saw them
    q, k = cache["layers.1.attention.hook_q"], cache["layers.1.attention.hook_k"]  # after RoPE
    k = k.repeat_interleave(net.num_heads // net.num_kv_heads, dim=1)  # (B, H, L, Dh)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, L, L)
    assert torch.allclose(cache["layers.1.attention.hook_scores"], scores, atol=1e-5)
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    ref = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    assert torch.allclose(cache["layers.1.attention.hook_pattern"], ref, atol=1e-6)


def test_patching_scores_and_z_changes_what_follows(models):
    net = models["llama"].model
    ids = torch.tensor([models["llama"].encode(TEXT).ids])
    base = net(ids).logits
    # uniform scores: every causal row becomes uniform
    with net.hooks([(net.hook_name(0, "attn.scores"), lambda s, h: torch.zeros_like(s))]):
        _, cache = net.run_with_cache(ids, names_filter=net.hook_name(0, "attn.pattern"))
    w = cache.site(0, "attn.pattern")[0, 0]  # (L, L)
    assert torch.allclose(w[3, :4], torch.full((4,), 0.25)) and float(w[3, 4:].abs().max()) == 0.0

    def zero_head(z, hook):
        z = z.clone()
        z[:, 1] = 0.0
        return z

    with net.hooks([(net.hook_name(1, "attn.z"), zero_head)]):
        patched = net(ids).logits
    assert not torch.allclose(patched, base)
    assert torch.equal(net(ids).logits, base)  # gone after the block


def test_hook_values_equal_transformers_hidden_states_and_attentions(tiny_llama, tmp_path):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32,
                                          attn_implementation="eager").eval()
    lm = load_model(write_llama_gguf(tiny_llama, tmp_path / "m.gguf", qtype="F32"))
    ids = torch.tensor([lm.encode(TEXT).ids])
    net = lm.model
    _, cache = net.run_with_cache(ids)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True)
    for i in range(net.num_layers):
        assert torch.allclose(cache.site(i, "resid_pre"), ref.hidden_states[i], atol=1e-5)
        assert torch.allclose(cache.site(i, "attn.pattern"), ref.attentions[i], atol=1e-5)
    assert torch.allclose(net.unembed(net.final_norm(cache.site(net.num_layers - 1, "resid_post"))),
                          ref.logits, atol=1e-4)
    scale = cache["final_norm.hook_scale"]  # (B, L, 1)
    last = cache.site(net.num_layers - 1, "resid_post")
    assert torch.allclose(scale, last.pow(2).mean(-1, keepdim=True).add(net.cfg.rms_norm_eps).rsqrt())


def test_decoders_implement_the_causal_lm_contract(models):
    for name in ("gpt2", "llama"):
        net = as_causal_lm(models[name].model)
        assert isinstance(net, CausalLM)
        assert net.layer_window(0) is None and net.num_heads % net.num_kv_heads == 0
    with pytest.raises(ValueError, match=r"model: expected a decoder LLM .* got Encoder, which is an enc"):
        as_causal_lm(models["bert"].model)


def test_gguf_of_an_unknown_architecture_names_the_supported_ones(tiny_llama, tmp_path):
    f = write_llama_gguf(tiny_llama, tmp_path / "q.gguf", arch="qwen2")
    with pytest.raises(ValueError, match=r"expected general\.architecture in \(.*'llama'.*\), got 'qwen2'"):
        load_model(f)
