"""The prompt experiment's report: paired effects with 95 % bootstrap intervals and verdicts.

Every number is a paired effect over tasks (the unit: the prompt, with its samples kept
together; :mod:`attnlab.inspect.stats`, Efron & Tibshirani 1993 for the bootstrap) with its
interval, and each verdict is read off the interval ("not shown" when it covers 0). Families of
comparisons are Bonferroni-adjusted, so a family's intervals hold together at 95 %. With one
task (``--code FILE``), the samples are the units: the claim is then about that code only.

One typed :class:`PromptReport` (the summary sentences and a list of
:class:`~attnlab.viz.tables.Table`) is rendered by :mod:`attnlab.viz.tables` to markdown
(:meth:`PromptReport.markdown`), the terminal (the CLI prints :meth:`PromptReport.blocks`) and
JSON (:meth:`PromptReport.to_dict`); :meth:`PromptReport.write` writes its folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.inspect.llm.prompt_experiment import (
    HEADS,
    KNOCK,
    PASTA,
    RANDOM,
    RANDOM_HEADS,
    RANDOM_PASTA,
    ExperimentResult,
)
from attnlab.inspect.stats import Effect, Verdict, bonferroni_level, effect, verdict
from attnlab.viz.tables import Block, Table, json_tables, markdown

Arr = np.ndarray
Q_FIXED = "the fixed answer's topic preference (nats/token)"


@dataclass
class Headline:
    key: str
    measure: str
    effect: Effect
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "measure": self.measure, "verdict": self.verdict.to_dict()}


@dataclass
class PromptReport:
    title: str
    summary: list[str]
    headlines: list[Headline]
    tables: list[Table]
    panels: list[dict[str, Any]] = field(default_factory=list)  # viz.effects.EffectPanel fields
    result: ExperimentResult | None = None  # what the report was built from (JSON: its to_dict)
    token_panels: list[dict[str, Any]] = field(default_factory=list)  # the fixed answers per token
    sweep: list[list[float]] = field(default_factory=list)  # (L, H) mean effect of knocking each head

    def blocks(self) -> list[Block]:
        """The summary (one line per verdict), then the tables: what the terminal and result.md show."""
        summary = "\n".join(f"- {s}" for s in self.summary)
        return [summary, *self.tables] if summary else list(self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "summary": self.summary,
                "headlines": [h.to_dict() for h in self.headlines],
                "tables": json_tables(self.tables),
                "result": {} if self.result is None else self.result.to_dict()}

    def markdown(self) -> str:
        return markdown(self.blocks(), title=self.title)

    def write(self, out: str | Path, *, png: bool = True) -> list[str]:
        """result.md, result.json and the pictures into the folder ``out``, atomically
        (:func:`~attnlab.inspect.llm.prompt_files.write_outputs`); returns the paths written."""
        from attnlab.inspect.llm.prompt_files import write_outputs

        return write_outputs(Path(out), self, png=png)


def _ci(e: Effect | None, digits: int = 3) -> str:
    if e is None:
        return "n/a (one prompt)"
    return f"{e.estimate:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]"


class _Stats:
    """Arrays of one result and the effects between them."""

    def __init__(self, res: ExperimentResult) -> None:
        self.res, self.cfg = res, res.config
        self.n_tasks = len(res.tasks)
        self.conds = list(res.conditions)
        self.paras = [c for c in self.conds if c.startswith("paraphrase")]
        self.ctrls = [c for c in self.conds if c.startswith("control")]
        self.topic_lex = next((n for n, x in res.lexicons.items() if x["role"] == "topic"),
                              next(iter(res.lexicons)))
        self.arms = [c for c in self.conds if c != "base"]  # each compared with base
        self.q_sampled = f"the share of sampled answers mentioning {self.topic_lex} (words not in the prompt)"
        self._vs_base: dict[str | None, list[Effect | None]] = {}

    def vs_base(self, lexicon: str | None) -> list[Effect | None]:
        """Each arm against base on a lexicon (the share of sampled answers mentioning it,
        copyable words left out) or, for None, on the fixed answer's preference; bootstrapped
        once per report (seeded: the same numbers), for the table and the pictures alike."""
        if lexicon not in self._vs_base:
            get = self.pref if lexicon is None else (lambda arm: self.sampled(arm, lexicon))
            self._vs_base[lexicon] = _per_arm(self, get, self.arms, "base")
        return self._vs_base[lexicon]

    # -- arrays (tasks, samples) ---------------------------------------------------------------
    def sampled(self, arm: str, lex: str, copyable: bool = False, greedy: bool = False) -> Arr:
        rows = []
        for t in self.res.tasks:
            skip = set() if copyable else {w.casefold() for w in t.copyable.get(lex, [])}
            answers = t.mentions[lex][arm]
            answers = answers[:1] if greedy else answers[1:]
            rows.append([float(any(w.casefold() not in skip for w in ws)) for ws in answers])
        return np.asarray(rows)  # (P, S)

    def fixed(self, arm: str, which: str = "pref") -> Arr:
        out = []
        for t in self.res.tasks:
            f = t.fixed[arm]
            top, neu = float(np.mean(f["topic"])), float(np.mean(f["neutral"]))
            out.append({"pref": top - neu, "topic": top, "neutral": neu}[which])
        return np.asarray(out)[:, None]  # (P, 1)

    def topic(self, arm: str) -> Arr:
        """(P, S) whether each sampled answer mentions the topic lexicon (words not in the prompt)."""
        return self.sampled(arm, self.topic_lex)

    def pref(self, arm: str) -> Arr:
        """(P, 1) the fixed answer's topic preference (nats/token)."""
        return self.fixed(arm)

    def pooled(self, get: Callable[[str], Arr], arms: list[str]) -> Arr | None:
        return np.mean([get(a) for a in arms], axis=0) if arms else None

    # -- effects -------------------------------------------------------------------------------
    def effect(self, a: Arr, b: Arr, m: int) -> Effect | None:
        if a.shape[0] == 1:  # one task: its samples are the units
            a, b = a.T, b.T  # (1, S) -> (S, 1)
            if a.shape[0] < 2:
                return None
        return effect(a, b, level=bonferroni_level(0.95, m), n_boot=self.cfg.n_boot, seed=self.cfg.seed,
                      family_size=m)


