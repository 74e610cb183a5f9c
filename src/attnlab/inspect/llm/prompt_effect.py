"""The "how secure is this code" prompt experiment, measured: do words added to a prompt steer
the answer through attention?

``prompt_effect(lm, base, add)`` generates greedily from ``base`` and from ``base + add`` and
reports, side by side:

a. both answers;
b. a topic measure fixed in advance — the probability mass on a lexicon's tokens (security by
   default) at each answer position — mean and total, for both prompts;
c. for each token of the augmented answer, the share of attention (rows recorded while it was
   generated) on the added words, per layer (mean over heads), and the heads that give them
   most; with the uniform share (added tokens / visible keys) as the baseline;
d. attention knockout: the augmented prompt again with the added words masked out of
   attention in all layers, then per band of layers — how far the answer (chrF to the base
   answer) and the topic measure move back towards the base prompt's;
e. optionally PASTA steering of the base prompt (``emphasize`` + ``alpha``) in the heads of (c),
   and the topic shift it causes without adding any word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.echo import shown
from attnlab.inspect.llm.generation import Generation, check_capture, fit_prompt, generate_text
from attnlab.inspect.llm.steering import (
    SECURITY_LEXICON,
    Topic,
    check_alpha,
    knockout,
    pasta,
    per_head_layers,
    per_layer,
)
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded
from attnlab.viz.tables import Block, Table, markdown

DEFAULT_BASE = "create a python post request handler of a login form"
DEFAULT_ADD = "Make it secure."


@dataclass(frozen=True)
class RunSummary:
    """One run as reported: rounded here, once, for the JSON and the tables alike."""

    label: str
    answer: str
    tokens: int
    topic_mean: float  # 6 significant digits
    topic_total: float  # 4 decimals
    chrf_to_base: float | None = None  # 2 decimals; None: the base run itself

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "answer": self.answer, "tokens": self.tokens,
                               "topic_mean": self.topic_mean, "topic_total": self.topic_total}
        if self.chrf_to_base is not None:
            out["chrf_to_base"] = self.chrf_to_base
        return out


@dataclass(frozen=True)
class KnockoutSummary(RunSummary):
    """A knockout run as reported, with how far it moved the topic mass back to the base's."""

    moved_back: float | None = None  # 3 decimals; None when the topic gap is noise

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"topic_moved_back": self.moved_back}


@dataclass
class ConditionRun:
    label: str
    generation: Generation
    topic: list[float]  # mass on the lexicon at each answer position

    @property
    def topic_mean(self) -> float:
        return sum(self.topic) / max(len(self.topic), 1)

    def summary(self, base_answer: str | None = None) -> RunSummary:
        chrf_to_base = None if base_answer is None else round(chrf(self.generation.text, base_answer), 2)
        return RunSummary(self.label, self.generation.text, len(self.generation.new_ids),
                          float(f"{self.topic_mean:.6g}"), round(sum(self.topic), 4), chrf_to_base)


