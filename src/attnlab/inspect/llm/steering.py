"""Score mods that intervene on attention during generation, and the topic measure.

- :func:`knockout` removes chosen key positions from chosen layers' attention (score -> -inf),
  the causal test of "does the answer depend on attending to these words?" (the attention
  knockout of Geva et al. 2023, "Dissecting Recall of Factual Associations").
- :func:`pasta` is PASTA (Zhang et al. 2023, "Tell Your Model Where to Attend", eq. 2): in the
  chosen heads, attention to every key outside the emphasised span is scaled by ``alpha`` and
  the row renormalised — done here by adding log(alpha) to those scores before the softmax,
  which is the same thing.
- :class:`Topic` is the probability mass a model puts on a lexicon's tokens at a position: a
  measure of "how much is the answer about X" fixed before any run, not picked per answer.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.attention import ScoreMod

SECURITY_LEXICON = (
    "secure",
    "security",
    "password",
    "passwords",
    "hash",
    "hashed",
    "hashing",
    "bcrypt",
    "argon2",
    "salt",
    "encrypt",
    "encrypted",
    "encryption",
    "https",
    "csrf",
    "token",
    "authentication",
    "authenticate",
    "vulnerability",
    "vulnerable",
    "attack",
    "attacker",
    "attacks",
    "injection",
    "sanitize",
    "validate",
    "validation",
    "safe",
    "safely",
    "protect",
    "protection",
    "credentials",
    "brute",
    "xss",
    "sql",
    "secret",
    "permission",
    "verify",
)


def knockout(positions: Collection[int]) -> ScoreMod:
    """Keys at ``positions`` (absolute, i.e. counting the KV cache) get score -inf."""
    idx = torch.tensor(sorted(set(positions)), dtype=torch.long, device="cpu")  # moved to the scores' device

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        hit = torch.isin(kv, idx.to(kv.device))
        return score.masked_fill(hit, float("-inf"))

    mod.__name__ = f"knockout[{len(idx)} keys]"
    return mod


def check_alpha(alpha: float) -> float:
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha <= 1
    if not ok:
        raise ValueError(f"alpha: expected a number in (0, 1] (PASTA scales the other keys by it), "
                         f"got {alpha!r}")
    return float(alpha)


def pasta(span: Collection[int], heads: Collection[int], alpha: float) -> ScoreMod:
    """In ``heads``, keys outside ``span`` get log(alpha) added: their weights scale by alpha."""
    check_alpha(alpha)
    if not span or not heads:
        raise ValueError(f"pasta: expected a non-empty span and heads, got span={list(span)}, "
                         f"heads={list(heads)}")
    keep = torch.tensor(sorted(set(span)), dtype=torch.long, device="cpu")  # moved to the scores' device
    hs = torch.tensor(sorted(set(heads)), dtype=torch.long, device="cpu")
    penalty = math.log(alpha)

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        outside = ~torch.isin(kv, keep.to(kv.device)) & torch.isin(h, hs.to(h.device))
        return score + outside.to(score.dtype) * penalty

    mod.__name__ = f"pasta[alpha={alpha}]"
    return mod


def per_layer(mod: ScoreMod, layers: Iterable[int]) -> dict[int, ScoreMod]:
    return {i: mod for i in layers}


def per_head_layers(heads: Sequence[tuple[int, int]], make) -> dict[int, ScoreMod]:
    """``{layer: make(heads of that layer)}`` for (layer, head) pairs."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return {layer: make(hs) for layer, hs in by_layer.items()}


@dataclass
class Topic:
    """A lexicon as token ids: each word in four spellings (word, " word", Word, " Word"),
    kept where the spelling is one token, so its probability is one softmax entry."""

    words: tuple[str, ...]
    ids: Tensor  # (n,) unique token ids
    used: list[str]  # spellings that are single tokens

    @classmethod
    def from_words(cls, tokenizer, words: Sequence[str]) -> Topic:
        if isinstance(words, str):
            raise TypeError(f"topic: expected a sequence of words (e.g. ['secure', 'hash']), got the string "
                            f"{words!r}")
        clean = tuple(w.strip() for w in words if w.strip())
        if not clean:
            raise ValueError(f"topic: expected at least one word, got {list(words)!r}")
        ids: dict[int, str] = {}
        for w in clean:
            for form in (w, " " + w, w.capitalize(), " " + w.capitalize()):
                piece = tokenizer.piece_ids(form)
                if len(piece) == 1:
                    ids.setdefault(piece[0], form)
        if not ids:
            raise ValueError(
                f"topic: none of {list(clean)!r} is a single token of this model's vocabulary; "
                f"pass other words with --topic"
            )
        return cls(clean, torch.tensor(sorted(ids), device="cpu"), sorted(ids.values()))

    def mass(self, logits: Tensor) -> float:
        """Probability on the lexicon at one position: sum of softmax(logits)[ids]."""
        return float(torch.softmax(logits.double(), dim=-1)[self.ids.to(logits.device)].sum())
