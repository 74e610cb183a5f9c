"""The design of the prompt experiment: its settings, its prompts and the measures on answers.

Two flows, each over the tasks of a prompt set (:mod:`attnlab.data.prompt_sets`):

- ``review`` (the blog post's own experiment, the default): a new conversation shows a task's
  code and asks a question about it — the topic question ("How secure is this code?"), one of
  its paraphrases, or a control question of about the same length on another aspect ("What
  does this code do?"). The code comes first and the question last, as a user pastes code and
  then asks; the base condition is the code with no question at all.
- ``append``: the coding task with a sentence appended ("... Make it secure." vs "... Make it
  blue."); the base condition is the task alone.

The unit of analysis is the task: every condition of a task is paired with every other, and
sample s of every condition uses the same seed. Words of a lexicon that occur in any prompt of
a task (its code, its task text, any condition's sentence) are *copyable* there: an answer can
repeat them without being steered, so the headline measure counts only the other words.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnlab.arguments import expect_int
from attnlab.data.prompt_sets import Lexicon, PromptSet, Task
from attnlab.inspect.llm.generation import fit_prompt
from attnlab.inspect.llm.prompt_effect import span_positions, user_span
from attnlab.models.loading import LoadedModel

FLOWS = ("review", "append")


@dataclass(frozen=True)
class FixedAnswers:
    """Two answer sentences scored by teacher forcing under every condition and intervention:
    one about the topic, one neutral, sharing their first words (so the first token where they
    differ is where direct logit attribution reads the topic direction)."""

    topic: str
    neutral: str


# Words chosen to occur in no condition's sentence (nothing to copy) nor in each other.
DEFAULT_FIXED = {
    "review": FixedAnswers("This code is vulnerable to injection.", "This code is easy to understand."),
    "append": FixedAnswers("Here is a version that resists injection:",
                           "Here is a version that reads the file:"),
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Settings of one run; :meth:`quick` is the small subset ``make run`` uses."""

    flow: str = "review"
    samples: int = 4  # seeded samples per condition, besides the greedy answer
    temperature: float = 0.8
    seed: int = 0
    max_new_tokens: int = 24  # 32 took 18 min for the default design on 2 cores (target 15): see benchmarks
    tasks: int | None = None  # the first n tasks (None: all)
    paraphrases: int | None = None  # how many of the set's paraphrases (None: all)
    controls: int | None = None
    bands: int = 3  # knockout per band of layers: thirds
    draws: int = 3  # matched random knockouts per task (fixed-answer measure)
    steer_heads: int = 8  # heads knocked out / steered by DLA rank (chosen on the other half of the tasks)
    pasta_alpha: float = 0.01  # PASTA's scaling of the other keys (Zhang et al. 2023 use 0.01)
    dla: bool = True
    head_sweep: bool = False  # knock the added words out of each head alone (L x H rows per task)
    n_boot: int = 2000
    system: str | None = None
    fixed: FixedAnswers | None = None  # None: DEFAULT_FIXED[flow]

    @classmethod
    def quick(cls, **kw: Any) -> ExperimentConfig:
        base = cls(tasks=6, samples=2, max_new_tokens=16, paraphrases=1, controls=1, bands=1, draws=1)
        return replace(base, **kw)

    def check(self) -> ExperimentConfig:
        if self.flow not in FLOWS:
            raise ValueError(f"flow: expected one of {list(FLOWS)}, got {self.flow!r}")
        ints = {"samples": (self.samples, 1), "max_new_tokens": (self.max_new_tokens, 1),
                "seed": (self.seed, 0), "bands": (self.bands, 1), "draws": (self.draws, 1),
                "steer_heads": (self.steer_heads, 1), "n_boot": (self.n_boot, 100)}
        for name, (v, lo) in ints.items():
            expect_int(name, v, lo, expected=f"an integer >= {lo}")
        optional = (("tasks", self.tasks), ("paraphrases", self.paraphrases), ("controls", self.controls))
        for name, opt in optional:
            least = 1 if name == "tasks" else 0
            if opt is not None:
                expect_int(name, opt, least, expected=f"an integer >= {least} or None (all)")
        a = self.pasta_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
            raise ValueError(f"pasta_alpha: expected a number in (0, 1], got {a!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature: expected a number > 0, got {t!r}")
        return self

    @property
    def answers(self) -> FixedAnswers:
        return self.fixed or DEFAULT_FIXED[self.flow]


