"""Prompt sets for the prompt-effect experiment: coding tasks, the conditions, the lexicons.

Why: one login-form prompt cannot show that words added to a prompt steer an answer; a design
over many prompts can (issue 21). A prompt set holds

- ``tasks``: coding tasks, each with the prompt a user would give (``task``) and a plain
  implementation (``code``) — some with real flaws, some benign, so that an answer about
  security is not forced by the code;
- ``conditions.append`` (step 1: a sentence appended to the coding task) and
  ``conditions.review`` (step 2: a question asked about the code in a new conversation), each
  a ``topic``, its ``paraphrases`` and ``controls`` — sentences of about the topic's length
  (within :data:`LENGTH_TOLERANCE`) on another topic, so that "more words" and "words about
  security" can be told apart;
- ``lexicons``: named word lists (role "topic" or "negative control") that measure what an
  answer is about. A word that already occurs in a prompt is "copyable": the model can repeat
  it without being steered, so it is reported (:attr:`Lexicon.copyable`,
  :meth:`Lexicon.found_in`) for the measure to treat apart.

attnlab ships ``coding_review`` (:func:`builtin_prompt_set`); a user's own file in the same
format, TOML or JSON, is read by :func:`load_prompt_set`, and anything that does not fit raises
:class:`~attnlab.data.tsv.DataError` (a ValueError) naming the file, the line where known, the
entry and the reason.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from attnlab.data.tsv import DataError

LENGTH_TOLERANCE = 0.30  # a control's length in characters may differ from its topic's by this share
ROLES = ("topic", "negative control")
_TASK_KEYS = {"id": True, "task": True, "code": True, "language": False, "flaws": False}
_COND_KEYS = ("topic", "paraphrases", "controls")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Task:
    id: str
    task: str  # the coding prompt a user would give
    code: str  # a plain implementation of it
    language: str = "python"
    flaws: tuple[str, ...] = ()  # known problems, for the reader; no measure uses them


@dataclass(frozen=True)
class Conditions:
    """The sentences one flow adds: the topic, its paraphrases, length-matched controls."""

    topic: str
    paraphrases: tuple[str, ...]
    controls: tuple[str, ...]

    @property
    def topics(self) -> tuple[str, ...]:
        """The topic and its paraphrases (every wording of the topic)."""
        return (self.topic, *self.paraphrases)

    def labelled(self) -> dict[str, str]:
        """``{"topic": ..., "paraphrase-1": ..., "control-1": ...}``, in file order."""
        out = {"topic": self.topic}
        out.update({f"paraphrase-{i}": t for i, t in enumerate(self.paraphrases, 1)})
        out.update({f"control-{i}": t for i, t in enumerate(self.controls, 1)})
        return out


@dataclass(frozen=True)
class Lexicon:
    name: str
    role: str  # "topic" or "negative control"
    words: tuple[str, ...]
    copyable: tuple[str, ...]  # words that occur in some prompt of the set (task, code or condition)

    def found_in(self, text: str) -> tuple[str, ...]:
        """The lexicon's words that occur in ``text`` as whole words, ignoring case."""
        return tuple(w for w in self.words if _word(w).search(text))


