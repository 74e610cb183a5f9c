"""The prompt experiment (issue 21) on a tiny random Llama: the batched rows equal the one-row
decode loop, the fixed answer is the same tokens everywhere, the controls are what they claim,
the statistics find a known effect and no effect where there is none, and the CLI refuses bad
input in one line with nothing written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.data.prompt_sets import parse_prompt_set
from attnlab.inspect.llm import prompt_experiment as pe
from attnlab.inspect.llm.batch_rows import Row, generate_rows, score_rows
from attnlab.inspect.llm.generation import Sampling, generate_ids
from attnlab.inspect.llm.prompt_design import ExperimentConfig, FixedAnswers, plan_task
from attnlab.inspect.llm.prompt_files import write_outputs
from attnlab.inspect.llm.prompt_report import build_report
from attnlab.inspect.llm.steering import knockout, pasta, per_layer
from attnlab.models import load_model

from .conftest import make_llama

SET = '''
name = "tiny"
[conditions.review]
topic = "Is the animal tired?"
paraphrases = ["Was the animal tired?", "Is the animal too tired?", "Is it a tired animal?"]
controls = ["Is the street wide?", "Did the dog sleep?"]
[conditions.append]
topic = "It was tired."
paraphrases = ["It was too tired.", "The animal was tired.", "It was so tired."]
controls = ["It was wide.", "It was red."]
[lexicons.tired]
role = "topic"
words = ["tired", "asleep", "sleep"]
[lexicons.colour]
role = "negative control"
words = ["red", "green"]
[[tasks]]
id = "a"
task = "The animal didn't cross the street."
code = "the cat sat on the mat"
[[tasks]]
id = "b"
task = "A small dog chased the red ball."
code = "the dog sat on the hat"
[[tasks]]
id = "c"
task = "When Mary and John went to the store."
code = "the rat sat on the boat"
'''
FIXED = FixedAnswers("The animal was tired.", "The animal was wide.")
TINY = dict(tasks=3, samples=2, max_new_tokens=4, bands=2, draws=2, steer_heads=2, n_boot=200, fixed=FIXED)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama256"), seed=3, max_position_embeddings=256)


@pytest.fixture(scope="module")
def lm(llama_dir):
    return load_model(llama_dir)


@pytest.fixture(scope="module")
def ps():
    return parse_prompt_set(SET, "tiny.toml")


@pytest.fixture(scope="module")
def result(lm, ps):
    return pe.run_experiment(lm, ps, ExperimentConfig(**TINY))


def _head_knockout(positions, heads):
    idx, hs = torch.tensor(positions), torch.tensor(heads)

    def mod(score, b, h, q, kv):
        return score.masked_fill(torch.isin(kv, idx) & torch.isin(h, hs), float("-inf"))

    return mod


def test_batched_rows_equal_the_one_row_decode_loop(lm):
    base = lm.encode("the cat sat on the mat").ids
    longer = lm.encode("the cat sat on the mat and the dog sat on the hat").ids
    sampled = Sampling(greedy=False, temperature=0.9, seed=5)
    rows = [Row(tuple(base)), Row(tuple(longer), sampling=sampled), Row(tuple(longer), knock=(7, 8, 9)),
            Row(tuple(longer), knock=(1, 2), layers=(1,)),  # inside the shared prefix, one layer
            Row(tuple(longer), knock=(8, 9), heads=((0, 1), (1, 3))),
            Row(tuple(longer), steer=(8, 9), heads=((0, 1), (1, 3)), alpha=0.01),  # PASTA in two heads
            Row(tuple(longer), steer=(1, 2), layers=(1,), alpha=0.1)]  # PASTA inside the prefix
    everyone = range(lm.num_heads)
    refs = [None, None, per_layer(knockout([7, 8, 9]), range(2)), {1: knockout([1, 2])},
            {0: _head_knockout([8, 9], [1]), 1: _head_knockout([8, 9], [3])},
            {0: pasta([8, 9], [1], 0.01), 1: pasta([8, 9], [3], 0.01)}, {1: pasta([1, 2], everyone, 0.1)}]
    got = generate_rows(lm, rows, max_new_tokens=6, stop_ids=set())
    for row, mods, (ids, why) in zip(rows, refs, got, strict=True):
        want, _, _ = generate_ids(lm, list(row.ids), max_new_tokens=6, sampling=row.sampling,
                                  score_mods=mods, stop_ids=set())
        assert ids == want and why == "max_new_tokens"
    answer = tuple(lm.encode(" was tired").ids)
    scores = score_rows(lm, [replace(r, answer=answer) for r in rows])
    for row, mods, s in zip(rows, refs, scores, strict=True):
        with torch.no_grad():
            lp = lm.model(torch.tensor([list(row.ids) + list(answer)]), score_mods=mods).logits[0]
        lp = lp.double().log_softmax(-1)
        want = [float(lp[len(row.ids) - 1 + t, a]) for t, a in enumerate(answer)]
        np.testing.assert_allclose(s, want, atol=1e-4)


def test_rows_refuse_what_cannot_be_laid_out(lm):
    with pytest.raises(ValueError, match="knockout positions in 1"):
        generate_rows(lm, [Row((5, 6, 7), knock=(0,))], max_new_tokens=2)
    apart = generate_rows(lm, [Row((5, 6)), Row((7, 6))], max_new_tokens=2, stop_ids=set())  # no prefix
    one = [generate_rows(lm, [Row(r)], max_new_tokens=2, stop_ids=set())[0] for r in ((5, 6), (7, 6))]
    assert apart == one
    with pytest.raises(ValueError, match="room for 300 new tokens"):
        generate_rows(lm, [Row((5, 6))], max_new_tokens=300)


def test_fixed_answer_is_the_same_tokens_under_every_condition_and_intervention(lm, ps, monkeypatch):
    seen: list[tuple[int, ...]] = []
    real = pe.score_rows

    def spy(lm_, rows, **kw):
        seen.extend(r.answer for r in rows)
        return real(lm_, rows, **kw)

    monkeypatch.setattr(pe, "score_rows", spy)
    res = pe.run_experiment(lm, ps, ExperimentConfig(**TINY | {"tasks": 2, "dla": False}))
    ans = {tuple(res.fixed["topic"]["ids"]), tuple(res.fixed["neutral"]["ids"])}
    assert set(seen) == ans
    n_arms = len(res.tasks[0].fixed)
    assert len(seen) == 2 * n_arms * 2  # two answers per arm, two tasks
    for t in res.tasks:
        assert {len(f["topic"]) for f in t.fixed.values()} == {len(res.fixed["topic"]["ids"])}


def test_matched_knockouts_are_other_tokens_of_the_task_same_count_seeded(lm, ps, result):
    for t in result.tasks:
        assert len(t.random) == 2 and t.random[0] != t.random[1]
        for draw in t.random:
            assert len(draw) == len(t.added) and not set(draw) & set(t.added)
    again = pe.run_experiment(lm, ps, ExperimentConfig(**TINY | {"tasks": 2, "dla": False}))
    assert [t.random for t in again.tasks] == [t.random for t in result.tasks[:2]]
    # the topic condition's added words are the question at the end of the message
    plan_ids = lm.encode(result.conditions["topic"]).ids
    assert len(result.tasks[0].added) >= len(plan_ids) - 1
    # heads for the head knockout were ranked on the other tasks; the random heads avoid them
    for t in result.tasks:
        assert len(t.heads) == 2 and not set(t.heads) & set(t.random_heads)


def _synthetic(result, effect: bool, seed: int = 0, boosted: tuple[str, ...] = ("topic",)):
    """The result's design with the measures replaced: known effect (the topic arm mentions the
    topic and prefers the topic answer) or none (every arm drawn from the same distribution)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for t in [replace(t, id=f"{t.id}{k}") for k in range(8) for t in result.tasks]:  # 24 tasks
        mentions = {lex: {} for lex in t.mentions}
        fixed = {}
        for arm in t.answers:
            hit = rng.random(len(t.answers[arm])) < (0.9 if effect and arm in boosted else 0.2)
            for lex in t.mentions:
                mentions[lex][arm] = [["sleep"] if h and lex == "tired" else [] for h in hit]
        for arm in t.fixed:
            boost = 1.0 if effect and arm in boosted else 0.0
            n = len(t.fixed[arm]["topic"])
            fixed[arm] = {"topic": list(rng.normal(-3 + boost, 0.3, n)),
                          "neutral": list(rng.normal(-3, 0.3, n))}
        tasks.append(replace(t, mentions=mentions, fixed=fixed, copyable={"tired": ["tired"], "colour": []}))
    return replace(result, tasks=tasks)