def chrf(hyp: str, ref: str) -> float:
    """Character n-gram F-score (Popović 2015) with sacrebleu: how alike two answers are."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(hyp, [ref]).score)


def span_positions(enc: Encoded, start: int, end: int) -> list[int]:
    """Token positions whose characters overlap text[start:end] (special tokens excluded)."""
    return [
        i
        for i, ((a, b), sp) in enumerate(zip(enc.offsets, enc.special, strict=True))
        if not sp and a < end and b > start
    ]


def _word_at(text: str, words: str) -> int:
    """Start of the first whole-word, case-insensitive occurrence of ``words`` in ``text``, or -1."""
    m = re.search(rf"(?<!\w){re.escape(words.strip())}(?!\w)", text, flags=re.IGNORECASE)
    return -1 if m is None or not words.strip() else m.start()


def user_span(enc: Encoded, user_text: str) -> int:
    """Where the user's message starts in the rendered prompt (its last occurrence: the chat
    template puts the system message and role headers around it)."""
    at = enc.text.rfind(user_text)
    if at < 0:
        raise ValueError(f"prompt: the chat template changed the message; could not find "
                         f"{shown(user_text)} in it")
    return at


def find_span(enc: Encoded, words: str, *, user_text: str, name: str = "add") -> list[int]:
    """Positions of the tokens of ``words`` as a whole word inside the user's message of ``enc``
    (never in the template around it)."""
    at = user_span(enc, user_text)
    rel = _word_at(user_text, words)
    if rel < 0:
        inside = span_positions(enc, at, at + len(user_text))
        shown = ", ".join(repr(enc.labels[i]) for i in inside)
        raise ValueError(
            f"{name}: expected whole words of the prompt, got {words!r}; the prompt's tokens are: {shown}"
        )
    start = at + rel
    return span_positions(enc, start, start + len(words.strip()))


@dataclass(frozen=True)
class HeadShare:
    layer: int
    head: int
    share: float  # mean share of attention on the added words, 4 decimals

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "head": self.head, "share": self.share}


@dataclass(frozen=True)
class Steering:
    """PASTA on the base prompt: the words emphasised, their token span, the heads steered."""

    emphasize: str
    alpha: float
    span: list[int]
    heads: list[tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"emphasize": self.emphasize, "alpha": self.alpha, "span": self.span, "heads": self.heads}


@dataclass
class PromptEffect:
    base: ConditionRun
    augmented: ConditionRun
    added_text: str
    added_positions: list[int]  # in the augmented prompt's tokens
    share: Tensor  # (n_answer, L) share of attention on the added tokens, mean over heads
    share_heads: Tensor  # (L, H) mean over answer tokens
    uniform: list[float]  # per answer token: added / visible keys (what uniform attention gives)
    knockouts: list[ConditionRun] = field(default_factory=list)
    steered: ConditionRun | None = None
    steering: Steering | None = None
    topic: Topic | None = None

    @property
    def model(self) -> str:
        return self.base.generation.model

    @property
    def share_mean(self) -> float:
        """Mean share of attention on the added words over answer tokens, layers and heads."""
        return round(float(self.share.mean()), 4)

    @property
    def share_by_layer(self) -> list[float]:
        """Per layer, mean share over answer tokens and heads."""
        return [round(float(x), 4) for x in self.share.mean(0)]

    @property
    def uniform_mean(self) -> float:
        """What uniform attention would give, mean over answer tokens."""
        return round(sum(self.uniform) / max(len(self.uniform), 1), 4)

    def top_heads(self, n: int = 8) -> list[HeadShare]:
        H = self.share_heads.shape[1]
        order = self.share_heads.flatten().argsort(descending=True)[:n].tolist()  # (L, H) -> (L*H,)
        return [HeadShare(i // H, i % H, round(float(self.share_heads.flatten()[i]), 4)) for i in order]

    def moved_back(self, run: ConditionRun) -> float | None:
        """Fraction of the topic effect a knockout removes: 1 = back to the base prompt's level."""
        gap = self.augmented.topic_mean - self.base.topic_mean
        # A ratio over a gap that is noise is meaningless: ask for 10% of the larger mass, and 1e-6.
        if abs(gap) < max(1e-6, 0.1 * max(self.augmented.topic_mean, self.base.topic_mean)):
            return None
        return (self.augmented.topic_mean - run.topic_mean) / gap

    def knockout_summaries(self) -> list[KnockoutSummary]:
        ref = self.base.generation.text
        out = []
        for r in self.knockouts:
            mb = self.moved_back(r)
            moved_back = None if mb is None else round(mb, 3)
            out.append(KnockoutSummary(**vars(r.summary(ref)), moved_back=moved_back))
        return out

    @property
    def topic_shift(self) -> float | None:
        """PASTA's change of the topic mass against the base prompt (5 decimals)."""
        return None if self.steered is None else round(self.steered.topic_mean - self.base.topic_mean, 5)

    def to_dict(self) -> dict[str, Any]:
        ref = self.base.generation.text
        enc = self.augmented.generation.prompt
        out: dict[str, Any] = {
            "model": self.model,
            "base": self.base.summary().to_dict(),
            "augmented": self.augmented.summary(ref).to_dict(),
            "added": {"text": self.added_text, "positions": self.added_positions,
                      "tokens": [enc.labels[p] for p in self.added_positions]},
            "topic_words": list(self.topic.used) if self.topic else [],
            "share_by_layer": self.share_by_layer,
            "share_mean": self.share_mean,
            "uniform_share_mean": self.uniform_mean,
            "top_heads": [h.to_dict() for h in self.top_heads()],
            "knockout": [k.to_dict() for k in self.knockout_summaries()],
        }
        if self.steered is not None and self.steering is not None:
            out["steering"] = (self.steering.to_dict() | self.steered.summary(ref).to_dict()
                               | {"topic_shift": self.topic_shift})
        return out

    def blocks(self, *, per_layer: bool = False) -> list[Block]:
        """The answers side by side, the share of attention on the added words (``per_layer``:
        with its table per layer, as result.md has it), the knockouts and PASTA: what the
        terminal and result.md show."""
        b, a = self.base.summary(), self.augmented.summary(self.base.generation.text)
        answers = Table(f"{self.model}: adding {self.added_text!r}", ["base prompt", "+ added words"],
                        [[b.answer, a.answer], [f"topic mass {r.topic_mean:.4f} / token" for r in (b, a)]],
                        ruled=True)
        share = (f"share of attention on the added words: {self.share_mean:.3f} (uniform attention would "
                 f"give {self.uniform_mean:.3f}); heads giving most: "
                 + ", ".join(f"L{h.layer}H{h.head} {h.share:.2f}" for h in self.top_heads()[:5]))
        rows = [["base", f"{b.topic_mean:.4f}", "", "100"],
                ["augmented", f"{a.topic_mean:.4f}", "", f"{a.chrf_to_base:.1f}"]]
        for k in self.knockout_summaries():
            moved = "" if k.moved_back is None else f"{100 * k.moved_back:.0f}%"
            rows.append([k.label, f"{k.topic_mean:.4f}", moved, f"{k.chrf_to_base:.1f}"])
        knock = Table("attention knockout of the added words",
                      ["run", "topic mass / token", "moved back", "chrF to base answer"], rows)
        out: list[Block] = [answers, share, knock]
        if per_layer:  # result.md: a table cell would fold the answers (code, mostly) onto one line
            shown = [f"**{name}** (topic mass {r.topic_mean:.4f} / token):\n\n{_fenced(r.answer)}"
                     for name, r in (("base prompt", b), ("+ added words", a))]
            out[0] = f"## {self.model}: adding {self.added_text!r}\n\n" + "\n\n".join(shown)
            out.insert(2, Table("share of attention on the added words per layer", ["layer", "share"],
                                [[str(i), f"{x:.4f}"] for i, x in enumerate(self.share_by_layer)],
                                "Mean over the answer's tokens and the layer's heads."))
        if self.steered is not None and self.steering is not None:
            s, run = self.steering, self.steered.summary()
            out.append(f"PASTA emphasize {s.emphasize!r} (alpha {s.alpha}) in {len(s.heads)} heads: topic "
                       f"mass {run.topic_mean:.4f} ({self.topic_shift:+.4f}); answer: {run.answer!r}")
        return out

    def markdown(self) -> str:
        return markdown(self.blocks(per_layer=True), title=f"Prompt effect on {self.model}")


    def write(self, out: str | Path | None = None, *, png: str | Path | None = None,
              html: str | Path | None = None) -> list[str]:
        """The folder ``out`` (generation.html, share.png, share.html, result.json, result.md;
        the JSON and markdown atomically) and/or the share picture ``png`` and page ``html``;
        returns the paths written."""
        from attnlab.data.io import atomic_write_text, write_json
        from attnlab.inspect.llm.llm_views import generation_page, share_page, share_png

        folder = None if out is None else Path(out)
        files = []
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            png, html = png or folder / "share.png", html or folder / "share.html"
            files.append(str(generation_page(self.augmented.generation, folder / "generation.html")))
        for path, write in ((png, share_png), (html, share_page)):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                files.append(str(write(self, path)))
        if folder is not None:
            write_json(folder / "result.json", self.to_dict() | {"files": files})
            atomic_write_text(folder / "result.md", self.markdown())
            files += [str(folder / "result.json"), str(folder / "result.md")]
        return files