@dataclass
class TaskPlan:
    """One task's prompts: the user message and token ids per condition, where the added words
    sit, and the positions a matched random knockout may take instead."""

    task: Task
    messages: dict[str, str]  # condition -> user message ("base" first)
    ids: dict[str, list[int]]
    added: dict[str, list[int]]  # condition -> token positions of the added words
    others: list[int]  # positions of the task's own words (code or task text): the random pool
    copyable: dict[str, tuple[str, ...]] = field(default_factory=dict)  # lexicon -> words excluded

    def random_positions(self, n: int, seed: int) -> list[int]:
        """``n`` positions drawn from the task's own words (never the added ones), seeded."""
        if n > len(self.others):
            raise ValueError(f"task {self.task.id!r}: expected at least {n} tokens of its own to draw a "
                             f"matched knockout from, got {len(self.others)}")
        return sorted(random.Random(seed).sample(self.others, n))


def read_code(path: str | Path, option: str = "--code") -> str:
    """A code file as text: UTF-8, no NUL bytes, not empty."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{option}: expected a text file of code, got {str(p)!r} (no such file)")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{option}: expected a UTF-8 text file of code, got undecodable bytes at byte "
                         f"{e.start} of {str(p)!r}") from None
    if "\x00" in text:
        raise ValueError(f"{option}: expected a text file of code, got a binary file {str(p)!r} (NUL bytes)")
    if not text.strip():
        raise ValueError(f"{option}: expected code, got an empty file {str(p)!r}")
    return text.strip("\n")


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer (step 1 of the blog's flow), else the answer."""
    m = re.search(r"```[\w+-]*\n(.*?)(?:```|$)", answer, flags=re.S)
    code = m.group(1) if m else answer
    return code.strip("\n") or answer.strip()


def conditions(ps: PromptSet, cfg: ExperimentConfig) -> dict[str, str]:
    """``{"base": "", "topic": ..., "paraphrase-1": ..., "control-1": ...}`` for the flow."""
    c = ps.review if cfg.flow == "review" else ps.append
    out = {"base": "", "topic": c.topic}
    out.update({f"paraphrase-{i}": t for i, t in enumerate(c.paraphrases[: cfg.paraphrases], 1)})
    out.update({f"control-{i}": t for i, t in enumerate(c.controls[: cfg.controls], 1)})
    return out


def message(task: Task, flow: str, added: str) -> tuple[str, int, int]:
    """The user message and the character span of the task's own words in it."""
    if flow == "review":
        own = f"```{task.language}\n{task.code}\n```"
        return (f"{own}\n\n{added}" if added else own), 0, len(own)
    return (f"{task.task} {added}" if added else task.task), 0, len(task.task)


def plan_task(lm: LoadedModel, task: Task, conds: dict[str, str], cfg: ExperimentConfig,
              lexicons: dict[str, Lexicon], room: int) -> TaskPlan:
    """Render and tokenise every condition of ``task``; refuse one that leaves no ``room``."""
    messages, ids, added = {}, {}, {}
    others: list[int] = []
    for name, sentence in conds.items():
        text, own_start, own_end = message(task, cfg.flow, sentence)
        enc = fit_prompt(lm, text, system=cfg.system, max_new_tokens=room)
        if len(enc) + room > lm.max_tokens:
            raise ValueError(f"prompt: task {task.id!r} ({name}) has {len(enc)} tokens; expected at most "
                             f"{lm.max_tokens - room} to leave room for {room} answer tokens (the model's "
                             f"context is {lm.max_tokens}); lower --max-new-tokens or shorten the task")
        at = user_span(enc, text)
        messages[name], ids[name] = text, list(enc.ids)
        if sentence:
            start = at + len(text) - len(sentence)
            added[name] = span_positions(enc, start, start + len(sentence))
        if name == "base":
            others = [p for p in span_positions(enc, at + own_start, at + own_end) if p >= 1]
    texts = [task.task, task.code, *conds.values()]
    copy = {name: tuple(sorted({w for t in texts for w in lex.found_in(t)}, key=lex.words.index))
            for name, lex in lexicons.items()}
    return TaskPlan(task, messages, ids, added, others, copy)


def mentions(text: str, lexicon: Lexicon, exclude: Sequence[str] = ()) -> list[str]:
    """The lexicon's words in ``text`` (whole words, any case), less ``exclude``."""
    skip = {w.casefold() for w in exclude}
    return [w for w in lexicon.found_in(text) if w.casefold() not in skip]
