"""CLI hardening (issue 24, item 8): output paths checked before any model loads, long values
never echoed whole, bytes that are not UTF-8 named as such, the option the user typed named,
and a write that fails names its file. Everything here answers in seconds: a model load is a
failure (each command's ``load_lm`` is replaced by one that raises)."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from attnlab.cli import common, llm_cmds, local_global_cmd, model_cmds, prompt_experiment_cmd, streaming_cmd
from attnlab.cli.main import app

runner = CliRunner()


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    def load_lm(*a, **k):
        raise AssertionError("a model was loaded before the output paths were checked")

    for module in (llm_cmds, model_cmds, prompt_experiment_cmd, streaming_cmd, local_global_cmd):
        monkeypatch.setattr(module, "load_lm", load_lm)
    (tmp_path / "existing.txt").write_text("hi")
    (tmp_path / "pics.png").mkdir()
    monkeypatch.chdir(tmp_path)


def _error(args: list[str]) -> str:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 2, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])["error"]


UNDER_A_FILE = "expected a path through folders, got '{}', where 'existing.txt' is a file"
CASES = [
    (["heads", "--png", "h.jpg"], "--png: expected a file name ending in .png or .svg, got 'h.jpg'"),
    (["inspect", "a cat", "--html", "existing.txt/g.html"],
     "--html: " + UNDER_A_FILE.format("existing.txt/g.html")),
    (["inspect", "a cat", "--png", "pics.png"], "--png: expected a file name, got the folder 'pics.png'"),
    (["inspect", "a cat", "--export", "w.csv"],
     "--export: expected a file name ending in .json, got 'w.csv'"),
    (["compare", "a cat", "a dog", "--png", "existing.txt/a/b.svg"],
     "--png: " + UNDER_A_FILE.format("existing.txt/a/b.svg")),
    (["generate", "hi", "--html", "g.txt"],
     "--html: expected a file name ending in .html or .htm, got 'g.txt'"),
    (["prompt-effect", "--out", "existing.txt"], "--out: expected a folder (new or existing), got the file "
                                                 "'existing.txt'"),
    (["prompt-effect", "--png", "existing.txt/s.png"], "--png: " + UNDER_A_FILE.format("existing.txt/s.png")),
    (["prompt-experiment", "--out", "existing.txt/run"], "--out: " + UNDER_A_FILE.format("existing.txt/run")),
    (["streaming", "--png", "s.pdf"], "--png: expected a file name ending in .png or .svg, got 's.pdf'"),
    (["local-global", "--png", "existing.txt/p.png"], "--png: " + UNDER_A_FILE.format("existing.txt/p.png")),
    (["train", "--out", "existing.txt"],
     "--out: expected a folder (new or existing), got the file 'existing.txt'"),
    (["bench", "--out", "existing.txt/b"], "--out: " + UNDER_A_FILE.format("existing.txt/b")),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[:2]) for a, _ in CASES])
def test_output_paths_are_checked_before_any_model_loads(no_model, args, message):
    assert _error(args) == message


def test_a_new_folder_for_an_output_is_not_an_error(tmp_path):
    assert common.check_output(tmp_path / "new" / "deeper" / "g.html", "--html", common.PAGE) is not None
    assert not (tmp_path / "new").exists()  # checked, not made: a failed run leaves nothing behind


@pytest.mark.parametrize(("args", "name"), [
    (["inspect", "a\udcffb"], "TEXT"), (["compare", "a cat", "a\udcfe"], "TEXTS"),
    (["generate", "hi", "--system", "a\udcffb"], "--system"),
    (["generate", "hi", "--system=\udcff"], "--system"),
    (["inspect", "a", "--focus", "\udcff"], "--focus"),
])
def test_bytes_that_are_not_utf8_are_named_as_such(no_model, args, name):
    message = _error(args)
    assert message.startswith(f"{name}: expected UTF-8 text, got the byte 0x")
    assert "TextInputSequence" not in message


def test_a_long_value_is_never_echoed_whole(capsys):
    with pytest.raises(click_exit()), common.user_errors(as_json=True):
        raise ValueError(f"focus: expected a token of the text, got {'x' * 100_000!r}")
    line = json.loads(capsys.readouterr().out)["error"]
    assert line == f"focus: expected a token of the text, got {'x' * 79!r}… (100,000 characters)"
    assert len(common._cut_echoes("y" * 100_000)) < 2100  # echoed unquoted: the line is cut
    assert common.shown(" " * 100_000) == repr(" " * 79) + "… (100,000 characters)"
    path = "d/" * 200 + "f.png"  # a path is shown whole
    assert common._cut_echoes(f"--png: got {path!r}") == f"--png: got {path!r}"


def click_exit() -> type[BaseException]:
    import typer

    return type(typer.Exit())


def test_a_blank_prompt_and_an_empty_template_say_whose_fault_it_is():
    from attnlab.inspect.llm.generation import render_prompt

    with pytest.raises(ValueError) as e:
        render_prompt(None, " " * 100_000)  # type: ignore[arg-type]
    assert str(e.value) == "prompt: expected some text, got only whitespace (100,000 characters)"
    lm = SimpleNamespace(chat_template="{% if messages | length > 9 %}{{ messages }}{% endif %}  ")
    with pytest.raises(ValueError) as e:
        render_prompt(lm, "hi")  # type: ignore[arg-type]
    assert str(e.value).startswith("tokenizer.chat_template: expected the chat template to write the "
                                   "conversation, got only whitespace")


def test_a_failed_write_names_its_file(tmp_path, monkeypatch):
    real = os.fdopen

    class TooLarge:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))  # what write(2) raises: no name

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: TooLarge(real(fd, *a, **k)))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--preset", "tiny", "--out", str(out), "--json"])
    monkeypatch.undo()
    assert res.exit_code == 2, res.output
    message = json.loads(res.stdout.strip().splitlines()[-1])["error"]
    assert message.startswith("[Errno 27] File too large (writing): ") and str(out) in message
    assert message.rsplit("/", 1)[-1].rstrip("'") in {"train.tsv", "dev.tsv", "test.tsv", "report.json"}


def test_a_model_path_that_is_a_folder_or_missing_names_the_option(tmp_path):
    folder = tmp_path / "x.gguf"
    folder.mkdir()
    for path, why in ((folder, "got a folder"), (tmp_path / "nope.gguf", "not found")):
        r = CliRunner().invoke(app, ["generate", "hi", "--model", str(path)])
        assert r.exit_code == 2 and why in r.output
        assert r.output.startswith("error: --model: expected a GGUF file")


def test_the_library_never_echoes_a_long_prompt_whole():
    from attnlab.inspect.llm.prompt_effect import prompt_effect

    for base, add in ((" " * 100_000, "Make it secure."), ("x " * 50_000, "x")):
        with pytest.raises(ValueError) as e:
            prompt_effect(None, base, add)  # refused before the model is touched
        assert len(str(e.value)) < 400 and "(100,000 characters)" in str(e.value)
