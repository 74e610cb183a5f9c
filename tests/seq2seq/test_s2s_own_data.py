"""Training on your own pair file through the CLI (issue 16): every documented way to set the
data (--set in either order, a TOML file, a file + --set) trains, and the run it makes can be
resumed, evaluated and translated (the saved config is read back as a whole, not key by key);
translate --file; data errors are one line naming file and line, with or without --json."""

from __future__ import annotations

import json
import shutil

import pytest
from num2words import num2words
from typer.testing import CliRunner

TINY = ["train", "--preset", "tiny", "--json"]
COLS = ["--set", "data.src_col=1", "--set", "data.tgt_col=2"]  # English -> Spanish


def _invoke(s2s, *args: str, stdin: str | bytes | None = None):
    return CliRunner().invoke(s2s.cli_app(), list(args), input=stdin)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """An Anki-style file: English<TAB>Spanish<TAB>attribution, 300 distinct pairs."""
    f = tmp_path_factory.mktemp("own") / "pairs.tsv"
    f.write_text("".join(f"{num2words(n)}\t{num2words(n, lang='es')}\tnum2words #{n}\n"
                         for n in range(300)), encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def path_first(pairs, s2s):
    """Trained with data.path set before data.corpus: the order that already trained before
    the fix, whose run then could not be reloaded."""
    out = pairs.parent / "path-first"
    res = _invoke(s2s, *TINY, "--set", f"data.path={pairs}", "--set", "data.corpus=tsv", *COLS,
                  "--out", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["data"]
    assert report == {"corpus": "tsv", "files": [str(pairs)], "read": 300, "blank": 0,
                      "too_long": 0, "duplicates": 0, "held_out": 0, "over_size": 0,
                      "train": 260, "valid": 20, "test": 20}
    return out


def test_corpus_first_trains_the_same_run(path_first, pairs, s2s, tmp_path):
    out = tmp_path / "corpus-first"
    res = _invoke(s2s, "train", "--preset", "tiny", "--set", "data.corpus=tsv", "--set",
                  f"data.path={pairs}", *COLS, "--set", "train.max_steps=2", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"data: 300 pairs read from {pairs}; dropped none; train 260, valid 20, test 20" \
        in res.output
    for name in ("train.tsv", "valid.tsv", "test.tsv"):
        assert (out / "data" / name).read_bytes() == (path_first / "data" / name).read_bytes()
    a, b = (json.loads((d / "run.json").read_text())["config"] for d in (out, path_first))
    b["train"]["max_steps"] = 2
    assert a == b


def test_toml_data_table_and_file_plus_set(pairs, s2s, tmp_path):
    whole = tmp_path / "whole.toml"
    whole.write_text(f'preset = "tiny"\n[data]\ncorpus = "tsv"\npath = "{pairs}"\nsrc_col = 1\n'
                     f'tgt_col = 2\n[train]\nmax_steps = 2\n')
    res = _invoke(s2s, "train", str(whole), "--json", "--out", str(tmp_path / "a"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["train"] == 260
    half = tmp_path / "half.toml"
    half.write_text('preset = "tiny"\n[data]\ncorpus = "tsv"\n')
    res = _invoke(s2s, "train", str(half), "--set", f"data.path={pairs}", "--set",
                  "train.max_steps=2", "--json", "--out", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    res = _invoke(s2s, "train", str(half), "--json", "--out", str(tmp_path / "c"))
    assert res.exit_code == 2 and not (tmp_path / "c").exists()
    assert json.loads(res.stdout) == {"error": f"{half}: data.path: expected a TSV file when "
                                               f"data.corpus = 'tsv', got ''"}


def test_translate_and_evaluate_a_file_corpus_run(path_first, pairs, s2s, tmp_path):
    res = _invoke(s2s, "translate", "--model", str(path_first), "forty-two", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["source_tokens"] == ["forty", "-", "two"]
    res = _invoke(s2s, "evaluate", "--model", str(path_first), "--split", "test", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 20
    # a FILE.tsv is read with the run's columns (English in column 1 is the source here)
    res = _invoke(s2s, "evaluate", "--model", str(path_first), "--split", str(pairs), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 300


def test_resume_a_file_corpus_run_and_give_it_more_steps(path_first, s2s, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(path_first, run)
    res = _invoke(s2s, "train", "--resume", "--out", str(run), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 40  # finished: rescored only
    res = _invoke(s2s, "train", "--resume", "--out", str(run), "--set", "train.max_steps=50")
    assert res.exit_code == 0, res.output
    assert "continuing: the run had stopped (max_steps)" in res.output
    assert json.loads((run / "results.json").read_text())["steps"] == 50
    assert json.loads((run / "results.json").read_text())["data"]["train"] == 260


def test_translate_file_one_line_per_line(path_first, s2s, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("forty-two\n\nseven zebras\nninety-nine\n", encoding="utf-8")
    res = _invoke(s2s, "translate", "--model", str(path_first), "--file", str(f))
    assert res.exit_code == 0, res.output
    out = res.stdout.split("\n")
    assert len(out) == 5 and out[1] == "" and out[4] == ""  # 4 lines, the blank one kept
    one = [json.loads(_invoke(s2s, "translate", "--model", str(path_first), s, "--json").stdout)
           ["translation"] for s in ("forty-two", "seven zebras", "ninety-nine")]
    assert [out[0], out[2], out[3]] == one  # batched: the same as one at a time
    assert "unknown source tokens read as <unk> on 1 of 4 lines: line 3: ['zebras']" in res.output
    res = _invoke(s2s, "translate", "--model", str(path_first), "--file", "-", "--json",
                  "--beam", "2", stdin="forty-two\n\n")
    assert res.exit_code == 0, res.output
    items = json.loads(res.stdout)
    assert [i["line"] for i in items] == [1, 2] and items[1] == {
        "line": 2, "source": "", "translation": "", "blank": True}
    assert items[0]["source_tokens"] == ["forty", "-", "two"] and items[0]["alignment"]


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["seven", "--file", "-"], "one\n", "TEXT / --file: expected a sentence or --file FILE, got both"),
    ([], None, "TEXT / --file: expected a sentence or --file FILE, got neither"),
    (["--file", "-", "--png", "a.png"], "one\n",
     "--png: draws one sentence's attention; expected TEXT, got --file"),
    (["--file", "-"], "", "--file: expected one sentence per line in <stdin>, got an empty file"),
    (["--file", "-"], b"one\nni\xf1o\n", "<stdin>:2: expected UTF-8 text, got undecodable bytes"),
])
def test_translate_file_errors(path_first, s2s, args, stdin, message):
    res = _invoke(s2s, "translate", "--model", str(path_first), *args, "--json", stdin=stdin)
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"].startswith(message)


def test_bad_pair_files_are_one_line_errors(pairs, s2s, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text(pairs.read_text(encoding="utf-8") + "ragged\tline\n", encoding="utf-8")
    out = tmp_path / "x"
    res = _invoke(s2s, *TINY, "--set", "data.corpus=tsv", "--set", f"data.path={bad}",
                  "--out", str(out))
    assert res.exit_code == 2 and not out.exists()
    assert json.loads(res.stdout) == {"error": f"{bad}:301: expected 3 tab-separated fields like "
                                               f"line 1, got 2 field(s): 'ragged\\tline' (a tab "
                                               f"inside a sentence, or a missing field?)"}
    en, es = tmp_path / "a.en", tmp_path / "a.es"
    en.write_text("one\ntwo\n", encoding="utf-8")
    es.write_text("uno\n", encoding="utf-8")
    res = _invoke(s2s, "train", "--preset", "tiny", "--set", "data.corpus=text", "--set",
                  f"data.src_path={en}", "--set", f"data.tgt_path={es}", "--out", str(out))
    assert res.exit_code == 2 and not out.exists()
    assert "error: data.src_path / data.tgt_path: expected files with the same number of lines" \
        in res.output and "Traceback" not in res.output
    res = _invoke(s2s, "train", "--preset", "tiny", "--set", f"data.path={pairs}", "--out",
                  str(out))
    assert res.exit_code == 2 and "(set data.corpus=tsv)" in res.output
