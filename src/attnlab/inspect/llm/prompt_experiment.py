"""The prompt experiment, run as a design: do words added to a prompt steer the answer, and is
attention the path? (issue 21; the blog post "Making Intuitive Sense of Attention").

For every task of a prompt set and every condition of the flow (:mod:`prompt_design`):

1. **Sampled answers** — the greedy answer and ``samples`` seeded samples (temperature T; sample
   s of every condition shares seed s). Measure: does the answer mention the topic, counting
   only lexicon words that occur in none of the task's prompts (copyable words are reported
   apart), and the negative-control lexicons, on the same scale.
2. **A fixed answer** — two sentences, one about the topic and one neutral, scored by teacher
   forcing (mean log-probability per token) under every condition and every intervention: the
   same tokens everywhere, so interventions are compared on one path, not on answers that
   diverge at the first near-tie; and token by token.
3. **Interventions with their controls** on the topic condition, on the fixed answer and on the
   sampled ones: the added words' keys knocked out of attention (Geva et al. 2023) in all
   layers and per band of layers; the same number of the task's own tokens knocked out instead
   (random, seeded: the specificity control); the words deleted (the base prompt); the added
   words knocked out only in the heads that write the topic direction most (ranked on the
   *other* half of the tasks: held out) against as many random heads; and PASTA (Zhang et al.
   2023) emphasising the added words in those heads, against PASTA in the random heads — the
   claim "attention to these words carries the effect" predicts a rise there, not only a fall
   under knockout.
4. **Which heads write the topic direction** — direct logit attribution per head (Elhage et al.
   2021; :func:`~attnlab.inspect.llm.lens.direct_logit_attribution`) of logit(topic token) -
   logit(neutral token) where the two fixed answers part, under the topic and a control
   condition.

Statistics and verdicts are :mod:`prompt_report`'s. All rows of a task run as one batch on a
shared prefix (:mod:`batch_rows`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from attnlab.data.prompt_sets import PromptSet, Task
from attnlab.inspect.llm.batch_rows import Row, generate_rows, logit_diff_rows, score_rows
from attnlab.inspect.llm.generation import Sampling, eos_ids, fit_prompt
from attnlab.inspect.llm.lens import direct_logit_attribution
from attnlab.inspect.llm.prompt_design import (
    ExperimentConfig,
    FixedAnswers,
    TaskPlan,
    conditions,
    extract_code,
    mentions,
    plan_task,
)
from attnlab.inspect.llm.prompt_effect import layer_bands
from attnlab.models.loading import LoadedModel

Progress = Callable[[str, int, int], None]  # (stage, done, total)
KNOCK, RANDOM = "topic, knocked out", "topic, random knockout"
HEADS, RANDOM_HEADS = "topic, knocked out in top heads", "topic, knocked out in random heads"
PASTA, RANDOM_PASTA = "topic, PASTA in top heads", "topic, PASTA in random heads"


@dataclass
class TaskResult:
    id: str
    answers: dict[str, list[str]]  # arm -> [greedy, sample 1, ..., sample S]
    stops: dict[str, list[str]]
    fixed: dict[str, dict[str, list[float]]]  # arm -> {"topic": log p per token, "neutral": ...}
    added: list[int]  # token positions of the topic condition's added words
    random: list[list[int]]  # the matched random knockouts (draw 0 also on sampled answers)
    copyable: dict[str, list[str]]  # lexicon -> words excluded from its measure for this task
    mentions: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)  # lex -> arm -> words
    dla: dict[str, list[list[float]]] = field(default_factory=dict)  # condition -> (L, H)
    logit_diff: dict[str, float] = field(default_factory=dict)
    heads: list[tuple[int, int]] = field(default_factory=list)
    random_heads: list[tuple[int, int]] = field(default_factory=list)
    code: str = ""
    sweep: list[list[float]] = field(default_factory=list)  # (L, H): split logit diff, head knocked - none


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    model: str
    prompt_set: str
    conditions: dict[str, str]
    fixed: dict[str, dict[str, Any]]  # "topic"/"neutral" -> text, ids, labels; "split": where they part
    lexicons: dict[str, dict[str, Any]]
    bands: list[tuple[str, list[int]]]
    dla_against: str  # the condition the topic condition's attribution is compared with
    code_source: str  # "shipped", "generated" or a file name
    tasks: list[TaskResult]
    layers: int
    heads: int
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "result") -> ExperimentResult:
        """The result again from :meth:`to_dict`'s JSON (``result.json``'s "result"): the report
        re-rendered, or re-analysed, without re-running the model."""
        try:
            cfg = dict(d["config"])
            cfg["fixed"] = None if cfg.get("fixed") is None else FixedAnswers(**cfg["fixed"])
            tasks = [TaskResult(**(t | {"heads": [tuple(h) for h in t["heads"]],
                                        "random_heads": [tuple(h) for h in t["random_heads"]]}))
                     for t in d["tasks"]]
            rest = {k: v for k, v in d.items() if k not in ("config", "tasks", "bands")}
            return cls(config=ExperimentConfig(**cfg).check(), tasks=tasks,
                       bands=[(str(label), list(layers)) for label, layers in d["bands"]], **rest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{source}: expected the result of attnlab prompt-experiment (result.json), "
                             f"got data that does not fit it ({type(e).__name__}: {e})") from None


def _split(a: list[int], b: list[int]) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if i == len(a) or i == len(b):
        raise ValueError(f"fixed: expected two answers that differ in a token where both go on, got "
                         f"{len(a)} and {len(b)} tokens equal for the first {i}")
    return i


def _generate_code(lm: LoadedModel, tasks: list[Task], cfg: ExperimentConfig, n_tokens: int) -> list[Task]:
    """Step 1 of the blog's flow: each task's prompt generates its code (greedy)."""
    rows = [Row(tuple(fit_prompt(lm, t.task, system=cfg.system, max_new_tokens=n_tokens).ids)) for t in tasks]
    stops = eos_ids(lm)
    out = generate_rows(lm, rows, max_new_tokens=n_tokens)
    return [replace(t, code=extract_code(lm.tokenizer.decode([i for i in ids if i not in stops])))
            for t, (ids, _) in zip(tasks, out, strict=True)]


def _dla(lm: LoadedModel, plan: TaskPlan, cond: str, ans: list[int], other: list[int],
         split: int) -> tuple[list[list[float]], float]:
    ids = torch.tensor(plan.ids[cond] + ans[:split])  # (P + split,)
    att = direct_logit_attribution(lm, ids, ans[split], other[split])
    return att.heads.tolist(), att.total


def _top_heads(grids: list[list[list[float]]], k: int) -> list[tuple[int, int]]:
    g = torch.tensor(grids, dtype=torch.float64).mean(0)  # (tasks, L, H) -> (L, H)
    H = g.shape[1]
    return [(i // H, i % H) for i in g.flatten().argsort(descending=True)[:k].tolist()]  # (L, H) -> (L*H,)


SWEEP_CHUNK = 64  # rows per batch: each holds its own copy of the ~300-token KV cache


def _sweep(lm: LoadedModel, plan: TaskPlan, res: TaskResult, ans_t: list[int], ans_n: list[int],
           split: int) -> list[list[float]]:
    """The added words knocked out of one head at a time (every layer x head): the change in
    logit(topic token) - logit(neutral token) where the fixed answers part, teacher-forced on
    their shared start. Which heads carry the effect, one by one (a knockout per head, as the
    path-patching sweeps of Wang et al. 2022 do per head)."""
    L, H = lm.num_layers, lm.num_heads
    topic, ctx = tuple(plan.ids["topic"]), tuple(ans_t[:split])
    rows = [Row(topic, answer=ctx)] + [Row(topic, knock=tuple(res.added), heads=((a, b),), answer=ctx)
                                       for a in range(L) for b in range(H)]
    share: dict[str, Any] = {"prefix_limit": min(res.added), "prefix_store": {}}
    diffs: list[float] = []
    for c in range(0, len(rows), SWEEP_CHUNK):
        diffs += logit_diff_rows(lm, rows[c : c + SWEEP_CHUNK], ans_t[split], ans_n[split], **share)
    base = diffs[0]
    return [[diffs[1 + a * H + b] - base for b in range(H)] for a in range(L)]


def run_experiment(lm: LoadedModel, ps: PromptSet, cfg: ExperimentConfig, *,
                   progress: Progress | None = None, code_source: str = "shipped",
                   generate_code_tokens: int = 0) -> ExperimentResult:
    """Run every task of ``ps`` under ``cfg``; ``generate_code_tokens`` > 0: step 1 first."""
    cfg.check()
    t_start = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    d = _design(lm, ps, cfg, say, code_source, generate_code_tokens)
    seconds: dict[str, float] = {"set_up": round(time.perf_counter() - t_start, 2)}
    results = [TaskResult(p.task.id, {}, {}, {}, p.added["topic"],
                          [p.random_positions(len(p.added["topic"]), cfg.seed * 7919 + 31 * i + n)
                           for n in range(cfg.draws)],
                          {k: list(v) for k, v in p.copyable.items()}, code=p.task.code)
               for i, p in enumerate(d.plans)]
    if cfg.dla:
        seconds["attribution"] = _timed(_rank_heads, lm, cfg, d, results, say)
    seconds["tasks"] = _timed(_run_tasks, lm, ps, cfg, d, results, say)
    if cfg.head_sweep:
        seconds["head_sweep"] = _timed(_sweep_tasks, lm, d, results, say)
    seconds["total"] = round(time.perf_counter() - t_start, 2)
    lexicons = {n: {"role": x.role, "words": list(x.words)} for n, x in ps.lexicons.items()}
    return ExperimentResult(cfg, lm.name, ps.name, d.conds, _fixed_info(lm, cfg, d), lexicons, d.bands,
                            d.against, d.code_source, results, lm.num_layers, lm.num_heads, seconds)


def _timed(stage: Callable[..., None], *args: Any) -> float:
    """Seconds ``stage(*args)`` took."""
    t0 = time.perf_counter()
    stage(*args)
    return round(time.perf_counter() - t0, 2)


@dataclass
class _Design:
    """What every task of a run shares: conditions, fixed answers, layer bands, and each task's plan."""

    conds: dict[str, str]
    against: str  # the condition the topic condition's attribution is compared with
    ans_t: list[int]  # the fixed answers' token ids: topic, neutral
    ans_n: list[int]
    split: int  # where they part
    bands: list[tuple[str, list[int]]]
    plans: list[TaskPlan]
    code_source: str