def test_statistics_find_a_known_effect_and_no_effect_where_there_is_none(result):
    rep = build_report(_synthetic(result, effect=True))
    status = {h.key: h.verdict.status for h in rep.headlines}
    assert status["sampled: topic vs controls"] == "shown"
    assert status["fixed answer: topic vs controls"] == "shown"
    assert status["fixed answer: controls"] == "not shown"
    rep = build_report(_synthetic(result, effect=False, seed=1))
    status = {h.key: h.verdict.status for h in rep.headlines}
    assert status["sampled: topic vs controls"] == "not shown"
    assert status["fixed answer: topic vs controls"] == "not shown"
    e = next(h.effect for h in rep.headlines if h.key == "fixed answer: topic vs controls")
    assert e.low <= 0 <= e.high and e.n_prompts == 24 and e.family_size == 5


def test_interventions_run_on_sampled_answers_and_pasta_has_its_controls(result):
    t = result.tasks[0]
    bands = [f"{pe.KNOCK} (layers 0-0)", f"{pe.KNOCK} (layers 1-1)"]
    steered = [pe.HEADS, pe.RANDOM_HEADS, pe.PASTA, pe.RANDOM_PASTA]
    assert set(bands + steered + [pe.KNOCK, pe.RANDOM]) <= set(t.answers)
    assert set(steered + bands) <= set(t.fixed)
    assert all(len(t.answers[a]) == 1 + TINY["samples"] for a in bands + steered)
    rep = build_report(result)
    sampled = next(x for x in rep.tables if x.title.startswith("Interventions on sampled"))
    assert {r[0] for r in sampled.rows} == {*bands, pe.KNOCK, pe.RANDOM, pe.HEADS, pe.RANDOM_HEADS}
    pasta = next(x for x in rep.tables if x.title.startswith("PASTA"))
    want = [f"{pe.PASTA} (fixed answer)", f"{pe.RANDOM_PASTA} (fixed answer)",
            "top vs random heads (fixed answer)"]
    assert [r[0] for r in pasta.rows][:3] == want
    # PASTA in the top heads raising the topic, random heads not: the control comparison says so
    rep = build_report(_synthetic(result, True, 2, (pe.PASTA,)))
    status = {h.key: h.verdict.status for h in rep.headlines}
    assert status["PASTA: top vs random heads (fixed answer)"] == "shown"
    assert status["PASTA: top vs random heads (sampled)"] == "shown"
    assert status[f"PASTA: {pe.RANDOM_PASTA} (fixed answer)"] == "not shown"
    status = {h.key: h.verdict.status for h in build_report(_synthetic(result, False, 3)).headlines}
    assert status["PASTA: top vs random heads (fixed answer)"] == "not shown"


