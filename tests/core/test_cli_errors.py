"""Errors name what the user typed (issue 16, item 5): the option (--top, not the library's k), what
was expected and what was given, in one line; sizes that would allocate without bound are refused
(item 3). Each case failed before (the comment says how)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from attnlab.arguments import ArgumentError, expect_int
from attnlab.cli import llm_cmds, streaming_cmd
from attnlab.cli.common import as_option, split_tokens
from attnlab.cli.main import app


def _error(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 2, res.output
    return json.loads(res.stdout)["error"]


def test_library_names_become_the_options_typed():
    assert as_option("k: expected a positive int, got 0", {"k": "--top"}) == \
        "--top: expected a positive int, got 0"
    assert as_option("focus (text B): 'a' is not a token", {"focus": "--focus"}) == \
        "--focus (text B): 'a' is not a token"
    assert as_option("kv: something", {"k": "--top"}) == "kv: something"
    # a check's ArgumentError says its argument's name: no message parsing
    assert as_option(ArgumentError("k", "k: expected a positive int, got 0"), {"k": "--top"}) == \
        "--top: expected a positive int, got 0"
    with pytest.raises(ArgumentError) as e:
        expect_int("seq_len", 0, 2)
    assert (e.value.name, str(e.value)) == ("seq_len", "seq_len: expected an int >= 2, got 0")
    assert as_option(e.value, {"seq_len": "--len"}) == "--len: expected an int >= 2, got 0"
    assert as_option(e.value, {"len": "--len"}) == str(e.value)


@pytest.mark.parametrize(("args", "error"), [
    # JSON that json.loads takes but is no JSON number: inf / nan reached walk ("q: ... got [[inf]]")
    (["walk", "--q", "[[1e400]]"], "--q: expected finite numbers (at most 1.8e308 in size), got 1e400"),
    (["walk", "--q", "[[NaN, 1]]"], "--q: expected JSON numbers, got NaN (not JSON, and not finite)"),
    (["walk", "--q", "[[1, 2]]", "--k", "[[1, 2, 3]]"], "--k: expected 2 dims per row (as q)"),  # was "k:"
    (["walk", "--q", "[[1e200, 1e200]]"], "--q/--k/--v: the scores q·kᵀ overflow float64"),
    (["walk", "--perturb", "sat:2:inf"], "--perturb: expected a finite DELTA, got 'inf'"),  # was "q: ..."
    (["walk", "--perturb", "dog:0:1"], "--perturb: expected a query token among"),  # was "perturb:"
    (["walk", "--q", json.dumps([[1, 0]] * 65)],  # was computed and printed: tables grow as rows x rows
     "--q: expected at most 64 rows (walk prints every step for a person to follow), got 65; walk a slice"),
    (["walk", "--q", "[[1, 0]]", "--tokens", "a,b,c"], "--tokens: expected 1 label (one per row"),  # labels
    (["plot-mask", "--mask", "window:a,b"],  # was Python's "invalid literal for int() with base 10: 'a'"
     "--mask: bad term 'window:a,b': expected integers; write window:LEFT,RIGHT or "
     "window:LEFT,RIGHT,bottom-right (e.g. window:2,0)"),
    (["plot-mask", "--mask", "window:2"],  # newcomer review: the form, not a generic list
     "--mask: bad term 'window:2': expected window:LEFT,RIGHT or window:LEFT,RIGHT,bottom-right"),
    (["plot-mask", "--mask", "window:2,0:bottom-right"],  # was "expected integers (e.g. window:3,0)"
     "--mask: bad term 'window:2,0:bottom-right': expected integers; write window:LEFT,RIGHT or "
     "window:LEFT,RIGHT,bottom-right"),
    (["plot-mask", "--mask", "causal&&window:1,0"],  # was "... got ''"
     "--mask: an empty term in 'causal&&window:1,0' (two operators in a row, or one at an end)"),
    (["plot-mask", "--mask", "causal:x"], "--mask: bad term 'causal:x': align: expected 'top-left'"),
    (["render", "/nonexistent.json"], "FILE: expected a JSON file or JSON text"),  # was "source:"
    (["bench", "--threads", "0"], "--threads: expected an integer from 1 to"),  # was "threads:"
    (["bench", "--n", "1q"], "--n: expected a positive length like 4096, 16k or 1m, got '1q'"),  # float()'s
    (["bench", "--suite", "nope"], "--suite: expected quick, standard, patterns, targets or gemma3"),
])
def test_errors_name_the_option(args, error):
    assert _error(*args).startswith(error)


def test_walk_file_errors_name_the_file_and_its_key(tmp_path):
    f = tmp_path / "w.json"
    f.write_text('{"q": [[1, 2]], "k": [[1, 2, 3]]}')
    assert _error("walk", "--file", str(f)).startswith("--file k: expected 2 dims per row")
    f.write_text('{"q": [[Infinity]]}')
    assert _error("walk", "--file", str(f)).startswith("--file: expected JSON numbers, got Infinity")
    f.write_text("[1]")
    assert _error("walk", "--file", str(f)) == '--file: expected a JSON object {"q": ..}, got list'


def test_model_command_errors_name_the_options():
    # the embedded all-MiniLM-L6-v2: an encoder
    assert _error("inspect", "--top", "0") == "--top: expected a positive int, got 0"  # was "k: ..."
    # was "generate: ... got a encoder"
    assert _error("inspect", "--generate", "2").startswith(
        "--generate: expected a decoder loaded by attnlab (gpt2, smollm2, a llama GGUF), got an encoder")
    texts = ("the cat sat on the mat", "the dog sat on the mat", "--focus", "sat", "--candidates", "mat,the")
    for top in ("0", "-3"):  # was an empty table (0) and every head but the last 3 (-3)
        assert _error("compare", *texts, "--top", top) == f"--top: expected a positive int, got {top}"
    assert _error("compare", "the cat", "the dog", "--focus", "the").startswith(
        "--candidates: expected tokens present in both texts")  # was "candidates: ..."
    # was an OverflowError traceback from the mask arithmetic
    assert _error("tradeoff", "--widths", "1,100000000000000000000").startswith(
        "--widths: expected half-widths up to 512 (the model's positions")


def test_generate_refuses_a_capture_that_does_not_fit(monkeypatch, tmp_path):
    import attnlab.inspect.llm.generation_report as generation_report
    from attnlab.inspect.llm.generation import capture_limit

    lm = SimpleNamespace(num_layers=30, num_heads=9, max_tokens=8192)  # SmolLM2-135M's shape
    monkeypatch.setattr(llm_cmds, "load_lm", lambda *a, **k: lm)
    monkeypatch.setattr(generation_report, "fit_prompt", lambda *a, **k: [0] * 30)
    # was: generation starts and the recorder grows towards 18 GB
    err = _error("generate", "hi", "--max-new-tokens", "8000", "--png", str(tmp_path / "a.png"))
    assert err.startswith("--max-new-tokens: capturing attention over up to 8,029 positions (prompt 30 + "
                          "8,000 new) x 30 layers x 9 heads needs 17.4 GB (fp16); expected at most 2 GB")
    assert "--layers/--heads" in err
    assert capture_limit(30, 8000, 8192, 1, 1) is None  # one head of one layer: 64 MB
    # prompt-effect captures every head of its augmented run: the same refusal, before generating
    import attnlab.inspect.llm.prompt_effect as pe

    monkeypatch.setattr(pe, "fit_prompt", lambda *a, **k: [0] * 30)
    monkeypatch.setattr(pe, "generate_text", lambda *a, **k: pytest.fail("generated before refusing"))
    assert _error("prompt-effect", "--max-new-tokens", "8000").startswith(
        "--max-new-tokens: capturing attention over up to 8,029 positions")
    assert capture_limit(30, 100_000, 8192, 30, 9).startswith(
        "--max-new-tokens: capturing attention over up to 8,192 positions")  # the context bounds it


def test_streaming_tokens_beyond_the_context_names_the_number_given(monkeypatch):
    tok = SimpleNamespace(piece_ids=lambda text: list(range(28033)))  # the default text's length
    lm = SimpleNamespace(max_tokens=8192, tokenizer=tok)
    monkeypatch.setattr(streaming_cmd, "load_lm", lambda *a, **k: lm)
    # was "tokens: expected at most 8192 (the model's context), got 28033" (the text's length)
    assert _error("streaming", "--tokens", "100000") == \
        "--tokens: expected at most 8192 (the model's context), got 100000"


def test_prompt_effect_topic_takes_commas_or_spaces_and_its_errors_name_it(monkeypatch):
    import attnlab.inspect.llm.prompt_effect as pe

    seen = {}

    def fake(lm, base, add, *, topic_words, **kw):
        seen["words"] = topic_words
        raise ValueError("topic: none of them is a single token")

    lm = SimpleNamespace(num_layers=2, num_heads=2, max_tokens=64)
    monkeypatch.setattr(llm_cmds, "load_lm", lambda *a, **k: lm)
    monkeypatch.setattr(pe, "fit_prompt", lambda *a, **k: [0] * 10)
    monkeypatch.setattr(pe, "prompt_effect", fake)
    assert _error("prompt-effect", "--topic", "secure, hash salt") == \
        "--topic: none of them is a single token"  # was "topic: ..."
    assert seen["words"] == ("secure", "hash", "salt")  # was ("secure", " hash salt")


def test_list_options_take_commas_and_spaces():
    # one splitter for every list: a value, or a repeated option's values (bench, inspect, tradeoff)
    assert split_tokens(["dense causal,document", "strided"]) == \
        ["dense", "causal", "document", "strided"]  # was ["dense causal", "document", "strided"]
    assert split_tokens(" a, b\tc ") == ["a", "b", "c"]
    assert split_tokens(None) is None and split_tokens("") is None and split_tokens([]) is None
    assert split_tokens(" , ") == [] and split_tokens(["", ","]) == []