def _design(lm: LoadedModel, ps: PromptSet, cfg: ExperimentConfig, say: Progress, code_source: str,
            generate_code_tokens: int) -> _Design:
    """Everything checked before any run (every task can give a matched random knockout), step 1
    when asked, and each task's plan."""
    tasks = list(ps.tasks[: cfg.tasks])
    if len(tasks) < 2 and cfg.samples < 2:
        raise ValueError(f"samples: expected >= 2 with a single task (its samples are then the units of "
                         f"the statistics), got {cfg.samples}")
    conds = conditions(ps, cfg)
    controls = [c for c in conds if c.startswith("control")]
    ans_t = lm.tokenizer.piece_ids(cfg.answers.topic)
    ans_n = lm.tokenizer.piece_ids(cfg.answers.neutral)
    split = _split(ans_t, ans_n)
    room = max(cfg.max_new_tokens, len(ans_t), len(ans_n), generate_code_tokens)
    if generate_code_tokens:
        for t in tasks:  # refuse before generating anything
            fit_prompt(lm, t.task, system=cfg.system, max_new_tokens=generate_code_tokens)
        say("generating code (step 1)", 0, 1)
        tasks, code_source = _generate_code(lm, tasks, cfg, generate_code_tokens), "generated"
        say("generating code (step 1)", 1, 1)
    plans = [plan_task(lm, t, conds, cfg, ps.lexicons, room) for t in tasks]
    for p in plans:
        p.random_positions(len(p.added["topic"]), 0)
    L = lm.num_layers
    per_band = [(f"layers {r.start}-{r.stop - 1}", list(r)) for r in layer_bands(L, min(cfg.bands, L))]
    bands = [("all layers", list(range(L))), *(per_band if cfg.bands > 1 else [])]
    return _Design(conds, controls[0] if controls else "base", ans_t, ans_n, split, bands, plans, code_source)