def _family(st: _Stats, get: Callable[[str], Arr], measure: str, quantity: str) -> list[Headline]:
    """Topic, paraphrases and controls against base, and topic/paraphrases against controls."""
    arms: dict[str, Arr] = {"base": get("base"), "topic": get("topic")}
    para, ctrl = st.pooled(get, st.paras), st.pooled(get, st.ctrls)
    pairs = [("topic", "topic", "base")]
    if para is not None:
        arms["paraphrases"] = para
        pairs.append(("paraphrases", "paraphrases", "base"))
    if ctrl is not None:
        arms["controls"] = ctrl
        pairs += [("controls", "controls", "base"), ("topic vs controls", "topic", "controls")]
        if para is not None:
            pairs.append(("paraphrases vs controls", "paraphrases", "controls"))
    out = []
    for key, b, a in pairs:
        e = st.effect(arms[a], arms[b], len(pairs))
        if e is not None:
            cond = f"the {b} condition" + ("" if a == "base" else f", against the {a},")
            v = verdict(e, condition=cond, quantity=quantity)
            out.append(Headline(f"{measure}: {key}", measure, e, v))
    return out


def _table(title: str, heads: list[Headline], note: str = "", digits: int = 3) -> Table:
    rows = [[h.key.split(": ", 1)[1], _ci(h.effect, digits), h.verdict.status] for h in heads]
    return Table(title, ["comparison", "effect [interval, family-wise 95 %]", "verdict"], rows, note)


def _per_arm(st: _Stats, get: Callable[[str], Arr], arms: list[str], ref: str) -> list[Effect | None]:
    return [st.effect(get(ref), get(a), len(arms)) for a in arms]


