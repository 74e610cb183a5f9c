"""Capture, patching, analyses, compare, head detection, rollout, flow, trade-off."""

from __future__ import annotations

import pytest
import torch

from attnlab.inspect import (
    Ablation,
    AttentionCache,
    PatternPatch,
    ablated,
    attention_flow,
    capture,
    compare,
    detect_heads,
    focused_heads,
    patch_effect,
    record_scores,
    rollout,
    top_attended,
    tradeoff,
)
from attnlab.inspect.heads import score_heads
from attnlab.inspect.inspection import SEED_TEXT, SEED_TEXT_B
from attnlab.models import load_model
from attnlab.models.tokenizer import Encoded

# ------------------------------------------------------------------ capture and analyses


def test_cache_indexing_and_labels(minilm):
    c = capture(minilm, SEED_TEXT)
    assert c.weights.shape == (6, 12, 15, 15) and c.num_layers == 6 and c.num_heads == 12
    assert c[3, 1].shape == (15, 15) and torch.equal(c[3][1], c[3, 1]) and torch.equal(c[-1, -1], c[5, 11])
    assert c.tokens[10] == "it" and c.find("it") == 10
    assert torch.allclose(c.weights.sum(-1), torch.ones(6, 12, 15), atol=1e-5)
    assert c.hidden_states.shape == (7, 15, 384)
    with pytest.raises(IndexError, match="layer"):
        c[6]
    with pytest.raises(IndexError, match="head"):
        c[0, 12]


def test_top_attended_and_focused_heads(minilm):
    c = capture(minilm, SEED_TEXT)
    res = top_attended(c, 10, k=3)
    assert res["focus"] == {"position": 10, "token": "it"}
    top = res["layers"][3]["heads"][1].top
    assert top[0].token == "animal" and top[0].weight == pytest.approx(float(c[3, 1][10, 2]))
    assert [a.weight for a in top] == sorted((a.weight for a in top), reverse=True)
    fh = focused_heads(c, 10)
    assert {(h["layer"], h["head"], h["token"]) for h in fh} >= {(3, 1, "animal"), (5, 11, "animal")}


def test_compare_tired_wide_finds_the_referent_head(minilm):
    """The seeds' key result: a head moves "it" from "animal" (tired) towards "street" (wide)."""
    cmp = compare(minilm, SEED_TEXT, SEED_TEXT_B, "it", ["animal", "street"])
    best = cmp.best
    assert (best.layer, best.head) == (3, 1)
    assert best.a["animal"] > 0.6 and best.b["animal"] < 0.3  # 0.640 -> 0.266
    assert best.b["street"] > 2 * best.a["street"]  # 0.052 -> 0.128
    assert best.shift > 0.4 and best.toward(cmp.candidates) == "street"
    # Every head is ranked; the shift is the difference of differences.
    assert len(cmp.heads) == 72
    h = cmp.heads[5]
    want = (h.b["street"] - h.b["animal"]) - (h.a["street"] - h.a["animal"])
    assert h.shift == pytest.approx(want, abs=1e-6)
    d = cmp.to_dict(3)
    assert d["heads"][0]["toward"] == "street" and len(d["heads"]) == 3


def test_compare_default_candidates_and_errors(minilm):
    cmp = compare(minilm, SEED_TEXT, SEED_TEXT_B, "it")
    assert "animal" in cmp.candidates and "street" in cmp.candidates and "it" not in cmp.candidates
    assert cmp.heads[0].shift is None and cmp.heads[0].moved >= cmp.heads[-1].moved
    with pytest.raises(ValueError, match="not a token of the text"):
        compare(minilm, SEED_TEXT, "a dog barked", "it")
    with pytest.raises(ValueError, match="candidates"):
        compare(minilm, SEED_TEXT, SEED_TEXT_B, "it", ["animal", "giraffe"])
    with pytest.raises(TypeError, match=r"candidates: expected a list of tokens.*got the string 'animal'"):
        compare(minilm, SEED_TEXT, SEED_TEXT_B, "it", "animal")  # type: ignore[arg-type]  # was: its letters


# ------------------------------------------------------------------ patching


def test_record_scores_softmax_gives_the_weights(minilm):
    enc = minilm.encode(SEED_TEXT)
    scores, out = record_scores(minilm, enc)
    assert scores.shape == (6, 12, 15, 15)
    assert torch.allclose(scores.softmax(-1), torch.stack([a[0] for a in out.attentions]), atol=1e-6)