def _rank_heads(lm: LoadedModel, cfg: ExperimentConfig, d: _Design, results: list[TaskResult],
                say: Progress) -> None:
    """Direct logit attribution per head under the topic condition and its control; then, per
    task, the top heads ranked on the other half of the tasks (held out) and as many random ones."""
    for i, (p, res) in enumerate(zip(d.plans, results, strict=True)):
        say("direct logit attribution", i, len(d.plans))
        for cond in ("topic", d.against):
            res.dla[cond], res.logit_diff[cond] = _dla(lm, p, cond, d.ans_t, d.ans_n, d.split)
    say("direct logit attribution", len(d.plans), len(d.plans))
    L, H = lm.num_layers, lm.num_heads
    k = min(cfg.steer_heads, L * H // 2)
    for i, res in enumerate(results):
        others = [r for j, r in enumerate(results) if j % 2 != i % 2] or results
        diff = [(torch.tensor(r.dla["topic"]) - torch.tensor(r.dla[d.against])).tolist() for r in others]
        res.heads = _top_heads(diff, k)
        pool = [(a, b) for a in range(L) for b in range(H) if (a, b) not in res.heads]
        res.random_heads = sorted(random.Random(cfg.seed * 7919 + i).sample(pool, k))


def _arms(cfg: ExperimentConfig, d: _Design, p: TaskPlan,
          res: TaskResult) -> tuple[dict[str, Row], dict[str, Row]]:
    """One task's rows: the arms whose answers are sampled, and those the fixed answers are scored
    under. The fixed answer takes every band's knockout and every random draw by name; the
    sampled answers take the all-layer knockout and the first draw (as KNOCK and RANDOM) and the
    other bands; head knockouts and PASTA are in both."""
    topic, added = tuple(p.ids["topic"]), tuple(res.added)
    arms = {c: Row(tuple(p.ids[c])) for c in d.conds}
    arms[KNOCK] = Row(topic, knock=added)
    arms[RANDOM] = Row(topic, knock=tuple(res.random[0]))
    fixed = dict(arms)
    del fixed[KNOCK], fixed[RANDOM]
    for label, layers in d.bands:
        fixed[f"{KNOCK} ({label})"] = Row(topic, knock=added, layers=tuple(layers))
        if label != "all layers":
            arms[f"{KNOCK} ({label})"] = fixed[f"{KNOCK} ({label})"]
    for n, pos in enumerate(res.random):
        fixed[f"{RANDOM} {n + 1}"] = Row(topic, knock=tuple(pos))
    if res.heads:
        for name, heads in ((HEADS, res.heads), (RANDOM_HEADS, res.random_heads)):
            arms[name] = fixed[name] = Row(topic, knock=added, heads=tuple(heads))
        for name, heads in ((PASTA, res.heads), (RANDOM_PASTA, res.random_heads)):
            arms[name] = fixed[name] = Row(topic, steer=added, heads=tuple(heads), alpha=cfg.pasta_alpha)
    return arms, fixed


def _run_tasks(lm: LoadedModel, ps: PromptSet, cfg: ExperimentConfig, d: _Design, results: list[TaskResult],
               say: Progress) -> None:
    """Per task, in one batch: the greedy answer and the samples of every arm, the fixed answers
    scored under every arm, and the lexicons' words found in each answer."""
    samplings = [Sampling()] + [Sampling(greedy=False, temperature=cfg.temperature, seed=cfg.seed + s + 1)
                                for s in range(cfg.samples)]
    stops = eos_ids(lm)
    for i, (p, res) in enumerate(zip(d.plans, results, strict=True)):
        say("tasks", i, len(d.plans))
        arms, fixed = _arms(cfg, d, p, res)
        rows = [replace(r, sampling=s) for r in arms.values() for s in samplings]
        # Every call shares the prompt up to the added words: prefilled once per task (and once
        # per random knockout), whatever each call's rows have in common beyond it.
        share: dict[str, Any] = {"prefix_limit": min(res.added), "prefix_store": {}}
        out = generate_rows(lm, rows, max_new_tokens=cfg.max_new_tokens, stop_ids=stops, **share)
        for j, arm in enumerate(arms):
            part = out[j * len(samplings) : (j + 1) * len(samplings)]
            res.answers[arm] = [lm.tokenizer.decode([t for t in ids if t not in stops]) for ids, _ in part]
            res.stops[arm] = [why for _, why in part]
        batch = [replace(r, answer=tuple(x)) for r in fixed.values() for x in (d.ans_t, d.ans_n)]
        scores = score_rows(lm, batch, **share)
        for j, arm in enumerate(fixed):
            res.fixed[arm] = {"topic": scores[2 * j], "neutral": scores[2 * j + 1]}
        for name, lex in ps.lexicons.items():
            res.mentions[name] = {arm: [mentions(a, lex) for a in texts]
                                  for arm, texts in res.answers.items()}
    say("tasks", len(d.plans), len(d.plans))


def _sweep_tasks(lm: LoadedModel, d: _Design, results: list[TaskResult], say: Progress) -> None:
    for i, (p, res) in enumerate(zip(d.plans, results, strict=True)):
        say("head sweep", i, len(d.plans))
        res.sweep = _sweep(lm, p, res, d.ans_t, d.ans_n, d.split)
    say("head sweep", len(d.plans), len(d.plans))


def _fixed_info(lm: LoadedModel, cfg: ExperimentConfig, d: _Design) -> dict[str, Any]:
    """The fixed answers as the report reads them: text, ids, labels; where they part; how many
    tokens the topic condition added."""
    labels = {k: [lm.tokenizer.label(lm.tokenizer.id_to_token(i)) for i in ids]
              for k, ids in (("topic", d.ans_t), ("neutral", d.ans_n))}
    return {
        "topic": {"text": cfg.answers.topic, "ids": d.ans_t, "labels": labels["topic"]},
        "neutral": {"text": cfg.answers.neutral, "ids": d.ans_n, "labels": labels["neutral"]},
        "split": d.split, "added_tokens": len(d.plans[0].added["topic"]),
    }