def test_one_report_three_renderings(result):
    rep = build_report(result)
    md, d = rep.markdown(), rep.to_dict()
    assert all(f"## {t.title}" in md for t in rep.tables)
    assert [t["title"] for t in d["tables"]] == [t.title for t in rep.tables]
    assert json.loads(json.dumps(d))["summary"] == rep.summary
    assert all(("interval" in s) for s in rep.summary)
    heads = next(t for t in rep.tables if t.title.startswith("Heads"))
    assert len(heads.rows) == min(10, 2 * 4)
    assert rep.panels and all(len(p["labels"]) == len(p["lows"]) for p in rep.panels)


def _cli(args, tmp_path):
    return CliRunner().invoke(app, ["prompt-experiment", *args])


def test_cli_writes_the_three_files_atomically(llama_dir, tmp_path):
    sets = tmp_path / "tiny.toml"
    sets.write_text(SET)
    out = tmp_path / "out"
    args = ["--model", str(llama_dir), "--prompts", str(sets), "--samples", "2", "--max-new-tokens", "3",
            "--tasks", "3", "--fixed-answer", FIXED.topic, "--neutral-answer", FIXED.neutral,
            "--out", str(out)]
    r = _cli([*args, "--flow", "append", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    want = ["effects.png", "result.json", "result.md", "tokens.png"]
    assert sorted(Path(f).name for f in d["files"]) == want
    assert json.loads((out / "result.json").read_text())["result"]["config"]["flow"] == "append"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.toml"]  # no temporary folder left


def test_cli_error_after_the_run_leaves_no_folder(llama_dir, tmp_path, monkeypatch):
    import attnlab.inspect.llm.prompt_report as pr

    def boom(res):
        raise ValueError("report: expected nothing, got a test failure")

    monkeypatch.setattr(pr, "build_report", boom)
    sets = tmp_path / "tiny.toml"
    sets.write_text(SET)
    r = _cli(["--model", str(llama_dir), "--prompts", str(sets), "--samples", "1", "--max-new-tokens", "2",
              "--fixed-answer", FIXED.topic, "--neutral-answer", FIXED.neutral, "--out", str(tmp_path / "o")],
             tmp_path)
    assert r.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


@pytest.mark.parametrize("args, message", [
    (["--samples", "0"], "--samples: expected an integer >= 1, got 0"),
    (["--seed", "x"], "--seed: expected a valid integer, got 'x'"),
    (["--flow", "sideways"], "--flow: expected one of ['review', 'append']"),
    (["--temperature", "0"], "--temperature: expected a number > 0"),
    (["--code", "BIN"], "--code: expected a text file of code, got a binary file"),
    (["--code", "MISSING"], "--code: expected a text file of code"),
    (["--prompts", "EMPTY"], "expected a prompt set (TOML), got an empty file"),
    (["--prompts", "BROKEN"], "BROKEN.toml:2: expected valid TOML"),
    (["--max-new-tokens", "250"], "to leave room for 250 answer tokens"),
    (["--fixed-answer", "x"], "--fixed-answer: expected it together with --neutral-answer"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(llama_dir, tmp_path, args, message):
    files = {"BIN": tmp_path / "code.py", "MISSING": tmp_path / "nope.py", "EMPTY": tmp_path / "e.toml",
             "BROKEN": tmp_path / "BROKEN.toml"}
    files["BIN"].write_bytes(b"\x00\x01binary")
    files["EMPTY"].write_text("")
    files["BROKEN"].write_text('name = "x"\n[[tasks]\n')
    args = [str(files[a]) if a in files else a for a in args]
    if "--prompts" not in args:
        sets = tmp_path / "tiny.toml"
        sets.write_text(SET)
        args += ["--prompts", str(sets)]
    if "--fixed-answer" not in args:
        args += ["--fixed-answer", FIXED.topic, "--neutral-answer", FIXED.neutral]
    out = tmp_path / "out"
    r = _cli([*args, "--model", str(llama_dir), "--out", str(out), "--json"], tmp_path)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in json.loads(lines[0])["error"], r.output
    assert not out.exists()


@pytest.mark.slow
def test_quick_experiment_on_smollm2(tmp_path):
    from attnlab.data.prompt_sets import builtin_prompt_set
    from attnlab.models.gguf_file import embedded_llm_path

    try:
        embedded_llm_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    smol = load_model("smollm2")
    cfg = ExperimentConfig.quick(tasks=2, max_new_tokens=6, n_boot=200)
    res = pe.run_experiment(smol, builtin_prompt_set(), cfg)
    rep = build_report(res)
    assert res.fixed["topic"]["labels"][res.fixed["split"]] == " vulnerable"
    assert {"topic", "control-1", "base", pe.KNOCK} <= set(res.tasks[0].answers)
    assert "secure" in res.tasks[0].copyable["security"]  # the topic question's own word is excluded
    assert any(h.key == "fixed answer: topic vs controls" for h in rep.headlines)


def test_step_one_generates_the_code_reviewed(lm, ps):
    res = pe.run_experiment(lm, ps, ExperimentConfig(**TINY | {"tasks": 2, "dla": False}),
                            generate_code_tokens=6)
    assert res.code_source == "generated"
    shipped = {t.id: t.code for t in ps.tasks}
    assert all(t.code and t.code != shipped[t.id] for t in res.tasks)


def test_one_code_file_uses_its_samples_as_units(llama_dir, tmp_path):
    code = tmp_path / "handler.py"
    code.write_text("the cat sat on the mat\n")
    sets = tmp_path / "tiny.toml"
    sets.write_text(SET)
    r = _cli(["--model", str(llama_dir), "--prompts", str(sets), "--code", str(code), "--samples", "3",
              "--max-new-tokens", "3", "--fixed-answer", FIXED.topic, "--neutral-answer", FIXED.neutral,
              "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert [t["id"] for t in d["result"]["tasks"]] == ["handler"]
    assert d["result"]["code_source"] == "handler.py"
    sampled = next(h for h in d["headlines"] if h["key"] == "sampled: topic vs controls")
    assert sampled["verdict"]["effect"]["n_prompts"] == 3  # the 3 samples are the units
    assert not any(h["key"].startswith("fixed answer") for h in d["headlines"])  # one value: no interval


def test_head_sweep_knocks_each_head_alone_and_matches_one_row_by_hand(lm, ps, tmp_path):
    cfg = ExperimentConfig(**TINY | {"tasks": 2, "head_sweep": True})
    res = pe.run_experiment(lm, ps, cfg)
    L, H = lm.num_layers, lm.num_heads
    t, plan = res.tasks[1], plan_task(lm, ps.tasks[1], pe.conditions(ps, cfg), cfg, ps.lexicons, 8)
    assert np.asarray(t.sweep).shape == (L, H)
    # one cell by hand: the head's knockout as a score_mod on the plain forward
    split, ids_t, ids_n = res.fixed["split"], res.fixed["topic"]["ids"], res.fixed["neutral"]["ids"]
    x = torch.tensor([plan.ids["topic"] + ids_t[:split]])
    with torch.no_grad():
        base = lm.model(x).logits[0, -1].double()
        knocked = lm.model(x, score_mods={1: _head_knockout(t.added, [H - 1])}).logits[0, -1].double()
    want = float((knocked[ids_t[split]] - knocked[ids_n[split]]) - (base[ids_t[split]] - base[ids_n[split]]))
    assert abs(t.sweep[1][H - 1] - want) < 1e-4
    rep = build_report(res)
    table = next(x for x in rep.tables if x.title.startswith("Which heads carry it"))
    assert len(table.rows) == min(10, L * H) and np.asarray(rep.sweep).shape == (L, H)
    files = write_outputs(tmp_path / "out", rep)
    assert "heads.png" in {Path(f).name for f in files}


def test_report_rerenders_a_saved_result_and_out_keeps_other_files(llama_dir, tmp_path, result):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("mine")
    (out / "heads.png").write_bytes(b"stale: from an earlier run with --head-sweep")
    write_outputs(out, build_report(result))
    assert (out / "README.md").read_text() == "mine" and not (out / "heads.png").exists()
    again = tmp_path / "again"
    args = ["prompt-experiment", "--report", str(out / "result.json"), "--out", str(again)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (again / "result.md").read_text() == (out / "result.md").read_text()
    bad = tmp_path / "bad.json"
    for text, message in (("{", "which is not JSON"), ('{"result": {"config": {}}}', "does not fit it")):
        bad.write_text(text)
        r = CliRunner().invoke(app, ["prompt-experiment", "--report", str(bad)])
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1