def test_ablating_a_head_zeroes_its_context_only(minilm):
    enc = minilm.encode(SEED_TEXT)
    layer = minilm.model.layers[3].attention
    seen = {}
    h = layer.hook_z.register_forward_hook(lambda m, i, z: seen.__setitem__("z", z.clone()))
    try:
        with ablated(minilm, [Ablation(3, 1)]):
            minilm.forward(enc)
        clean = minilm.forward(enc)
    finally:
        h.remove()
    assert not layer.hook_z._forward_hooks  # only our own hook was there, and it is gone too
    z_ablated_then_clean = seen["z"]  # the clean run came last
    assert float(z_ablated_then_clean[0, 1].abs().max()) > 0
    eff = patch_effect(minilm, enc, ablate=[Ablation(3, 1)])
    assert 0.9 < eff.sentence_cosine < 1.0 and eff.max_abs_change > 0
    assert eff.patched.attentions[3][0, 1].equal(eff.baseline.attentions[3][0, 1])  # weights untouched
    assert not torch.equal(eff.patched.hidden_states[4], clean.hidden_states[4])
    assert torch.equal(eff.patched.hidden_states[3], clean.hidden_states[3])  # layers below unchanged
    mean = patch_effect(minilm, enc, ablate=[Ablation(3, 1, "mean")])
    assert mean.sentence_cosine != eff.sentence_cosine


def test_replacing_a_pattern_returns_it_exactly(tiny_gpt2):
    lm = load_model(tiny_gpt2)
    enc = lm.encode("The animal didn't cross the street")
    T = len(enc)
    prev = torch.zeros(T, T)
    prev[0, 0] = 1.0
    prev[torch.arange(1, T), torch.arange(0, T - 1)] = 1.0  # a perfect previous-token head
    eff = patch_effect(lm, enc, patterns=[PatternPatch(1, 2, prev)])
    assert torch.allclose(eff.patched.attentions[1][0, 2], prev, atol=1e-7)
    assert torch.equal(eff.patched.attentions[1][0, 1], eff.baseline.attentions[1][0, 1])
    assert eff.next_token is not None and eff.next_token["kl"] >= 0
    with pytest.raises(ValueError, match="sum to 1"):
        patch_effect(lm, enc, patterns=[PatternPatch(1, 2, prev * 2)])
    with pytest.raises(ValueError, match="layer"):
        patch_effect(lm, enc, ablate=[Ablation(9, 0)])
    with pytest.raises(ValueError, match="at least one"):
        patch_effect(lm, enc)


# ------------------------------------------------------------------ rollout and flow


def test_rollout_matches_the_definition():
    torch.manual_seed(0)
    w = torch.rand(3, 2, 4, 4).softmax(-1)  # (L, H, T, T)
    a = 0.5 * w.double().mean(1) + 0.5 * torch.eye(4, dtype=torch.float64)
    a = a / a.sum(-1, keepdim=True)
    assert torch.allclose(rollout(w), a[2] @ a[1] @ a[0])
    assert torch.allclose(rollout(w, upto=0), a[0])
    assert torch.allclose(rollout(w).sum(-1), torch.ones(4, dtype=torch.float64))
    eye = torch.eye(4).expand(3, 2, 4, 4)
    assert torch.allclose(rollout(eye), torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="fusion"):
        rollout(w, fusion="median")  # type: ignore[arg-type]


def test_flow_one_layer_is_the_residual_attention_and_is_bounded():
    torch.manual_seed(1)
    w = torch.rand(1, 2, 5, 5).softmax(-1)
    a = 0.5 * w.double().mean(1)[0] + 0.5 * torch.eye(5, dtype=torch.float64)
    a = a / a.sum(-1, keepdim=True)
    raw = attention_flow(w, normalize=False)
    assert torch.allclose(raw, a, atol=1e-8)  # one layer: the only path is the edge itself
    w3 = torch.rand(3, 2, 5, 5).softmax(-1)
    f = attention_flow(w3, queries=[0, 4])
    assert f.shape == (2, 5) and torch.allclose(f.sum(-1), torch.ones(2, dtype=torch.float64))
    raw3 = attention_flow(w3, normalize=False)
    # A flow never exceeds what leaves the source (1) nor what enters the sink.
    assert float(raw3.max()) <= 1 + 1e-9
    with pytest.raises(ValueError, match="queries"):
        attention_flow(w3, queries=[7])


