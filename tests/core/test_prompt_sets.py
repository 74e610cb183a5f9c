"""The shipped coding-review prompt set is a design (enough varied tasks, length-matched controls,
paraphrases, lexicons), and a user's own prompt file is checked with errors that name the file,
the line, the entry and the reason."""

from __future__ import annotations

import json
import re

import pytest

from attnlab.data.prompt_sets import (
    LENGTH_TOLERANCE,
    builtin_names,
    builtin_prompt_set,
    load_prompt_set,
    parse_prompt_set,
)
from attnlab.data.tsv import DataError


@pytest.fixture(scope="module")
def shipped():
    return builtin_prompt_set()


def test_shipped_set_has_enough_varied_tasks(shipped):
    assert "coding_review" in builtin_names()
    assert len(shipped.tasks) >= 24
    assert len({t.id for t in shipped.tasks}) == len(shipped.tasks)
    for t in shipped.tasks:
        assert t.task.strip() and t.code.strip(), t.id
        assert 8 <= len(t.code.splitlines()) <= 30, t.id
        assert "secur" not in t.code.lower() and "vulnerab" not in t.code.lower(), t.id  # no hints
    languages = {t.language for t in shipped.tasks}
    assert len(languages) >= 5 and sum(t.language == "python" for t in shipped.tasks) > len(shipped.tasks) / 2
    flawed = sum(bool(t.flaws) for t in shipped.tasks)
    assert flawed >= 8 and len(shipped.tasks) - flawed >= 8  # security answers are not forced


@pytest.mark.parametrize("flow", ["review", "append"])
def test_shipped_conditions_are_paraphrased_and_length_matched(shipped, flow):
    c = getattr(shipped, flow)
    assert len(c.paraphrases) >= 3 and len(c.controls) >= 3
    topics = {t.casefold() for t in c.topics}
    for control in c.controls:
        assert control.casefold() not in topics
        assert abs(len(control) - len(c.topic)) <= LENGTH_TOLERANCE * len(c.topic), control
    assert list(c.labelled()) == ["topic", *(f"paraphrase-{i}" for i in range(1, len(c.paraphrases) + 1)),
                                  *(f"control-{i}" for i in range(1, len(c.controls) + 1))]
    assert shipped.review.topic == "How secure is this code?" and shipped.append.topic == "Make it secure."


def test_shipped_lexicons_and_copyable_words(shipped):
    sec, speed = shipped.lexicons["security"], shipped.lexicons["speed"]
    assert sec.role == "topic" and speed.role == "negative control"
    assert not set(sec.words) & set(speed.words)
    assert {"secure", "password", "safe"} <= set(sec.copyable) <= set(sec.words)
    assert speed.copyable == ("fast",)  # only the control "Make it fast." / "How fast is this code?"
    assert sec.found_in("Check the Password_hash; it is SECURE.") == ("secure", "password", "hash")
    assert sec.found_in("insecurely unsafe") == ("unsafe",)
    assert shipped.task("login-form").language == "python"
    with pytest.raises(KeyError, match="task: expected one of"):
        shipped.task("nope")
    json.dumps(shipped.to_dict())


def file_format(ps) -> dict:
    """The shipped set as a user's JSON file."""
    return {"name": ps.name, "description": ps.description,
            "conditions": {f: {"topic": c.topic, "paraphrases": list(c.paraphrases),
                               "controls": list(c.controls)}
                           for f, c in (("review", ps.review), ("append", ps.append))},
            "lexicons": {n: {"role": lx.role, "words": list(lx.words)} for n, lx in ps.lexicons.items()},
            "tasks": [{"id": t.id, "task": t.task, "code": t.code, "language": t.language,
                       "flaws": list(t.flaws)} for t in ps.tasks]}


def test_a_json_file_in_the_same_format_loads_the_same(shipped, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(file_format(shipped), indent=1), encoding="utf-8")
    mine = load_prompt_set(path)
    assert mine.source == str(path)
    assert (mine.tasks, mine.review, mine.append, mine.lexicons) == (
        shipped.tasks, shipped.review, shipped.append, shipped.lexicons)


GOOD = '''name = "mine"

[conditions.review]
topic = "How secure is this code?"
paraphrases = ["Is this code safe?"]
controls = ["What does this code do?"]

[conditions.append]
topic = "Make it secure."
paraphrases = ["Make it safe."]
controls = ["Make it blue."]

[lexicons.security]
role = "topic"
words = ["secure", "safe"]

[[tasks]]
id = "a"
task = "Write a login form."
code = "print(1)"

[[tasks]]
id = "b"
task = "Sort a list."
code = "sorted(x)"
'''