def _run(lm: LoadedModel, label: str, prompt: str, topic: Topic, **kw: Any) -> ConditionRun:
    masses: list[float] = []
    g = generate_text(lm, prompt, on_logits=lambda lg: masses.append(topic.mass(lg)), **kw)
    return ConditionRun(label, g, masses)


def layer_bands(n_layers: int, bands: int = 3) -> list[range]:
    edges = [round(i * n_layers / bands) for i in range(bands + 1)]
    return [range(edges[i], edges[i + 1]) for i in range(bands) if edges[i + 1] > edges[i]]


def prompt_effect(
    lm: LoadedModel,
    base: str = DEFAULT_BASE,
    add: str = DEFAULT_ADD,
    *,
    topic_words: Sequence[str] = SECURITY_LEXICON,
    max_new_tokens: int = 48,
    system: str | None = None,
    bands: int | None = None,
    emphasize: str | None = None,
    alpha: float = 0.01,
    steer_heads: int = 8,
    special_tokens: bool = False,
) -> PromptEffect:
    """``special_tokens``: special-token strings in ``base`` and ``add`` act as the special tokens
    (an injection on purpose); by default they are plain text (generation.user_spans)."""
    if not isinstance(add, str) or not add.strip():
        raise ValueError(f"add: expected words to add to the prompt, got {shown(add)}")
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"prompt: expected some text, got {shown(base)}")
    if _word_at(base, add) >= 0:
        raise ValueError(f"add: {shown(add)} is already in the prompt {shown(base)}; add words it does "
                         f"not have")
    augmented = f"{base.rstrip()} {add.strip()}"
    # The augmented run captures every head's attention while it generates: refuse first.
    fitted = fit_prompt(lm, augmented, system=system, max_new_tokens=max_new_tokens,
                        special_tokens=special_tokens)
    check_capture(lm, len(fitted), max_new_tokens)
    bands = min(3, lm.num_layers) if bands is None else bands  # thirds: early, middle, late layers
    expect_int("bands", bands, 1, lm.num_layers,
               expected=f"an int in 1..{lm.num_layers} (the model's layers)")
    n_heads = lm.num_layers * lm.num_heads
    expect_int("steer_heads", steer_heads, 1, n_heads, expected=f"an int in 1..{n_heads} (layers x heads)")
    if emphasize is not None and _word_at(base, emphasize) < 0:
        find_span(fit_prompt(lm, base, system=system, special_tokens=special_tokens), emphasize,
                  user_text=base, name="emphasize")
    check_alpha(alpha)
    topic = Topic.from_words(lm.tokenizer, topic_words)
    kw: dict[str, Any] = {"system": system, "max_new_tokens": max_new_tokens,
                          "special_tokens": special_tokens}
    b = _run(lm, "base", base, topic, **kw)
    a = _run(lm, "augmented", augmented, topic, capture=True, **kw)
    enc = a.generation.prompt
    start = user_span(enc, augmented) + len(base.rstrip()) + 1  # the added words end the message
    added = span_positions(enc, start, start + len(add.strip()))
    share, share_heads, uniform = _added_share(a.generation, added)
    eff = PromptEffect(b, a, add.strip(), added, share, share_heads, uniform, topic=topic)
    L = lm.num_layers
    groups = [("all layers", range(L))] + [
        (f"layers {r.start}-{r.stop - 1}", r) for r in layer_bands(L, bands)
    ]
    for label, layers in groups:
        mods = per_layer(knockout(added), layers)
        eff.knockouts.append(_run(lm, f"knockout {label}", augmented, topic, score_mods=mods, **kw))
    if emphasize is not None:
        eff.steered, eff.steering = _steer(lm, base, emphasize, alpha, eff.top_heads(steer_heads), topic, kw)
    return eff


