"""The decode loop's shortcuts change no result (issue 23, item 2): the KV cache written in
place against concatenation, q/k/v and gate/up stacked into one matmul (float32 and int8) against
the layers one by one, hook points and captured attention alike, and the stack giving way to
every change of the layers' weights."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from attnlab.models.decoder import Decoder, DecoderConfig
from attnlab.models.gemma3 import GLOBAL, LOCAL, Gemma3, Gemma3Config
from attnlab.models.llama import Llama, LlamaConfig
from attnlab.modules.multihead import KVCache

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 33, 64, 2, 9, 71, 200, 13]])  # (1, 16)


class ConcatCache(KVCache):
    """The cache as it was: every append concatenates."""

    def _in_place_ok(self, k: torch.Tensor, v: torch.Tensor) -> bool:
        return False


def llama(seed: int = 0, bias: bool = False) -> Llama:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_positions=128, attention_bias=bias, mlp_bias=bias)
    return Llama(cfg).eval()


def gemma3(seed: int = 0) -> Gemma3:
    torch.manual_seed(seed)
    cfg = Gemma3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                       num_kv_heads=1, head_dim=32, max_positions=128, layer_types=(LOCAL, GLOBAL),
                       sliding_window=6)
    m = Gemma3(cfg).eval()
    with torch.no_grad():  # norms' weights are stored around 0; random ones exercise QK-norm
        for p in m.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1)
    return m


def gpt2(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                        max_positions=128)
    return Decoder(cfg).eval()


MODELS = {"llama": llama, "llama-bias": lambda: llama(1, bias=True), "gemma3": gemma3, "gpt2": gpt2}


def one_by_one():
    """Every layer runs on its own: a module hook anywhere keeps the stacks out (fused.py)."""
    return nn.modules.module.register_module_forward_hook(lambda *_: None)


def decode(model, cache_cls=KVCache, prefill: int = 5):
    """Logits of a prefill then one token at a time (1, L, V), with a fresh cache of cache_cls."""
    cache = [cache_cls() for _ in model.layers]
    out = [model(IDS[:, :prefill], cache=cache).logits]
    for t in range(prefill, IDS.shape[1]):
        out.append(model(IDS[:, t : t + 1], cache=cache).logits)
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("name", MODELS)
def test_in_place_cache_gives_the_logits_of_concatenation_and_of_the_whole_sequence(name):
    m = MODELS[name]()
    with torch.inference_mode():
        full = m(IDS).logits
        fast, cache = decode(m)
        slow, _ = decode(m, ConcatCache)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)
    room = cache[0]._room
    assert room is not None and room[0].shape[2] >= IDS.shape[1]
    assert cache[0].k.data_ptr() == room[0].data_ptr()  # the keys are a view of the room


def test_cache_views_stay_valid_forks_copy_and_autograd_concatenates():
    c = KVCache()
    k0, v0 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    c.update(k0, v0)
    ks, vs = [k0], [v0]
    held = []
    for _ in range(40):  # grows past MIN_ROOM and then by a quarter several times
        k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
        ks.append(k)
        vs.append(v)
        a, b = c.update(k, v)
        held.append((a, b, torch.cat(ks, 2), torch.cat(vs, 2)))
    for a, b, want_k, want_v in held:  # earlier views are never written again
        assert torch.equal(a, want_k) and torch.equal(b, want_v)
    assert len(c) == 43 and c.v_finite is True
    fork = KVCache()  # as encdec's beam search forks: another cache's tensors, assigned
    fork.k, fork.v = c.k, c.v
    assert fork.v_finite is None  # unknown until checked
    before = c._room[0].clone()
    fork.update(torch.full((1, 2, 1, 4), 7.0), torch.full((1, 2, 1, 4), float("nan")))
    # the room past len(c) is uninitialised memory (torch.empty): NaN there is not a write
    torch.testing.assert_close(c._room[0], before, rtol=0, atol=0, equal_nan=True)
    assert len(c) == 43 and len(fork) == 44
    assert fork.v_finite is False and c.v_finite is True
    # Keys that need gradients: concatenated (an in-place write would break backward).
    g = KVCache()
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    g.update(x, x)
    k, v = g.update(x[:, :, :1] * 2, x[:, :, :1] * 3)
    (k.sum() + v.sum()).backward()
    assert g._room is None and x.grad is not None
    c.reset()
    assert len(c) == 0 and c.v_finite is None and c._room is None


@pytest.mark.parametrize("name", MODELS)
def test_stacked_projections_give_the_logits_and_hooks_of_the_layers_one_by_one(name):
    m = MODELS[name]()
    with torch.no_grad():
        fused, cache = m.run_with_cache(IDS, need_weights=True)
        attn = m.layers[0].attention
        stack = attn.__dict__["_qkv"]._run  # built by the no-grad call, q_proj's weight a view of it
        assert attn.q_proj.weight.data_ptr() == stack.weight.data_ptr()
        handle = one_by_one()
        try:
            plain, plain_cache = m.run_with_cache(IDS, need_weights=True)
        finally:
            handle.remove()
    torch.testing.assert_close(fused.logits, plain.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused.attentions, plain.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert list(cache) == list(plain_cache)  # every hook point, in the same order
    for name_ in cache:
        torch.testing.assert_close(cache[name_], plain_cache[name_], atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # autograd: each layer's own parameters get their gradients
        m.zero_grad()
        m(IDS).logits.sum().backward()
        assert all(p.grad is not None for p in m.layers[0].attention.q_proj.parameters())


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_int8_stacks_rows_with_their_scales(name):
    m = MODELS[name]()
    with torch.no_grad():
        m(IDS)  # float32 stacks first: quantizing replaces their layers, and new stacks follow
    m.quantize_weights("int8")
    with torch.inference_mode():
        fast, _ = decode(m)  # one row per step: the int8 kernel
        handle = one_by_one()
        try:
            plain, _ = decode(m)
        finally:
            handle.remove()
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    mlp = m.layers[1].mlp
    stack = mlp.__dict__["_gate_up"]._run
    assert stack.qweight.shape[0] == mlp.gate.out_features + mlp.up.out_features
    assert mlp.up.scale.data_ptr() == stack.scale[mlp.gate.out_features :].data_ptr()


def test_the_stack_follows_every_change_of_the_weights():
    m = llama()
    x = IDS[:, :6]
    with torch.no_grad():
        m(x)  # builds the stacks
        q = m.layers[0].attention.q_proj
        q.weight.mul_(2)  # in place: the stack shares the memory
        with_stack = m(x).logits
        handle = one_by_one()
        plain = m(x).logits
        handle.remove()
        torch.testing.assert_close(with_stack, plain, atol=1e-5, rtol=1e-5)
        q.weight = nn.Parameter(torch.randn_like(q.weight))  # replaced: the stack is rebuilt
        m.layers[0].mlp.up.weight.data = torch.randn_like(m.layers[0].mlp.up.weight)
        with_stack = m(x).logits
        handle = one_by_one()
        plain = m(x).logits
        handle.remove()
        torch.testing.assert_close(with_stack, plain, atol=1e-5, rtol=1e-5)
        m.double()  # converted
        torch.testing.assert_close(m(x).logits.float(), plain, atol=1e-4, rtol=1e-4)
        m.float()
    keys = set(llama().state_dict())
    assert set(m.state_dict()) == keys  # the stacks are no parameters, buffers or submodules
    fresh = llama(seed=3)
    fresh.load_state_dict(m.state_dict())  # state dicts of views load as any other
    twin, thawed = copy.deepcopy(m), pickle.loads(pickle.dumps(m))
    with torch.no_grad():
        want = m(x).logits
        for other in (fresh, twin, thawed):
            torch.testing.assert_close(other(x).logits, want, atol=1e-5, rtol=1e-5)
        assert twin.layers[0].attention.q_proj.weight.data_ptr() != q.weight.data_ptr()
