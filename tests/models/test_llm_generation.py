"""Generation with attention captured in the decode loop, knockout, PASTA steering, the prompt
experiment and the LLM CLI — on a tiny random Llama where every effect can be computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.inspect.llm.generation import Sampling, generate_ids, generate_text, next_token
from attnlab.inspect.llm.prompt_effect import find_span, prompt_effect
from attnlab.inspect.llm.steering import Topic, knockout, pasta, per_layer
from attnlab.inspect.recorder import AttentionRecorder
from attnlab.models import load_model

PROMPT = "The animal didn't cross the street because it was too"


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load_model(tiny_llama)


def test_cached_decoding_equals_uncached_and_rows_equal_a_full_forward(lm):
    enc = lm.encode(PROMPT)
    fast, _, _ = generate_ids(lm, enc.ids, max_new_tokens=12, stop_ids=set())
    slow, _, _ = generate_ids(lm, enc.ids, max_new_tokens=12, stop_ids=set(), use_cache=False)
    assert fast == slow and len(fast) == 12
    with AttentionRecorder(lm.model, dtype=torch.float32) as rec:
        new, _, _ = generate_ids(lm, enc.ids, max_new_tokens=12, stop_ids=set(), recorder=rec)
    assert new == fast
    seq = torch.tensor([enc.ids + new[:-1]])  # every fed position
    with torch.no_grad():
        ref = lm.model(seq, need_weights=True).attentions  # L x (1, H, N, N)
    assert len(rec) == seq.shape[1]
    for p in (0, len(enc) - 1, len(enc), seq.shape[1] - 1):
        want = torch.stack([a[0, :, p, : p + 1] for a in ref])  # (L, H, p + 1)
        torch.testing.assert_close(rec.row(p), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rec.matrix()[0, 1], ref[0][0, 1], atol=1e-6, rtol=1e-5)


def test_recorder_keeps_chosen_heads_in_fp16_and_states_its_memory(lm):
    g = generate_text(lm, PROMPT, max_new_tokens=5, capture=True, layers=[1], heads=[0, 3])
    rec = g.recorder
    assert rec.layers == [1] and rec.heads == [0, 3] and rec.kv_group == [0, 1]  # 4 heads over 2 KV heads
    n = len(rec)
    assert n == len(g.prompt) + len(g.new_ids) - 1
    assert rec.nbytes == n * (n + 1) // 2 * 1 * 2 * 2  # triangle x layers x heads x fp16
    assert all(r.dtype == torch.float16 for r in rec.rows)
    assert g.to_dict()["capture"]["bytes"] == rec.nbytes
    with pytest.raises(ValueError, match=r"heads: expected ints in 0\.\.3, got \[7\]"):
        AttentionRecorder(lm.model, heads=[7])


def test_sampling_is_seeded_and_top_p_narrows_to_the_argmax():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    draws = [next_token(logits, Sampling(greedy=False, seed=0), torch.Generator().manual_seed(s))
             for s in range(200)]
    assert set(draws) >= {0, 1}  # sampling, not argmax
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [next_token(logits, Sampling(greedy=False), g1) for _ in range(20)] == [
        next_token(logits, Sampling(greedy=False), g2) for _ in range(20)]
    tight = Sampling(greedy=False, top_p=0.1)  # p(argmax) = 0.61 > 0.1: only it survives
    assert {next_token(logits, tight, torch.Generator().manual_seed(s)) for s in range(50)} == {0}
    for bad in ({"temperature": 0}, {"top_p": 0}, {"top_p": 1.5}, {"temperature": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Sampling(greedy=False, **bad)


def _layer0_weights(lm, ids, **kw):
    with torch.no_grad():
        return lm.model(torch.tensor([ids]), need_weights=True, backend="eager", **kw).attentions[0][0]


def test_knockout_zeroes_the_keys_and_renormalises_the_rest(lm):
    ids = lm.encode(PROMPT).ids
    S = [2, 3]
    w0 = _layer0_weights(lm, ids)  # (H, N, N) layer 0 sees the same input either way
    w1 = _layer0_weights(lm, ids, score_mods=per_layer(knockout(S), [0]))
    assert torch.all(w1[:, 4:, S] == 0)
    keep = [i for i in range(len(ids)) if i not in S]
    want = w0[:, 4:, keep] / w0[:, 4:, keep].sum(-1, keepdim=True)
    torch.testing.assert_close(w1[:, 4:, keep], want, atol=1e-6, rtol=1e-5)


def test_pasta_scales_the_other_keys_by_alpha_in_chosen_heads_only(lm):
    ids = lm.encode(PROMPT).ids
    span, alpha = [1, 2], 0.05
    w0 = _layer0_weights(lm, ids)
    w1 = _layer0_weights(lm, ids, score_mods={0: pasta(span, [1], alpha)})
    torch.testing.assert_close(w1[[0, 2, 3]], w0[[0, 2, 3]])  # other heads untouched
    scale = torch.full((len(ids),), alpha)
    scale[span] = 1.0
    want = w0[1] * scale  # PASTA, Zhang et al. 2023 eq. 2
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(w1[1], want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"alpha: expected a number in \(0, 1\]"):
        pasta(span, [1], 2.0)


def test_topic_mass_is_softmax_mass_on_single_token_spellings(lm):
    topic = Topic.from_words(lm.tokenizer, ["animal", "street"])
    assert topic.ids.numel() >= 1
    logits = torch.randn(lm.tokenizer.vocab_size)
    want = torch.softmax(logits.double(), -1)[topic.ids].sum()
    assert math.isclose(topic.mass(logits), float(want), rel_tol=1e-12)
    with pytest.raises(ValueError, match="none of"):
        Topic.from_words(lm.tokenizer, ["zzzqqqxxxyyy"])


def test_prompt_effect_on_a_tiny_model(lm):
    eff = prompt_effect(lm, "The animal didn't cross the street", "because it was too tired",
                        topic_words=["tired", "animal", "street"], max_new_tokens=6, bands=2,
                        emphasize="street", alpha=0.1, steer_heads=3)
    enc = eff.augmented.generation.prompt
    assert "".join(enc.labels[p] for p in eff.added_positions).strip() == "because it was too tired"
    T = len(eff.augmented.generation.new_ids)
    assert eff.share.shape == (T, 2) and eff.share_heads.shape == (2, 4)
    assert torch.all((eff.share >= 0) & (eff.share <= 1 + 1e-3))
    d = eff.to_dict()
    assert [k["label"] for k in d["knockout"]] == ["knockout all layers", "knockout layers 0-0",
                                                   "knockout layers 1-1"]
    assert d["steering"]["heads"] and len(d["steering"]["heads"]) == 3
    mb = eff.moved_back(eff.knockouts[0])
    assert d["knockout"][0]["topic_moved_back"] == (None if mb is None else round(mb, 3))
    with pytest.raises(ValueError, match="already in the prompt"):
        prompt_effect(lm, PROMPT, "street")
    with pytest.raises(ValueError, match="add: expected words"):
        prompt_effect(lm, PROMPT, "  ")
    with pytest.raises(ValueError, match=r"emphasize: expected whole words of the prompt.*tokens are"):
        prompt_effect(lm, PROMPT, "tired", emphasize="zebra", max_new_tokens=2)
    assert find_span(enc, "street", user_text="The animal didn't cross the street because it was too tired")
    # result.md keeps each answer as it was generated, line breaks and all, in a block of its own
    eff.augmented.generation.text = "def f():\n    return 1  # ``` inside"
    md = eff.markdown()
    assert "````text\ndef f():\n    return 1  # ``` inside\n````" in md
    assert "## share of attention on the added words per layer" in md


def test_moved_back_is_the_fraction_of_the_topic_gap_and_none_on_noise():
    from types import SimpleNamespace

    from attnlab.inspect.llm.prompt_effect import PromptEffect

    def run(mass):
        return SimpleNamespace(topic_mean=mass)

    eff = PromptEffect(run(0.002), run(0.010), "x", [0], torch.zeros(1, 1), torch.zeros(1, 1), [0.1])
    assert eff.moved_back(run(0.002)) == pytest.approx(1.0)
    assert eff.moved_back(run(0.006)) == pytest.approx(0.5)
    assert eff.moved_back(run(0.018)) == pytest.approx(-1.0)  # the knockout pushed further away
    noise = PromptEffect(run(1e-7), run(2e-7), "x", [0], torch.zeros(1, 1), torch.zeros(1, 1), [0.1])
    assert noise.moved_back(run(0.0)) is None  # 1e-7 gap: a ratio would be meaningless
    close = PromptEffect(run(0.0100), run(0.0105), "x", [0], torch.zeros(1, 1), torch.zeros(1, 1), [0.1])
    assert close.moved_back(run(0.0)) is None  # gap under 10% of the mass


def test_added_and_emphasized_words_are_found_in_the_user_message_only(lm):
    # "assistant" appears in the chat template's role header after the message; the knockout
    # must target the user's word. The tiny model has no template, so render one by hand.
    from attnlab.inspect.llm.prompt_effect import find_span

    text = "<|im_start|>user\nplease log in<|im_end|>\n<|im_start|>assistant\n"
    enc = lm.encode(text)
    span = find_span(enc, "in", user_text="please log in")
    assert "".join(enc.labels[i] for i in span).strip() == "in"
    assert min(span) < len(lm.encode("<|im_start|>user\nplease log in"))
    with pytest.raises(ValueError, match="whole words"):
        find_span(enc, "lo", user_text="please log in", name="emphasize")  # a piece of "log"
    with pytest.raises(ValueError, match="whole words"):
        find_span(enc, "assistant", user_text="please log in", name="emphasize")


def test_generate_and_prompt_effect_cli(tiny_llama, tmp_path):
    r = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(tiny_llama), "--max-new-tokens", "4",
                                 "--png", str(tmp_path / "g.png"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["new_tokens"] == 4 and d["capture"]["rows"] >= 4 and (tmp_path / "g.png").stat().st_size > 1000
    r = CliRunner().invoke(app, ["generate", PROMPT, "--model", str(tiny_llama), "--temperature", "0.7",
                                 "--top-p", "0.9", "--seed", "1", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["prompt-effect", "The animal didn't cross the street", "--add", "tired",
                                 "--topic", "animal,street", "--model", str(tiny_llama),
                                 "--max-new-tokens", "3", "--png", str(tmp_path / "s.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["files"] == [str(tmp_path / "s.png")]


@pytest.mark.parametrize("args, message", [
    (["generate", "  "], "PROMPT: expected some text"),
    (["generate", "hi", "--greedy", "--temperature", "0.5"], "--greedy: expected either"),
    (["generate", "hi", "--top-p", "2"], "--top-p: expected a number in (0, 1]"),
    (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens: expected a positive int"),
    (["generate", "word " * 70], "expected fewer than 64 tokens"),
    (["prompt-effect", "The animal", "--add", ""], "add: expected words"),
    (["prompt-effect", "The animal", "--add", "animal"], "already in the prompt"),
    (["generate", "hi", "--decode-kernel", "native"],
     "--decode-kernel: 'native' cannot decode this run: every projection must be int8 or int4"),
])
def test_llm_cli_bad_input_is_one_line(tiny_llama, args, message):
    r = CliRunner().invoke(app, [*args, "--model", str(tiny_llama), "--json"])
    assert r.exit_code == 2, r.output
    assert message in json.loads(r.output)["error"]


def test_heads_on_a_llama_with_a_layers_by_heads_picture(tiny_llama, tmp_path):
    png = str(tmp_path / "h.png")
    r = CliRunner().invoke(app, ["heads", "--model", str(tiny_llama), "--png", png, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"induction", "previous", "duplicate", "sink"} <= set(d["scores"])
    assert len(d["scores"]["induction"]) == 2 and len(d["scores"]["induction"][0]) == 4  # layers x heads
    assert d["png"] == str(tmp_path / "h.png") and (tmp_path / "h.png").stat().st_size > 5000


def test_truncate_keeps_the_first_tokens_of_the_message_and_room_to_generate(lm):
    long = "the animal crossed the street " * 40  # ~200 tokens, the tiny model holds 64
    with pytest.raises(ValueError, match="expected fewer than 64 tokens"):
        generate_text(lm, long, max_new_tokens=5)
    g = generate_text(lm, long, max_new_tokens=5, truncate=True)
    assert len(g.prompt) + 5 <= 64 and len(g.new_ids) == 5
    assert g.prompt.text.startswith("the animal crossed")


@pytest.mark.parametrize("args, message", [
    (["generate", "hi", "--html", "page.png"], "--html: expected a file name ending in .html"),
    (["generate", "hi", "--png", "x.html"], "--png: expected a file name ending in .png or .svg"),
    (["generate", "hi", "--png", "x.png", "--layers", "1", "--layer", "0"], "--layer: expected one of the "
                                                                            "captured layers [1], got 0"),
    (["generate", "hi", "--seed", "-1"], "seed: expected an int"),
    (["generate", "hi", "--decode-kernel", "fast"], "--decode-kernel: expected one of auto, native, torch"),
    (["generate", "hi", "--temperature", "1", "--samples", "2", "--decode-kernel", "native"],
     "--decode-kernel: 'native' decodes one answer at a time"),
    (["prompt-effect", "The animal", "--add", "tired", "--alpha", "2"], "alpha: expected a number in (0, 1]"),
    (["prompt-effect", "The animal", "--add", "tired", "--steer-heads", "0"],
     "--steer-heads: expected an int"),
    (["prompt-effect", "The animal", "--add", "tired", "--bands", "9"], "bands: expected an int in 1..2"),
    (["prompt-effect", "The animal", "--add", "tired", "--emphasize", "ani"], "expected whole words"),
    (["prompt-effect", "The animal", "--add", "tired", "--html", "x.png"], "--html: expected"),
])
def test_llm_cli_refuses_bad_options_before_generating(tiny_llama, args, message, monkeypatch):
    import attnlab.inspect.llm.generation as gen

    def boom(*a, **k):
        raise AssertionError("generated before refusing the options")

    monkeypatch.setattr(gen, "generate_ids", boom)
    r = CliRunner().invoke(app, [*args, "--model", str(tiny_llama), "--json"])
    assert r.exit_code == 2, r.output
    assert message in json.loads(r.output)["error"]


def test_rich_markup_in_user_text_is_printed_as_text(tiny_llama, tmp_path):
    png = tmp_path / "a[b].png"
    r = CliRunner().invoke(app, ["prompt-effect", "The animal", "--add", "[/] tired [red]x", "--topic",
                                 "animal", "--model", str(tiny_llama), "--max-new-tokens", "2",
                                 "--png", str(png)])
    assert r.exit_code == 0, r.output
    flat = r.output.replace("\n", "")  # rich wraps long lines at the console width
    assert "[/] tired [red]x" in flat and f"wrote {png}" in flat


def test_score_mods_must_name_layers_of_the_model_and_heads_probes_two_tokens(lm):
    ids = torch.tensor([lm.encode(PROMPT).ids])
    with pytest.raises(ValueError, match=r"score_mods: expected layer keys in 0\.\.1, got 99"):
        lm.model(ids, score_mods={99: knockout([0])})
    with pytest.raises(TypeError, match="expected a mapping"):
        lm.model(ids, score_mods=[knockout([0])])
    from attnlab.inspect.heads import detect_heads

    with pytest.raises(ValueError, match="at least two tokens"):
        detect_heads(lm, ["a"])
