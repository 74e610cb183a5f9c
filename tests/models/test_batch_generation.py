"""Batched generation with capture (issue 23, item 3) on a tiny random Llama: every row equals
the one-row decode loop, its recorded attention included, whatever its length or when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnlab.inspect.llm import batch_generation as bg
from attnlab.inspect.llm.batch_capture import BatchRecorder
from attnlab.inspect.llm.batch_rows import Row, generate_rows
from attnlab.inspect.llm.generation import Sampling, generate_ids, generate_text
from attnlab.inspect.recorder import AttentionRecorder
from attnlab.models import load_model

from .conftest import make_llama

PROMPTS = ["the cat sat on the mat", "the cat sat on the mat and the dog sat on the hat", "a dog"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> object:
    path: Path = make_llama(tmp_path_factory.mktemp("llama-batch"), seed=5, max_position_embeddings=256)
    return load_model(path)


def _same_rows(a: AttentionRecorder, b: AttentionRecorder) -> None:
    assert len(a) == len(b) and a.layers == b.layers and a.heads == b.heads
    for p in range(len(a)):
        torch.testing.assert_close(a.row(p).float(), b.row(p).float(), atol=2e-3, rtol=0)


def test_batch_equals_one_row_generation_with_capture(lm):
    got = bg.generate_batch(lm, PROMPTS, chat=False, max_new_tokens=5, capture=True, layers=[0, 1])
    assert len(got.generations) == 3 and got.timings["new_tokens"] == 15
    for prompt, g in zip(PROMPTS, got.generations, strict=True):
        want = generate_text(lm, prompt, chat=False, max_new_tokens=5, capture=True, layers=[0, 1])
        assert g.new_ids == want.new_ids and g.stop_reason == want.stop_reason and g.text == want.text
        assert g.prompt.ids == want.prompt.ids
        assert g.recorder is not None and want.recorder is not None
        _same_rows(g.recorder, want.recorder)
        assert len(g.recorder) == len(g.prompt) + len(g.new_ids) - 1  # the last token is never fed


def test_samples_are_seeded_rows_of_one_prompt(lm):
    s = Sampling(greedy=False, temperature=1.3, seed=11)
    got = bg.generate_batch(lm, [PROMPTS[0]], samples=3, chat=False, max_new_tokens=6, sampling=s)
    answers = [g.new_ids for g in got.generations]
    for k, ids in enumerate(answers):
        want = generate_text(lm, PROMPTS[0], chat=False, max_new_tokens=6,
                             sampling=Sampling(greedy=False, temperature=1.3, seed=11 + k))
        assert ids == want.new_ids
    assert len({tuple(a) for a in answers}) > 1  # seeded apart, not one answer three times


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_samples_of_one_prompt_record_what_the_one_row_loop_records(lm, dtype):
    # every row fed at every step and none padded: each step is recorded for the whole batch at
    # once, every row a view of one buffer (in float32 too, where no conversion copies)
    ids = tuple(lm.encode(PROMPTS[1]).ids)
    plans = bg.row_samplings(Sampling(greedy=False, temperature=1.3, seed=3), 3)
    rec = BatchRecorder(lm.model, 3, heads=[1, 3], dtype=dtype)
    try:
        got = generate_rows(lm, [Row(ids, sampling=s) for s in plans], max_new_tokens=6, stop_ids=set(),
                            recorder=rec)
    finally:
        rec.remove()
    assert len({tuple(new) for new, _ in got}) > 1  # rows that differ, recorded apart
    for (new, _), s, batched in zip(got, plans, rec.rows, strict=True):
        one = AttentionRecorder(lm.model, heads=[1, 3], dtype=dtype)
        try:
            want, _, _ = generate_ids(lm, list(ids), max_new_tokens=6, stop_ids=set(), sampling=s,
                                      recorder=one)
        finally:
            one.remove()
        assert new == want and batched.dtype == dtype and batched.packed().dtype == dtype
        _same_rows(batched, one)


def test_a_row_that_stops_early_records_what_the_one_row_loop_records(lm):
    ids = [tuple(lm.encode(p).ids) for p in PROMPTS[:2]]
    free = generate_rows(lm, [Row(i) for i in ids], max_new_tokens=6, stop_ids=set())
    stop = {free[0][0][2]}  # row 0 stops at its third token, row 1 goes on (unless it meets it)
    rec = BatchRecorder(lm.model, 2, heads=[0, 2])
    try:
        got = generate_rows(lm, [Row(i) for i in ids], max_new_tokens=6, stop_ids=stop, recorder=rec)
    finally:
        rec.remove()
    assert got[0] == (free[0][0][:3], "eos")
    for i, (new, _) in zip(ids, got, strict=True):
        one = AttentionRecorder(lm.model, heads=[0, 2])
        try:
            want, _, _ = generate_ids(lm, list(i), max_new_tokens=6, stop_ids=stop, recorder=one)
        finally:
            one.remove()
        assert new == want
        _same_rows(rec.rows[ids.index(i)], one)


def test_prompts_that_share_nothing_are_recorded_per_group(lm):
    rows = [Row((5, 6, 7)), Row((9, 6)), Row((5, 8))]
    rec = BatchRecorder(lm.model, 3)
    try:
        got = generate_rows(lm, rows, max_new_tokens=3, stop_ids=set(), recorder=rec)
    finally:
        rec.remove()
    for r, (row, (new, _)) in enumerate(zip(rows, got, strict=True)):
        one = AttentionRecorder(lm.model)
        try:
            want, _, _ = generate_ids(lm, list(row.ids), max_new_tokens=3, stop_ids=set(), recorder=one)
        finally:
            one.remove()
        assert new == want
        _same_rows(rec.rows[r], one)


def test_bad_batches_are_refused_with_the_argument_named(lm, monkeypatch):
    with pytest.raises(ValueError, match="samples: expected 1 with greedy decoding"):
        bg.generate_batch(lm, PROMPTS, samples=2, chat=False)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        bg.generate_batch(lm, [], chat=False)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        bg.generate_batch(lm, "one string", chat=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="samples: expected a positive int"):
        bg.generate_batch(lm, PROMPTS, samples=0, chat=False)
    monkeypatch.setattr(bg, "MAX_PAD_TOKENS", 2)
    with pytest.raises(ValueError, match="prompts: expected lengths within 2 tokens"):
        bg.generate_batch(lm, PROMPTS, chat=False)


def test_generate_command_batches_prompts_and_samples(tiny_llama):
    import json

    from typer.testing import CliRunner

    from attnlab.cli.main import app

    run = CliRunner().invoke
    base = ["--model", str(tiny_llama), "--raw", "--max-new-tokens", "3", "--json"]
    r = run(app, ["generate", PROMPTS[0], PROMPTS[2], *base, "--layers", "0"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["rows"] == 2 and got["generations"][1]["prompt_index"] == 1
    assert got["generations"][0]["capture"]["layers"] == [0]
    for i, p in enumerate((PROMPTS[0], PROMPTS[2])):
        one = json.loads(run(app, ["generate", p, *base]).stdout)
        assert got["generations"][i]["new_ids"] == one["new_ids"]
    r = run(app, ["generate", PROMPTS[0], *base, "--samples", "3", "--temperature", "1.2", "--seed", "4"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["generations"]
    assert [g["sample"] for g in rows] == [0, 1, 2]
    for s, g in enumerate(rows):  # sample s is the one-row generation with seed 4 + s
        one = json.loads(run(app, ["generate", PROMPTS[0], *base, "--temperature", "1.2",
                                   "--seed", str(4 + s)]).stdout)
        assert g["new_ids"] == one["new_ids"]
    r = run(app, ["generate", PROMPTS[0], *base, "--samples", "2"])
    assert r.exit_code == 2 and "--samples: expected 1 with greedy decoding" in r.stdout
    r = run(app, ["generate", PROMPTS[0], PROMPTS[1], *base, "--png", "x.png"])
    assert r.exit_code == 2 and "--png: expected one PROMPT and --samples 1" in r.stdout


def test_batches_refuse_a_lone_string_and_one_token_prompts(tmp_path):
    from attnlab.inspect.llm.batch_generation import generate_batch
    from attnlab.inspect.llm.generation import Sampling
    from attnlab.inspect.llm.generation_report import batch_report

    lm = load_model(make_llama(tmp_path, seed=5))
    for call in (generate_batch, batch_report):  # a string would be decoded letter by letter
        with pytest.raises(ValueError, match=r"prompts: expected a non-empty list of prompts, got 'hey'"):
            call(lm, "hey", chat=False, max_new_tokens=2)
        with pytest.raises(ValueError, match=r"prompts: expected a non-empty list of prompts, got \[\]"):
            call(lm, [], chat=False, max_new_tokens=2, layers=[0])
    one = lm.tokenizer.decode(lm.encode("cat", name="prompt").ids[:1])
    assert len(lm.encode(one, name="prompt").ids) == 1
    with pytest.raises(ValueError, match=r"prompts\[0\]: expected at least 2 tokens to decode in a batch"):
        generate_batch(lm, [one], samples=2, chat=False, max_new_tokens=2,
                       sampling=Sampling(greedy=False, temperature=1.0, seed=0))


def test_generate_refuses_greedy_samples_before_loading_the_model(tmp_path):
    from typer.testing import CliRunner

    from attnlab.cli.main import app

    missing = str(tmp_path / "no-such-model")  # loading it would fail: the refusal must come first
    r = CliRunner().invoke(app, ["generate", "hi", "--model", missing, "--samples", "3"])
    assert r.exit_code == 2 and "--samples: expected 1 with greedy decoding" in r.output, r.output
    r = CliRunner().invoke(app, ["generate", "hi", "--model", missing, "--samples", "0"])
    assert r.exit_code == 2 and "--samples: expected" in r.output, r.output