def build_report(res: ExperimentResult) -> PromptReport:
    """Every comparison of ``res`` with its interval and verdict, as headlines, tables and
    pictures' panels; the summary is the verdicts a reader needs first."""
    st = _Stats(res)
    h_s = _family(st, st.topic, "sampled", st.q_sampled)
    h_f = _family(st, st.pref, "fixed answer", Q_FIXED)
    h_i, h_k = _interventions(st), _sampled_interventions(st)
    h_p = _steering(st) if PASTA in res.tasks[0].fixed else []
    lexicons, negative = _lexicon_table(st)
    tables = [*_headline_tables(st, h_s, h_f, h_i, h_k, h_p), lexicons, _greedy_table(st, st.topic_lex)]
    token_table, token_panels = _token_table(st)
    tables.append(token_table)
    if res.tasks[0].dla:
        tables.append(_heads_table(st))
    grid: list[list[float]] = []
    if res.tasks[0].sweep:
        sweep_table, grid = _sweep_table(st)
        tables.append(sweep_table)
    tables.append(_examples(res))
    head = [h for h in (h_s + h_f) if h.key.endswith("topic vs controls")] or (h_s + h_f)[:1]
    ko_all = [h for h in h_i if "(all layers)" in h.key or RANDOM in h.key]
    steer = [h for h in h_p if "top vs random" in h.key]
    summary = [h.verdict.sentence for h in head + ko_all + steer] + negative
    title = (f"Prompt experiment on {res.model}: {res.config.flow} flow, {res.prompt_set} "
             f"({st.n_tasks} tasks, code {res.code_source})")
    return PromptReport(title, summary, h_s + h_f + h_i + h_k + h_p, tables, _panels(st, h_i, h_p), res,
                        token_panels, grid)


def _headline_tables(st: _Stats, h_s: list[Headline], h_f: list[Headline], h_i: list[Headline],
                     h_k: list[Headline], h_p: list[Headline]) -> list[Table]:
    """The tables of the headline comparisons: conditions, interventions, PASTA (with notes on
    what each compares and how its family is adjusted)."""
    res, cfg, lex = st.res, st.cfg, st.topic_lex
    what = (f"{st.n_tasks} tasks x {cfg.samples} samples (T {cfg.temperature}, {cfg.max_new_tokens} new "
            f"tokens)")
    tables = [
        _table(f"Sampled answers: do they mention {lex}? ({what})", h_s,
               f"Share of answers with a {lex} word that occurs in none of the task's prompts; paired "
               f"differences, Bonferroni over {len(h_s)}. Controls and paraphrases pooled per task."),
        _table("Fixed answer: log p(topic sentence) - log p(neutral sentence), mean per token", h_f,
               f"Topic: {res.fixed['topic']['text']!r}; neutral: {res.fixed['neutral']['text']!r}; the same "
               f"tokens under every condition (teacher forcing).", 4),
        _table("Interventions on the topic condition (fixed answer; vs no intervention)", h_i,
               f"Knockout: the {res.fixed['added_tokens']} added tokens' keys set to -inf (Geva et "
               f"al. 2023). Random: as many of the task's own tokens, seeded. Top heads: the "
               f"{cfg.steer_heads} heads writing most topic direction, ranked on the other half "
               f"of the tasks. A decrease is the claim.", 4),
        _table("Interventions on sampled answers (vs the topic condition)", h_k,
               f"The same knockouts as above, on the {cfg.samples} samples of each task (greedy answers "
               f"apart); Bonferroni over {len(h_k)}. A decrease is the claim."),
    ]
    if h_p:
        note = (f"PASTA (Zhang et al. 2023): in the {cfg.steer_heads} heads ranked on the other half of "
                f"the tasks (as above), every key outside the added words has its weight scaled by "
                f"{cfg.pasta_alpha} and the row renormalised; the control steers as many random heads. An "
                f"increase is the claim; 'top vs random heads' is the comparison that says whether the "
                f"chosen heads matter. Bonferroni over {len(h_p) // 2} per measure.")
        tables.append(_table("PASTA: the added words emphasised in the top heads, against random heads", h_p,
                             note, 4))
    return tables


