"""The CLI: train / translate / evaluate / experiment, and clear errors that lose nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

TINY = ["train", "--preset", "tiny", "--json"]


def _invoke(s2s, *args: str):
    return CliRunner().invoke(s2s.cli_app(), list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, s2s):
    """One tiny model (luong-local-p) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("s2s") / "model"
    res = _invoke(s2s, *TINY, "--set", "model.attention=luong-local-p", "--out", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["steps"] == 40 and report["tokens_per_second"] > 0
    assert {"bleu", "chrf", "exact", "n"} <= set(report["test"])
    return out


def test_translate_json_has_alignment(trained, s2s):
    res = _invoke(s2s, "translate", "--model", str(trained), "forty-two", "--json")
    assert res.exit_code == 0, res.output
    t = json.loads(res.stdout)
    assert t["source_tokens"] == ["forty", "-", "two"] and t["unknown"] == []
    assert len(t["alignment"]) == len(t["target_labels"]) == len(t["centres"])
    assert all(len(row) == 3 for row in t["alignment"])


def test_translate_text_png_html_and_unknown_words(trained, s2s, tmp_path):
    png, html = tmp_path / "a.png", tmp_path / "a.html"
    res = _invoke(s2s, "translate", "--model", str(trained), "seven zebras", "--beam", "3",
                  "--png", str(png), "--html", str(html))
    assert res.exit_code == 0, res.output
    assert "unknown source tokens read as <unk>: ['zebras']" in res.output
    assert "alignment (luong-local-p)" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in html.read_text(encoding="utf-8").lower()


@pytest.mark.parametrize("text", ["", "   "])
def test_translate_empty_text_is_a_clear_error(trained, s2s, text):
    res = _invoke(s2s, "translate", "--model", str(trained), text)
    assert res.exit_code == 2
    assert "TEXT: expected a non-empty sentence" in res.output


@pytest.mark.parametrize(("args", "says"), [
    (["--beam", "1000000000"], "--beam: expected at most the target vocabulary size"),  # was: allocate
    (["--alpha", "nan"], "--alpha: expected a finite number >= 0, got nan"),  # was: silent nan ranking
    (["--alpha", "-1"], "--alpha: expected a finite number >= 0, got -1"),
])
def test_translate_and_evaluate_refuse_bad_search_settings_by_option(trained, s2s, args, says):
    res = _invoke(s2s, "translate", "--model", str(trained), "one", *args, "--beam", "2") \
        if args[0] == "--alpha" else _invoke(s2s, "translate", "--model", str(trained), "one", *args)
    assert res.exit_code == 2 and says in res.output, res.output
    if args[0] == "--beam":
        res = _invoke(s2s, "evaluate", "--model", str(trained), *args)
        assert res.exit_code == 2 and says in res.output, res.output


def test_evaluate(trained, s2s):
    res = _invoke(s2s, "evaluate", "--model", str(trained), "--split", "valid", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["split"] == "valid" and d["n"] == 20 and d["by_length"][0]["n"] == 20
    res = _invoke(s2s, "evaluate", "--model", str(trained), "--split", "dev")
    assert res.exit_code == 2 and "--split: expected one of train, valid, test" in res.output


def test_bad_model_folders(trained, s2s, tmp_path):
    res = _invoke(s2s, "translate", "--model", str(tmp_path / "nothing"), "one")
    assert res.exit_code == 2 and "no such folder" in res.output
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    meta = json.loads((old / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({**meta, "format": "attnlab.seq2seq/0"}))
    res = _invoke(s2s, "translate", "--model", str(old), "one", "--json")
    assert res.exit_code == 2 and "another attnlab version" in json.loads(res.stdout)["error"]
    (old / "model.json").write_text(json.dumps(meta))
    (old / "src_vocab.json").unlink()
    res = _invoke(s2s, "translate", "--model", str(old), "one")
    assert res.exit_code == 2 and "missing src_vocab.json" in res.output


def test_training_errors_lose_nothing(trained, s2s, tmp_path):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    res = _invoke(s2s, *TINY, "--out", str(trained))  # no --resume: refuse, touch nothing
    assert res.exit_code == 2 and "already holds a run" in res.stdout
    res = _invoke(s2s, "train", "--resume", "--out", str(trained), "--set", "model.hidden=64")
    assert res.exit_code == 2 and "a resumed run keeps its model and data" in res.output
    res = _invoke(s2s, *TINY, "--set", "model.attention=luong-local-p", "--set",
                  "model.hidden=64", "--resume", "--out", str(trained))
    assert res.exit_code == 2 and "differs from the saved run in ['model.hidden']" in res.stdout
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
    fresh = tmp_path / "fresh"
    res = _invoke(s2s, *TINY, "--set", "train.lrate=0.1", "--out", str(fresh))
    assert res.exit_code == 2 and "unknown config key 'train.lrate'" in res.stdout
    assert not fresh.exists()
    res = _invoke(s2s, "train", "--resume", "--out", str(fresh))
    assert res.exit_code == 2 and "holds no run" in res.output


def test_resume_of_a_finished_run_only_rescores(trained, s2s):
    res = _invoke(s2s, "train", "--resume", "--out", str(trained), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 40


def test_experiment_bottleneck_quick(s2s, tmp_path):
    out = tmp_path / "bn"
    res = _invoke(s2s, "experiment", "bottleneck", "--quick", "--jobs", "1", "--out", str(out),
                  "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [s["attention"] for s in d["summary"]] == ["none", "bahdanau", "luong-general",
                                                      "luong-local-p"]
    assert len(d["rows"]) == 12  # 4 models x 3 length buckets
    for name in ("bleu_vs_length.png", "table.csv", "table.md", "settings.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "settings.json").read_text())["quick"] is True
    assert (out / "table.csv").read_text().startswith("attention,bucket,n,bleu,chrf,exact")
