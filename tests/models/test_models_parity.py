"""attnlab's encoder/decoder vs transformers on the same weights: hidden states, attention
weights, logits, greedy decodes; and every attnlab backend swapped into the real model."""

from __future__ import annotations

import pytest
import torch

from attnlab.backends import backend_names
from attnlab.inspect.llm.generation_capture import generate
from attnlab.models import load_model

from .conftest import make_bert, make_gpt2

TOL = 1e-5
TEXTS = ["The animal didn't cross the street because it was too tired.",
         "A small dog chased the red ball."]


def _hf(path, cls_name="AutoModel"):
    import transformers

    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(str(path), attn_implementation="eager", local_files_only=True).eval()


def _max_diff(ours, theirs) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))


def _compare(lm, hf, texts, *, logits: bool = False) -> dict[str, float]:
    encs = [lm.encode(t) for t in texts]
    ids, mask, types = lm.batch(encs)
    out = lm.forward(encs, need_weights=True)
    kw = {"token_type_ids": types} if lm.kind == "encoder" else {}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask if len(texts) > 1 else None,
                 output_attentions=True, output_hidden_states=True, **kw)
    keep = mask.bool()  # (B, L): compare real tokens only; padded rows are not defined
    res = {
        "hidden": max(float((a - b).abs()[keep].max()) for a, b in zip(out.hidden_states, ref.hidden_states,
                                                                       strict=True)),
        "weights": max(float((a - b).abs().permute(0, 2, 1, 3)[keep].max())
                       for a, b in zip(out.attentions, ref.attentions, strict=True)),
    }
    assert len(out.hidden_states) == len(ref.hidden_states)
    if logits:
        res["logits"] = float((out.logits - ref.logits).abs()[keep].max())
    return res


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS], ids=["single", "padded-batch"])
def test_tiny_bert_parity(tiny_bert, texts):
    lm = load_model(tiny_bert)
    assert lm.engine == "attnlab" and lm.kind == "encoder"
    diffs = _compare(lm, _hf(tiny_bert), texts)
    assert max(diffs.values()) < TOL, diffs


def test_tiny_roberta_parity(tiny_roberta):
    lm = load_model(tiny_roberta)
    assert lm.model_type == "roberta" and lm.native
    diffs = _compare(lm, _hf(tiny_roberta), TEXTS)
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS], ids=["single", "padded-batch"])
def test_tiny_gpt2_parity_with_lm_head(tiny_gpt2, texts):
    lm = load_model(tiny_gpt2)
    assert lm.kind == "decoder" and lm.native
    diffs = _compare(lm, _hf(tiny_gpt2, "GPT2LMHeadModel"), texts, logits=True)
    assert max(diffs.values()) < TOL, diffs


def test_gpt2_scaling_flags_and_bare_model(tmp_path):
    # GPT2Model (no "transformer." prefix, no lm_head) with GPT-2's two scaling switches.
    path = make_gpt2(tmp_path / "g", seed=3, lm_head=False, scale_attn_by_inverse_layer_idx=True,
                     activation_function="gelu_new")
    lm = load_model(path)
    diffs = _compare(lm, _hf(path), TEXTS[:1])
    assert max(diffs.values()) < TOL, diffs
    path2 = make_gpt2(tmp_path / "g2", seed=4, lm_head=False, scale_attn_weights=False)
    diffs2 = _compare(load_model(path2), _hf(path2), TEXTS[:1])
    assert max(diffs2.values()) < TOL, diffs2


def test_bert_with_relu_and_no_pooler(tmp_path):
    from transformers import BertConfig, BertModel

    from .conftest import save, wordpiece_tokenizer

    v = wordpiece_tokenizer(tmp_path)
    cfg = BertConfig(vocab_size=v, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=32, hidden_act="relu")
    save(BertModel(cfg, add_pooling_layer=False).eval(), tmp_path)
    lm = load_model(tmp_path)
    assert lm.model.pooler is None
    assert max(_compare(lm, _hf(tmp_path), TEXTS[:1]).values()) < TOL


def test_default_model_parity(minilm):
    """all-MiniLM-L6-v2: every hidden state and attention weight within 1e-5 of transformers."""
    diffs = _compare(minilm, _hf(minilm.path), TEXTS)
    assert diffs["hidden"] < TOL and diffs["weights"] < TOL, diffs
    hf = _hf(minilm.path)
    enc = minilm.encode(TEXTS[0])
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([enc.ids]))
    ours = minilm.forward(enc, need_weights=False)
    assert float((minilm.model.pooled(ours.last_hidden_state) - ref.pooler_output).abs().max()) < TOL


@pytest.mark.parametrize("backend", [b for b in ("eager", "sdpa", "tiled") if b in backend_names()])
def test_backends_swapped_into_real_models(minilm, tiny_gpt2, backend):
    """The same hidden states whichever attnlab kernel runs inside the pretrained model."""
    for lm in (minilm, load_model(tiny_gpt2)):
        encs = [lm.encode(t) for t in TEXTS]
        ref = lm.forward(encs, need_weights=True)  # auto -> eager (weights requested)
        out = lm.forward(encs, need_weights=False, backend=backend)
        _, mask, _ = lm.batch(encs)
        keep = mask.bool()
        diff = float((out.last_hidden_state - ref.last_hidden_state).abs()[keep].max())
        assert diff < TOL, (lm.name, backend, diff)


def test_greedy_generation_matches_transformers(tiny_gpt2):
    lm = load_model(tiny_gpt2)
    hf = _hf(tiny_gpt2, "GPT2LMHeadModel")
    enc = lm.encode("The animal didn't cross the")
    cap = generate(lm, enc, max_new_tokens=6, stop_at_eos=False)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([enc.ids]), attention_mask=torch.ones(1, len(enc), dtype=torch.long),
                          max_new_tokens=6, do_sample=False, output_attentions=True,
                          return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    assert cap.new_ids == ref.sequences[0, len(enc):].tolist()
    assert len(cap.steps) == len(ref.attentions) == 6
    for ours, theirs in zip(cap.steps, ref.attentions, strict=True):
        theirs = torch.stack([a[0] for a in theirs])  # (L, H, Lq, Lk)
        assert ours.shape == theirs.shape
        assert float((ours - theirs).abs().max()) < TOL
    cache = cap.as_cache(lm)
    n = len(enc) + 5  # the last generated token is never fed
    assert cache.weights.shape[-2:] == (n, n)
    assert torch.allclose(cache.weights.sum(-1), torch.ones(cache.weights.shape[:-1]), atol=1e-5)
    assert float(cache.weights.triu(1).abs().max()) == 0.0  # causal


def test_parity_survives_different_seeds(tmp_path):
    for seed in (5, 6):
        path = make_bert(tmp_path / f"b{seed}", seed=seed)
        assert max(_compare(load_model(path), _hf(path), TEXTS).values()) < TOL