def _interventions(st: _Stats) -> list[Headline]:
    """On the fixed answer, each knockout (all layers, per band, matched random draws pooled,
    top and random heads) and the words deleted, against no intervention: a decrease claimed."""
    fixed = st.res.tasks[0].fixed
    draws = [a for a in fixed if a.startswith(RANDOM)]
    arms: dict[str, Arr] = {a: st.pref(a) for a in fixed if a.startswith(KNOCK)}
    if draws:
        name = f"{RANDOM} (mean of {len(draws)} draw{'s' if len(draws) > 1 else ''})"
        arms[name] = np.mean([st.pref(a) for a in draws], axis=0)
    for a in (HEADS, RANDOM_HEADS):
        if a in fixed:
            arms[a] = st.pref(a)
    arms["delete the words (base prompt)"] = st.pref("base")
    out = []
    for key, arr in arms.items():
        e = st.effect(st.pref("topic"), arr, len(arms))
        if e is not None:
            out.append(Headline(f"intervention: {key}", "intervention", e,
                                verdict(e, direction="decrease", condition=key, quantity=Q_FIXED)))
    return out


def _sampled_interventions(st: _Stats) -> list[Headline]:
    """The same knockouts on the sampled answers, against the topic condition."""
    arms = [a for a in st.res.tasks[0].answers if a.startswith((KNOCK, RANDOM)) or a in (HEADS, RANDOM_HEADS)]
    out = []
    for arm in arms:
        e = st.effect(st.topic("topic"), st.topic(arm), len(arms))
        if e is not None:
            out.append(Headline(f"sampled intervention: {arm}", "sampled intervention", e,
                                verdict(e, direction="decrease", condition=arm, quantity=st.q_sampled)))
    return out


def _steering(st: _Stats) -> list[Headline]:
    """PASTA in the top heads and in random heads, each against the topic condition, and top
    against random: on the fixed answer and on sampled answers."""
    out = []
    for measure, get, q in (("fixed answer", st.pref, Q_FIXED), ("sampled", st.topic, st.q_sampled)):
        pairs = [(f"{PASTA} ({measure})", "topic", PASTA),
                 (f"{RANDOM_PASTA} ({measure})", "topic", RANDOM_PASTA),
                 (f"top vs random heads ({measure})", RANDOM_PASTA, PASTA)]
        for key, a, b in pairs:
            e = st.effect(get(a), get(b), len(pairs))
            if e is not None:
                out.append(Headline(f"PASTA: {key}", "PASTA", e,
                                    verdict(e, direction="increase", condition=key, quantity=q)))
    return out


def _lexicon_table(st: _Stats) -> tuple[Table, list[str]]:
    """Each condition against base on every lexicon (negative controls on the same scale), the
    topic lexicon with copyable words too, and the fixed answer; and, per negative-control
    lexicon, the verdict on the condition that moves it most."""
    res, lex = st.res, st.topic_lex
    arms = st.arms
    cols = ["condition", "text"]
    rows = [[a, res.conditions[a]] for a in arms]
    negative: list[str] = []
    for name, info in res.lexicons.items():
        cols.append(f"{name} ({info['role']})")
        per = st.vs_base(name)
        for r, e in zip(rows, per, strict=True):
            r.append(_ci(e, 2))
        found = [(e, a) for e, a in zip(per, arms, strict=True) if e is not None]
        if info["role"] != "topic" and found:
            e, a = max(found, key=lambda x: x[0].estimate)
            negative.append(verdict(e, condition=f"{a} ({res.conditions[a]!r}), against base,",
                                    quantity=f"the share of sampled answers mentioning {name}").sentence)
    cols.append(f"{lex}, copyable words too")
    for r, e in zip(rows, _per_arm(st, lambda a: st.sampled(a, lex, copyable=True), arms, "base"),
                    strict=True):
        r.append(_ci(e, 2))
    cols.append("fixed-answer preference")
    for r, e in zip(rows, st.vs_base(None), strict=True):
        r.append(_ci(e, 3))
    table = Table("Each condition vs base, on every lexicon (share of sampled answers) and the fixed "
                  "answer", cols, rows, f"Bonferroni over {len(arms)} conditions per column.")
    return table, negative


