"""StreamingLLM experiment (attnlab.inspect.llm.streaming, ``attnlab streaming``) on a tiny Llama:
exact masks, perplexities against hand computations, CLI output and errors; one slow run on
the embedded SmolLM2."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import attnlab
from attnlab.cli.main import app
from attnlab.functional.masks import causal, longformer, materialize, sliding_window
from attnlab.inspect.llm.streaming import (
    default_text,
    keys_per_query,
    recompute_nll,
    streaming_experiment,
    streaming_mask,
    token_nll,
)
from attnlab.models import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load_model(tiny_llama)


@pytest.fixture(scope="module")
def ids(lm):
    return torch.tensor(lm.tokenizer.piece_ids(default_text())[:60])  # (60,) tiny llama: 64 positions


def expected_mask(n: int, w: int, k: int) -> torch.Tensor:
    """Dense (N, N) bool by loops: causal, the W keys i-W+1..i, plus keys 0..K-1."""
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1):
            out[i, j] = (i - j < w) or (j < k)
    return out


@pytest.mark.parametrize(("n", "w", "k"), [(50, 8, 0), (50, 8, 1), (50, 8, 4), (70, 33, 5), (5, 8, 3),
                                            (40, 1, 0), (40, 40, 39)])
def test_masks_allow_exactly_the_intended_keys(n, w, k):
    m = causal() & streaming_mask(w, k, n)
    want = expected_mask(n, w, k)
    assert torch.equal(materialize(m, n, n)[0, 0], want)
    assert torch.equal(keys_per_query(n, w, k), want.sum(1))
    assert torch.equal(keys_per_query(n, None), torch.arange(1, n + 1))
    if k == 0:  # K = 0 is the plain window; the sinks construction with no sinks agrees
        assert torch.equal(materialize(causal() & longformer(w - 1, []), n, n)[0, 0], want)


@pytest.mark.parametrize(("w", "k"), [(8, 0), (8, 4), (40, 3)])
def test_tiled_kernel_with_sink_mask_matches_eager_dense(w, k):
    """The block map of window + sinks (first key block | window band) loses no key."""
    n = 203  # not a multiple of the tile size
    g = torch.Generator().manual_seed(0)
    q, kk, v = (torch.randn(1, 3, n, 16, generator=g, dtype=torch.float64) for _ in range(3))
    m = causal() & streaming_mask(w, k, n)
    dense = expected_mask(n, w, k)
    got = attnlab.attention(q, kk, v, mask=m, backend="tiled").context
    ref = attnlab.attention(q, kk, v, mask=dense, backend="eager").context
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_full_perplexity_is_exp_mean_nll_of_plain_logits(lm, ids):
    res = streaming_experiment(lm, ids, tokens=None, windows=(8,), sinks=(0, 2), profile=False)
    logits = lm.model(ids.view(1, -1)).logits[0, :-1]  # (N-1, V)
    nll = F.cross_entropy(logits, ids[1:], reduction="none")  # (N-1,)
    full = res.row("full")
    torch.testing.assert_close(full.nll_tokens, nll, rtol=1e-5, atol=1e-5)
    assert full.ppl == pytest.approx(math.exp(float(nll.double().mean())), rel=1e-5)
    assert full.nll_beyond == pytest.approx(float(nll[8:].double().mean()), rel=1e-5)  # queries i >= 8
    assert [r.name for r in res.rows] == ["full", "window 8", "window 8 + 2 sinks"]
    assert res.row("window 8").keys_max == 8 and res.row("window 8 + 2 sinks").keys_max == 10
    assert full.keys_max == len(ids) - 1 and full.keys_mean == pytest.approx(len(ids) / 2)
    # the first W queries see the same keys under every configuration
    for r in res.rows[1:]:
        torch.testing.assert_close(r.nll_tokens[:8], nll[:8], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(r.nll_tokens[8:], nll[8:])


def test_window_wider_than_text_is_full_attention(lm, ids):
    res = streaming_experiment(lm, ids, tokens=None, windows=(len(ids) + 4,), sinks=(0, 3), profile=False)
    full = res.row("full").nll_tokens
    for r in res.rows[1:]:
        assert torch.equal(r.nll_tokens, full), r.name
        assert r.nll_beyond is None and r.ppl_beyond is None


def test_window_plus_zero_sinks_equals_window(lm, ids):
    x = ids.view(1, -1)
    win = token_nll(lm.model, x, mask=sliding_window(7, 0), backend="tiled")
    sink0 = token_nll(lm.model, x, mask=longformer(7, []), backend="tiled")
    torch.testing.assert_close(sink0, win, rtol=1e-6, atol=1e-6)
    res = streaming_experiment(lm, ids, tokens=None, windows=(8,), sinks=(0,), profile=False)
    torch.testing.assert_close(res.row("window 8").nll_tokens, win[0], rtol=1e-6, atol=1e-6)


def test_recompute_baseline_matches_hand_computation(lm, ids):
    w, m = 8, 5
    res = streaming_experiment(lm, ids, tokens=None, windows=(w,), sinks=(0,), recompute=m, profile=False)
    n = len(ids)
    hand = []
    for t in range(n - m, n):
        logits = lm.model(ids[t - w: t].view(1, -1)).logits[0, -1]  # (V,) fresh pass, positions 0..W-1
        hand.append(float(-logits.log_softmax(-1)[ids[t]]))
    rec = res.row(f"recompute {w}")
    torch.testing.assert_close(rec.nll_tokens[-m:], torch.tensor(hand), rtol=1e-5, atol=1e-5)
    assert rec.nll_tokens[:-m].isnan().all() and rec.nll is None
    assert rec.ppl_last == pytest.approx(math.exp(sum(hand) / m), rel=1e-5)
    torch.testing.assert_close(recompute_nll(lm.model, ids, w, m, batch=2), torch.tensor(hand),
                               rtol=1e-5, atol=1e-5)
    for r in res.rows:  # every configuration is compared on the same last M tokens
        assert r.nll_last == pytest.approx(float(r.nll_tokens[-m:].double().mean()), rel=1e-6)
    with pytest.raises(ValueError, match="recompute: expected at most"):
        streaming_experiment(lm, ids, tokens=None, windows=(8,), sinks=(0,), recompute=n - 7)


def test_sink_profile_shares_are_in_unit_interval(lm, ids):
    res = streaming_experiment(lm, ids, tokens=40, windows=(8,), sinks=(0, 4))
    assert len(res.sink_profile) == lm.num_layers == len(res.sink_profile_k) and res.profile_k == 4
    for a, b in zip(res.sink_profile, res.sink_profile_k, strict=True):
        assert 0.0 <= a <= b <= 1.0 + 1e-6
    d = res.to_dict(per_token=True)
    assert d["n_tokens"] == 40 and len(d["rows"][0]["nll_tokens"]) == 39
    assert set(d["sink_profile"]) == {"first_token", "first_4", "tokens", "seconds"}


def test_bad_arguments(lm, ids):
    for kw, msg in [({"windows": (0,)}, "windows"), ({"sinks": (8,)}, "sinks: expected each K < window"),
                    ({"sinks": (-1,)}, "sinks"), ({"tokens": 1}, "tokens"), ({"recompute": -1}, "recompute")]:
        with pytest.raises(ValueError, match=msg):
            streaming_experiment(lm, ids, **({"windows": (8,)} | kw))
    with pytest.raises(ValueError, match="at most 64"):
        streaming_experiment(lm, default_text(), tokens=100, windows=(8,), sinks=(0,))


def run(*args: str, code: int = 0):
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output
    return res


def test_cli_json_and_png(tiny_llama, tmp_path):
    png = tmp_path / "s.png"
    rep = json.loads(run("streaming", "--model", str(tiny_llama), "--tokens", "48", "--window", "8",
                         "--sinks", "0,2", "--recompute", "4", "--png", str(png), "--json").stdout)
    assert [r["name"] for r in rep["rows"]] == ["full", "window 8", "window 8 + 2 sinks", "recompute 8"]
    assert rep["n_tokens"] == 48 and rep["recompute"] == 4 and png.stat().st_size > 0
    assert all(math.isfinite(r["ppl_last"]) for r in rep["rows"])
    assert len(rep["sink_profile"]["first_token"]) == 2


def test_cli_table_with_text_file(tiny_llama, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("The animal didn't cross the street because it was too tired. " * 8)
    out = run("streaming", "--model", str(tiny_llama), "--text-file", str(f), "--tokens", "40",
              "--window", "6", "--sinks", "0,1").stdout
    assert "window 6 + 1 sinks" in out and "ppl i >= W" in out and "sink profile" in out


@pytest.mark.parametrize(("args", "msg"), [
    (["--window", "0"], "--window: expected integers >= 1"),
    (["--sinks", "8"], "--sinks: expected each K < --window"),
    (["--sinks", "a,b"], "--sinks: expected comma-separated integers"),
    (["--text-file", "/nonexistent/t.txt"], "--text-file: expected an existing text file"),
    (["--png", "x.jpg"], "--png: expected a file name ending in .png or .svg"),
    (["--tokens", "9"], "--tokens: expected at least window + 2 = 10 tokens"),
])
def test_cli_errors(tiny_llama, args, msg):
    res = run("streaming", "--model", str(tiny_llama), "--window", "8", *args, "--json", code=2)
    assert msg in json.loads(res.stdout)["error"]
    res = run("streaming", "--model", str(tiny_llama), "--window", "8", *args, code=2)
    assert msg in res.output and "Traceback" not in res.output


def test_cli_text_file_too_short(tiny_llama, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("cat sat")
    res = run("streaming", "--model", str(tiny_llama), "--text-file", str(f), "--window", "8", "--json",
              code=2)
    assert "--text-file: expected at least window + 2 = 10 tokens" in json.loads(res.stdout)["error"]


@pytest.mark.slow
def test_smollm2_structure():
    lm = load_model("smollm2")
    res = streaming_experiment(lm, tokens=256, windows=(64,), sinks=(0, 4), recompute=4)
    assert [r.name for r in res.rows] == ["full", "window 64", "window 64 + 4 sinks", "recompute 64"]
    assert math.isfinite(res.row("full").ppl) and res.row("full").ppl > 1
    assert len(res.sink_profile) == 30 and all(0 <= s <= 1 for s in res.sink_profile)