def _added_share(g: Generation, added: list[int]) -> tuple[Tensor, Tensor, list[float]]:
    """Rows that produced each answer token: position P-1 produced token 0, P-1+t token t."""
    rec = g.recorder
    assert rec is not None
    P = len(g.prompt)
    idx = torch.tensor(added, device="cpu")  # the recorder's rows are on the CPU
    rows = [rec.row(P - 1 + t) for t in range(len(g.new_ids)) if P - 1 + t < len(rec)]
    per = torch.stack([r.float()[:, :, idx].sum(-1) for r in rows])  # (T, L, H)
    uniform = [len(added) / r.shape[-1] for r in rows]
    return per.mean(-1), per.mean(0), uniform  # (T, L), (L, H)


def _steer(
    lm: LoadedModel,
    base: str,
    words: str,
    alpha: float,
    heads: list[HeadShare],
    topic: Topic,
    kw: dict[str, Any],
) -> tuple[ConditionRun, Steering]:
    enc = fit_prompt(lm, base, system=kw.get("system"), special_tokens=kw.get("special_tokens", False))
    span = find_span(enc, words, user_text=base, name="emphasize")
    pairs = [(h.layer, h.head) for h in heads]
    mods = per_head_layers(pairs, lambda hs: pasta(span, hs, alpha))
    run = _run(lm, f"PASTA emphasize {words!r}", base, topic, score_mods=mods, **kw)
    return run, Steering(words, alpha, span, pairs)


def _fenced(text: str) -> str:
    """``text`` as a fenced block that no run of backticks inside it can close."""
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"