def _panels(st: _Stats, h_i: list[Headline], h_p: list[Headline]) -> list[dict[str, Any]]:
    """effects.png: each condition vs base (topic lexicon, fixed answer, the first negative
    control), the interventions, PASTA; a panel with no interval (one task) is left out."""
    arms, lex = st.arms, st.topic_lex
    negative = [name for name, info in st.res.lexicons.items() if info["role"] != "topic"][:1]
    panels = [_panel(f"Share of sampled answers mentioning {lex} (not copyable), vs base", arms,
                     st.vs_base(lex), "difference of shares"),
              _panel("Fixed answer: topic preference vs base (nats/token)", arms, st.vs_base(None),
                     "difference"),
              *[_panel(f"Share of sampled answers mentioning {name} (negative control), vs base", arms,
                       st.vs_base(name), "difference of shares")
                for name in negative],
              _panel("Interventions on the topic condition (fixed answer)",
                     [h.key.split(": ", 1)[1] for h in h_i], [h.effect for h in h_i],
                     "difference vs no intervention")]
    if h_p:
        panels.append(_panel("PASTA on the topic condition", [h.key.split(": ", 1)[1] for h in h_p],
                             [h.effect for h in h_p], "difference"))
    return [p for p in panels if p["labels"]]


def _panel(title: str, labels: list[str], effects: list[Effect | None], xlabel: str) -> dict[str, Any]:
    keep = [(lab, e) for lab, e in zip(labels, effects, strict=True) if e is not None]
    return {"title": title, "labels": [k for k, _ in keep], "estimates": [e.estimate for _, e in keep],
            "lows": [e.low for _, e in keep], "highs": [e.high for _, e in keep], "xlabel": xlabel}


def _greedy_table(st: _Stats, lex: str) -> Table:
    rows = []
    for a in st.conds:
        g = st.sampled(a, lex, greedy=True)
        rows.append([a, f"{int(g.sum())}/{g.size}"])
    note = "Greedy answers (one per task) mentioning the topic with words not in the prompt."
    if st.ctrls and st.n_tasks > 1:
        e = st.effect(st.pooled(lambda a: st.sampled(a, lex, greedy=True), st.ctrls),  # type: ignore[arg-type]
                      st.sampled("topic", lex, greedy=True), 1)
        note += f" Topic vs controls: {_ci(e, 2)}."
    return Table(f"Greedy answers mentioning {lex}", ["condition", "answers"], rows, note)


def _token_table(st: _Stats) -> tuple[Table, list[dict[str, Any]]]:
    """Which tokens of the fixed answers carry the difference between topic and controls, and
    which lose it under knockout: the table and its picture's panels."""
    res = st.res
    ref = st.ctrls or ["base"]
    ref_name = "controls" if st.ctrls else "base"
    rows, panels = [], []
    for which in ("topic", "neutral"):
        labels = res.fixed[which]["labels"]
        diffs: list[Effect | None] = []
        knocks: list[Effect | None] = []
        for i, lab in enumerate(labels):
            def tok(arm: str, i: int = i, which: str = which) -> Arr:
                return np.asarray([t.fixed[arm][which][i] for t in res.tasks])[:, None]  # (P, 1)
            b = np.mean([tok(a) for a in ref], axis=0)
            e = st.effect(b, tok("topic"), 1)
            k = st.effect(tok("topic"), tok(f"{KNOCK} (all layers)"), 1)
            diffs.append(e)
            knocks.append(k)
            rows.append([which, repr(lab), f"{float(tok('topic').mean()):.3f}", f"{float(b.mean()):.3f}",
                         _ci(e, 3), _ci(k, 3)])
        text = res.fixed[which]["text"]
        names = [f"{i}: {lab!r}" for i, lab in enumerate(labels)]
        panels += [_panel(f"{which} answer {text!r}: topic - {ref_name}, per token", names, diffs,
                          "difference of log p"),
                   _panel(f"{which} answer {text!r}: knockout (all layers) - topic, per token", names, knocks,
                          "difference of log p")]
    table = Table("The fixed answers token by token (log p per token)",
                  ["answer", "token", "topic", ref_name, f"topic - {ref_name}",
                   "knockout (all layers) - topic"], rows,
                  "Per-token 95 % intervals, not adjusted for the number of tokens; the same as a picture "
                  "in tokens.png.")
    return table, [p for p in panels if p["labels"]]