def write(tmp_path, text, name="set.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_small_toml_file_loads(tmp_path):
    ps = load_prompt_set(write(tmp_path, GOOD))
    assert [t.id for t in ps.tasks] == ["a", "b"] and ps.tasks[0].language == "python"
    assert ps.lexicons["security"].copyable == ("secure", "safe")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: "", r"set\.toml: expected a prompt set \(TOML\), got an empty file"),
    (lambda t: "  \n\n", r"got an empty file"),
    (lambda t: t.replace('id = "b"', 'id = "b'), r"set\.toml:23: expected valid TOML, got a syntax error"),
    (lambda t: t.replace('code = "sorted(x)"', ""), r"set\.toml:23: tasks\[1\] \(id 'b'\): expected a "
                                                    r"non-empty string 'code', got nothing \(missing\)"),
    (lambda t: t.replace('task = "Sort a list."', 'task = ""'), r":23: tasks\[1\] \(id 'b'\): expected a "
                                                                 r"non-empty string 'task', got ''"),
    (lambda t: t.replace('id = "b"', 'id = "a"'), r"set\.toml:23: tasks\[1\] \(id 'a'\): expected a unique "
                                                  r"id, got 'a' again \(first at tasks\[0\], line 18\)"),
    (lambda t: t.replace('id = "b"', 'id = "b c"'), r"tasks\[1\] \(id 'b c'\): expected an id of letters"),
    (lambda t: t.replace('id = "b"', 'id = "b"\ntsak = "x"'),
     r":23: tasks\[1\] \(id 'b'\): expected only the keys .*got also \['tsak'\]"),
    (lambda t: t.replace('["What does this code do?"]', '["how SECURE is  this code?"]'),
     r"set\.toml:6: conditions\.review\.controls\[0\]: expected a control on another topic, got 'how "
     r"SECURE is  this code\?', which is the topic or one of its paraphrases"),
    (lambda t: t.replace('["Make it blue."]', '["Make it safe."]'),
     r":11: conditions\.append\.controls\[0\]: expected a control on another topic"),
    (lambda t: t.replace('["Make it blue."]', '["Make it blue and green."]'),
     r"conditions\.append\.controls\[0\]: expected a control of about the topic's length \(15 characters, "
     r"\+-30%\), got 23 characters"),
    (lambda t: t.replace('["Is this code safe?"]', '["How secure is this code?"]'),
     r"conditions\.review\.paraphrases\[0\]: expected a paraphrase that differs from the topic"),
    (lambda t: t.replace('paraphrases = ["Make it safe."]', "paraphrases = []"),
     r"set\.toml:10: conditions\.append: expected a non-empty list of non-empty strings 'paraphrases', "
     r"got \[\]"),
    (lambda t: t.replace("[conditions.append]", "[conditions.appended]"),
     r"conditions\.append: expected a table, got nothing \(missing\)"),
    (lambda t: t.replace('role = "topic"', 'role = "main"'),
     r"set\.toml:13: lexicons\.security: expected 'role' to be one of \['topic', 'negative control'\], "
     r"got 'main'"),
    (lambda t: t.replace('["secure", "safe"]', '["secure", "Secure"]'), r"expected distinct words"),
    (lambda t: t.replace('["secure", "safe"]', '["very secure"]'),
     r":15: lexicons\.security: expected single words, got 'very secure'"),
    (lambda t: t[:t.index('[[tasks]]\nid = "b"')], r"tasks: expected at least 2 tasks"),
])
def test_bad_files_name_file_line_entry_and_reason(tmp_path, edit, match):
    with pytest.raises(DataError, match=match):
        load_prompt_set(write(tmp_path, edit(GOOD)))


def test_bad_json_and_paths(tmp_path):
    with pytest.raises(DataError, match=r"set\.json:3: expected valid JSON, got a syntax error"):
        load_prompt_set(write(tmp_path, '{\n "name": "x",\n "tasks": [,]\n}', "set.json"))
    with pytest.raises(DataError, match=r"set\.json: top level: expected a table"):
        load_prompt_set(write(tmp_path, "[1, 2]", "set.json"))
    with pytest.raises(DataError, match=r"set\.json: expected a prompt set \(JSON\), got an empty file"):
        load_prompt_set(write(tmp_path, "", "set.json"))
    with pytest.raises(DataError, match=r"^--prompts: expected a \.toml or \.json prompt-set file, got"):
        load_prompt_set(write(tmp_path, GOOD, "set.yaml"), option="--prompts")
    with pytest.raises(FileNotFoundError, match=r"^path: expected a prompt-set file, got .*\(no such file\)"):
        load_prompt_set(tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"name = \"\xff\"")
    with pytest.raises(DataError, match=r"bin\.toml: expected UTF-8 text"):
        load_prompt_set(tmp_path / "bin.toml")
    with pytest.raises(ValueError, match=r"^prompt set: expected one of \['coding_review'\]"):
        builtin_prompt_set("nope")
    with pytest.raises(ValueError, match=r"^fmt: expected 'toml' or 'json'"):
        parse_prompt_set(GOOD, "x", "yaml")


def test_json_entry_errors_name_the_line(shipped, tmp_path):
    data = file_format(shipped)
    del data["tasks"][3]["code"]
    text = json.dumps(data, indent=1)
    path = write(tmp_path, text, "set.json")
    line = line_of(text, '"id": "password-reset"')
    with pytest.raises(DataError, match=re.escape(f"set.json:{line}: tasks[3] (id 'password-reset'): "
                                                  f"expected a non-empty string 'code'")):
        load_prompt_set(path)