@dataclass(frozen=True)
class PromptSet:
    name: str
    description: str
    tasks: tuple[Task, ...]
    review: Conditions  # step 2: a question about the code, in a new conversation
    append: Conditions  # step 1: a sentence appended to the coding task
    lexicons: dict[str, Lexicon]
    source: str  # the file it was read from

    def task(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(f"task: expected one of {[t.id for t in self.tasks]}, got {task_id!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _word(w: str) -> re.Pattern[str]:
    # Letters only as boundaries: "password" is found in "password_hash" (a model copies it from there).
    return re.compile(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class _Reader:
    """Checks a parsed file; every error names the file, the line where it can be found, the entry."""

    def __init__(self, source: str, text: str) -> None:
        self.source, self.lines = source, text.splitlines()

    def line_of(self, *needles: str, after: int | None = 0) -> int | None:
        """First line after line ``after`` holding all ``needles`` (e.g. a quoted value)."""
        if after is None:
            return None
        for i, line in enumerate(self.lines[after:], start=after + 1):
            if all(n in line for n in needles):
                return i
        return None

    def value_line(self, value: str, *also: str, after: int | None = 0) -> int | None:
        """The line of a string value, written "like this" (TOML, JSON) or 'like this' (TOML)."""
        return (self.line_of(json.dumps(value, ensure_ascii=False), *also, after=after)
                or self.line_of(f"'{value}'", *also, after=after))

    def key_line(self, dotted: str, after: int | None = 0) -> int | None:
        """First line after line ``after`` that opens the table ``[dotted...]`` (TOML) or, key by
        key, sets each part of ``dotted`` (``key =`` in TOML, ``"key":`` in JSON)."""
        if after is None:
            return None
        parts = dotted.split(".")
        header = re.compile(r"^\s*\[+\s*" + r"\s*\.\s*".join(map(re.escape, parts)) + r"\s*[.\]]")
        for i, text in enumerate(self.lines[after:], start=after + 1):
            if header.match(text):
                return i
        at = after
        for part in parts:
            key = re.compile(rf'^\s*"?{re.escape(part)}"?\s*[=:]')
            found = next((i for i, text in enumerate(self.lines[at:], start=at + 1) if key.match(text)), None)
            if found is None:
                return None
            at = found
        return at

    def fail(self, where: str, reason: str, line: int | None = None) -> DataError:
        at = f"{self.source}:{line}" if line else self.source
        return DataError(f"{at}: {where}: {reason}")

    def string(self, table: dict[str, Any], key: str, where: str, line: int | None) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            got = "nothing (missing)" if key not in table else f"{value!r:.60}"
            raise self.fail(where, f"expected a non-empty string {key!r}, got {got}", line)
        return value

    def strings(self, table: dict[str, Any], key: str, where: str, line: int | None,
                required: bool = True) -> tuple[str, ...]:
        if key not in table and not required:
            return ()
        value = table.get(key)
        if (not isinstance(value, list) or (required and not value)
                or not all(isinstance(v, str) and v.strip() for v in value)):
            got = "nothing (missing)" if key not in table else f"{value!r:.80}"
            raise self.fail(where, f"expected a {'non-empty ' if required else ''}list of non-empty "
                                   f"strings {key!r}, got {got}", line)
        return tuple(v.strip() for v in value)

    def table(self, value: Any, where: str, line: int | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            got = "nothing (missing)" if value is None else f"a {type(value).__name__}"
            raise self.fail(where, f"expected a table, got {got}", line)
        return value

    def tasks(self, raw: Any) -> tuple[Task, ...]:
        if not isinstance(raw, list) or len(raw) < 2:
            got = "nothing (missing)" if raw is None else f"{raw!r:.60}"
            raise self.fail("tasks", f"expected at least 2 tasks ([[tasks]] entries; statistics over "
                                     f"prompts need several), got {got}")
        seen: dict[str, tuple[int, int | None]] = {}
        out, last = [], 0
        for i, entry in enumerate(raw):
            where = f"tasks[{i}]"
            entry = self.table(entry, where)
            tid = entry.get("id")
            line = self.value_line(tid, "id", after=last) if isinstance(tid, str) else None
            last = line or last
            if isinstance(tid, str):
                where += f" (id {tid!r})"
            unknown = sorted(set(entry) - set(_TASK_KEYS))
            if unknown:
                raise self.fail(where, f"expected only the keys {sorted(_TASK_KEYS)}, got also {unknown}",
                                line)
            tid = self.string(entry, "id", where, line)
            if not _ID.match(tid):
                raise self.fail(where, f"expected an id of letters, digits, '-', '_' and '.', got {tid!r}",
                                line)
            if tid in seen:
                first, first_line = seen[tid]
                raise self.fail(where, f"expected a unique id, got {tid!r} again (first at tasks[{first}]"
                                       + (f", line {first_line})" if first_line else ")"), line)
            seen[tid] = (i, line)
            language = entry.get("language", "python")
            if not isinstance(language, str) or not language.strip():
                raise self.fail(where, f"expected a non-empty string 'language', got {language!r}", line)
            out.append(Task(id=tid, task=self.string(entry, "task", where, line).strip(),
                            code=self.string(entry, "code", where, line).strip("\n"),
                            language=language.strip(),
                            flaws=self.strings(entry, "flaws", where, line, required=False)))
        return tuple(out)

    def conditions(self, raw: Any, flow: str) -> Conditions:
        where = f"conditions.{flow}"
        head = self.key_line(f"conditions.{flow}")
        table = self.table(raw, where, head)
        unknown = sorted(set(table) - set(_COND_KEYS))
        if unknown:
            raise self.fail(where, f"expected only the keys {list(_COND_KEYS)}, got also {unknown}", head)
        topic = self.string(table, "topic", where, self.key_line("topic", head) or head).strip()
        lines = {k: self.key_line(k, head) or head for k in ("paraphrases", "controls")}
        paraphrases = self.strings(table, "paraphrases", where, lines["paraphrases"])
        controls = self.strings(table, "controls", where, lines["controls"])
        topics = {_norm(t) for t in (topic, *paraphrases)}
        for kind, texts in (("paraphrases", paraphrases), ("controls", controls)):
            seen: set[str] = set()
            start = (lines[kind] or 1) - 1
            for j, text in enumerate(texts):
                at, line = f"{where}.{kind}[{j}]", self.value_line(text, after=start)
                if _norm(text) in seen:
                    raise self.fail(at, f"expected distinct {kind}, got {text!r} twice", line)
                seen.add(_norm(text))
                if kind == "paraphrases" and _norm(text) == _norm(topic):
                    raise self.fail(at, f"expected a paraphrase that differs from the topic, got the "
                                        f"topic {text!r} itself", line)
                if kind == "controls" and _norm(text) in topics:
                    raise self.fail(at, f"expected a control on another topic, got {text!r}, which is "
                                        f"the topic or one of its paraphrases", line)
                if kind == "controls" and abs(len(text) - len(topic)) > LENGTH_TOLERANCE * len(topic):
                    raise self.fail(at, f"expected a control of about the topic's length ({len(topic)} "
                                        f"characters, +-{LENGTH_TOLERANCE:.0%}), got {len(text)} "
                                        f"characters: {text!r}", line)
        return Conditions(topic=topic, paraphrases=paraphrases, controls=controls)

    def lexicons(self, raw: Any, prompts: list[str]) -> dict[str, Lexicon]:
        head = self.key_line("lexicons")
        table = self.table(raw, "lexicons", head)
        if not table:
            raise self.fail("lexicons", "expected at least one lexicon ([lexicons.NAME] with role and "
                                        "words), got none", head)
        out = {}
        for name, entry in table.items():
            where = f"lexicons.{name}"
            line = self.key_line(f"lexicons.{name}")
            entry = self.table(entry, where, line)
            role = entry.get("role")
            if role not in ROLES:
                raise self.fail(where, f"expected 'role' to be one of {list(ROLES)}, got {role!r}", line)
            words = self.strings(entry, "words", where, line)
            for w in words:
                if any(c.isspace() for c in w):
                    raise self.fail(where, f"expected single words, got {w!r}",
                                    self.value_line(w, after=line))
            lowered = [w.casefold() for w in words]
            if len(set(lowered)) != len(lowered):
                twice = sorted({w for w in lowered if lowered.count(w) > 1})
                raise self.fail(where, f"expected distinct words, got {twice} more than once", line)
            copyable = tuple(w for w in words if any(_word(w).search(p) for p in prompts))
            out[name] = Lexicon(name=name, role=role, words=words, copyable=copyable)
        return out


def parse_prompt_set(text: str, source: str, fmt: str = "toml") -> PromptSet:
    """A prompt set from the text of a TOML or JSON file; ``source`` names it in errors."""
    if fmt not in ("toml", "json"):
        raise ValueError(f"fmt: expected 'toml' or 'json', got {fmt!r}")
    if not text.strip():
        raise DataError(f"{source}: expected a prompt set ({fmt.upper()}), got an empty file")
    try:
        data: Any = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{source}:{m.group(1)}" if m else source
        raise DataError(f"{where}: expected valid TOML, got a syntax error: {e}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{source}:{e.lineno}: expected valid JSON, got a syntax error: {e.msg} "
                        f"(column {e.colno})") from e
    r = _Reader(source, text)
    if not isinstance(data, dict):
        raise r.fail("top level", f"expected a table of name, tasks, conditions and lexicons, got a "
                                  f"{type(data).__name__}")
    tasks = r.tasks(data.get("tasks"))
    conds = r.table(data.get("conditions"), "conditions", r.key_line("conditions"))
    review, append = r.conditions(conds.get("review"), "review"), r.conditions(conds.get("append"), "append")
    prompts = [t.task for t in tasks] + [t.code for t in tasks] + [*review.labelled().values(),
                                                                  *append.labelled().values()]
    name = data.get("name", Path(source).stem)
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise r.fail(key, f"expected a string, got {value!r:.60}", r.key_line(key))
    return PromptSet(name=name, description=description, tasks=tasks, review=review, append=append,
                     lexicons=r.lexicons(data.get("lexicons"), prompts), source=source)


def load_prompt_set(path: str | os.PathLike[str], *, option: str = "path") -> PromptSet:
    """Read a user's prompt set (``.toml`` or ``.json``, the format of ``coding_review.toml``).
    ``option``: what a missing file is called in the error (the setting the user gave it with)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("toml", "json"):
        raise DataError(f"{option}: expected a .toml or .json prompt-set file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{option}: expected a prompt-set file, got {str(path)!r} (no such file)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: expected UTF-8 text, got undecodable bytes at byte {e.start}") from e
    return parse_prompt_set(text, str(path), fmt)


def builtin_names() -> tuple[str, ...]:
    """The prompt sets shipped with attnlab."""
    folder = resources.files("attnlab.data") / "prompt_sets"
    return tuple(sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")))


def builtin_prompt_set(name: str = "coding_review") -> PromptSet:
    """A prompt set shipped with attnlab (see :func:`builtin_names`)."""
    names = builtin_names()
    if name not in names:
        raise ValueError(f"prompt set: expected one of {list(names)} or a .toml/.json file, got {name!r}")
    res = resources.files("attnlab.data") / "prompt_sets" / f"{name}.toml"
    return parse_prompt_set(res.read_text(encoding="utf-8"), f"attnlab/data/prompt_sets/{name}.toml")