def _heads_table(st: _Stats) -> Table:
    res = st.res
    split = res.fixed["split"]
    tok = (res.fixed["topic"]["labels"][split], res.fixed["neutral"]["labels"][split])
    diff = np.asarray([np.asarray(t.dla["topic"]) - np.asarray(t.dla[res.dla_against]) for t in res.tasks])
    top = np.asarray([t.dla["topic"] for t in res.tasks])  # (P, L, H)
    mean = diff.mean(0)  # (L, H)
    order = np.argsort(-mean, axis=None)[:10]
    rows = []
    for idx in order:
        layer, head = divmod(int(idx), res.heads)
        e = st.effect(np.zeros((st.n_tasks, 1)), diff[:, layer, head][:, None], 1)  # (tasks,) -> (tasks, 1)
        rows.append([f"L{layer}H{head}", f"{float(top[:, layer, head].mean()):+.3f}", _ci(e, 3)])
    ld = np.asarray([[t.logit_diff["topic"], t.logit_diff[res.dla_against]] for t in res.tasks])
    e = st.effect(ld[:, 1:], ld[:, :1], 1)
    note = (f"Direct logit attribution (Elhage et al. 2021) of logit({tok[0]!r}) - logit({tok[1]!r}) "
            f"where the fixed answers part; per head, topic condition minus {res.dla_against}, mean over "
            f"tasks. "
            f"The model's logit difference, topic minus {res.dla_against}: {_ci(e, 3)}.")
    cols = ["head", "under topic", f"topic - {res.dla_against}"]
    return Table("Heads that write the topic direction", cols, rows, note)


def _sweep_table(st: _Stats) -> tuple[Table, list[list[float]]]:
    """The heads whose knockout alone moves the split logit difference most, with intervals
    adjusted for every head tried; and the (L, H) grid of mean effects for the picture."""
    res = st.res
    split = res.fixed["split"]
    tok = (res.fixed["topic"]["labels"][split], res.fixed["neutral"]["labels"][split])
    sweep = np.asarray([t.sweep for t in res.tasks])  # (P, L, H)
    mean = sweep.mean(0)  # (L, H)
    m = mean.size
    chosen = {tuple(h) for t in res.tasks for h in t.heads}
    rows = []
    flat = np.argsort(mean, axis=None)  # most negative first
    against = [i for i in flat[::-1][:3] if i not in flat[:10] and mean.flat[i] > 0]
    for idx in [*flat[:10], *against]:  # the 10 that carry most, up to 3 that work against it
        layer, head = divmod(int(idx), res.heads)
        e = st.effect(np.zeros((st.n_tasks, 1)), sweep[:, layer, head][:, None], m)  # (tasks,) -> (tasks, 1)
        v = verdict(e, direction="decrease", condition=f"L{layer}H{head}", quantity="the logit difference") \
            if e is not None else None
        rows.append([f"L{layer}H{head}", _ci(e, 3), v.status if v else "n/a",
                     "yes" if (layer, head) in chosen else ""])
    total = float(mean.sum())
    note = (f"The added words' keys knocked out of one head at a time ({res.layers} x {res.heads} heads), "
            f"teacher-forced on the fixed answers' shared start: the change in logit({tok[0]!r}) - "
            f"logit({tok[1]!r}) where they part, mean over tasks; intervals Bonferroni-adjusted for all "
            f"{m} heads. Sum of the {m} single-head effects: {total:+.3f} (knockouts interact: they need not "
            f"add up to the all-layer one). 'Top head' marks heads also chosen by direct logit "
            f"attribution for the head knockout above. The last rows (up to three): the heads whose "
            f"knockout raises it most (they work against the topic; 'reversed' for the claim of a "
            f"decrease). Picture: heads.png.")
    table = Table("Which heads carry it: the added words knocked out of each head alone",
                  ["head", "effect on the logit difference [interval]", "verdict", "top head (DLA)"],
                  rows, note)
    return table, mean.round(5).tolist()


def _examples(res: ExperimentResult) -> Table:
    t = res.tasks[0]
    arms = [a for a in ("topic", next((c for c in res.conditions if c.startswith("control")), "base"), "base",
                        KNOCK) if a in t.answers]
    rows = [[a, t.answers[a][0].strip()[:300], t.answers[a][1].strip()[:300] if len(t.answers[a]) > 1 else ""]
            for a in arms]
    return Table(f"Answers side by side (task {t.id!r})", ["condition", "greedy", "sample 1"], rows)