def test_flow_bottleneck_hand_example():
    """Two layers, two tokens: flow is limited by the narrowest edge, rollout is not."""
    A1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # layer 1 keeps tokens apart
    A2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # layer 2: everyone reads token 1
    w = torch.stack([A1, A2])[:, None]  # (L=2, H=1, 2, 2)
    raw = attention_flow(w, normalize=False)
    # Residual: Â1 = I; Â2 = [[.5,.5],[0,1]]; from output 0, 0.5 reaches input 0 and 0.5 input 1.
    assert torch.allclose(raw[0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(raw[1], torch.tensor([0.0, 1.0], dtype=torch.float64))


# ------------------------------------------------------------------ head detection


def _cache(w: torch.Tensor, special: list[bool]) -> AttentionCache:
    T = w.shape[-1]
    enc = Encoded("", list(range(T)), [str(i) for i in range(T)], [str(i) for i in range(T)],
                  [(0, 0)] * T, special, [0] * T)
    return AttentionCache(w, enc)


def test_detectors_on_synthetic_heads():
    """Head 0 previous-token, head 1 induction, head 2 duplicate, head 3 sink/uniform."""
    n = 6
    T = 2 * n + 1  # a sink token at position 0, then x1..xn x1..xn
    w = torch.zeros(1, 4, T, T)
    for i in range(T):
        w[0, 0, i, max(i - 1, 0)] = 1.0
        w[0, 3, i, : i + 1] = 1.0 / (i + 1)
    for i in range(T):
        if i > n:
            w[0, 1, i, i - n + 1] = 1.0
            w[0, 2, i, i - n] = 1.0
        else:
            w[0, 1, i, 0] = w[0, 2, i, 0] = 1.0
    special = [True] + [False] * (2 * n)
    rep = _cache(w, special)
    r = _cache(w[:, :, : n + 1, : n + 1], special[: n + 1])
    s = score_heads([r], rep, r, r, decoder=True)
    assert s["previous"][0, 0] == pytest.approx(1.0)
    assert s["induction"][0, 1] == pytest.approx(1.0) and s["induction"][0, 0] < 0.2
    assert s["duplicate"][0, 2] == pytest.approx(1.0) and s["duplicate"][0, 1] == 0
    assert s["positional"].min() == pytest.approx(1.0)  # identical probes: nothing depends on content
    assert s["broad"][0, 3] == pytest.approx(1.0, abs=1e-4) and s["broad"][0, 0] < 0.05
    assert s["sink"][0, 1] > s["sink"][0, 0]


def test_detect_heads_on_minilm(minilm):
    hs = detect_heads(minilm)
    assert set(hs.scores) == {"previous", "duplicate", "cls", "sep", "positional", "broad"}
    assert hs.top("previous", 1)[0] == {"layer": 0, "head": 2, "score": pytest.approx(0.999, abs=2e-3)}
    assert (0, 2) in [(h["layer"], h["head"]) for h in hs.detected("positional")]
    assert len(hs.patterns) == 6 and all(len(r) == 12 for r in hs.patterns)
    d = hs.to_dict()
    assert d["top"]["cls"][0]["score"] > 0.8


def test_detect_heads_on_a_decoder(tiny_gpt2):
    hs = detect_heads(load_model(tiny_gpt2), ["the cat sat on the mat", "a dog chased the ball"])
    assert {"induction", "sink"} <= set(hs.scores) and "cls" not in hs.scores
    assert all(float(s.min()) >= 0 and float(s.max()) <= 1 + 1e-5 for s in hs.scores.values())


# ------------------------------------------------------------------ trade-off


def test_tradeoff_window_widths(tiny_bert, tiny_gpt2):
    for path in (tiny_bert, tiny_gpt2):
        lm = load_model(path)
        rows = tradeoff(lm, ["the animal didn't cross the street because it was too tired"], [0, 2, 64])
        full, w0, w2, wide = rows
        assert full.width is None and full.cosine == 1.0
        assert wide.cosine == pytest.approx(1.0, abs=1e-6) and wide.top1_agree == 1.0  # wider than the text
        assert wide.coverage == pytest.approx(1.0, abs=1e-6)
        assert w0.keys == 1.0 and w0.coverage <= w2.coverage <= wide.coverage
        assert w0.cosine < wide.cosine
    text = ["the animal didn't cross the street because it was too tired"]
    glob = tradeoff(lm, text, [0], global_first=True)
    assert glob[1].keys > 1.0 and glob[1].coverage >= w0.coverage  # the first token is always visible
    with pytest.raises(ValueError, match="widths"):
        tradeoff(lm, None, [-1])
