"""Normalisation and word / character tokenisation.

Word level splits into runs of letters/digits and single punctuation marks
(``"twenty-three."`` -> ``twenty - three .``), the way the TensorFlow NMT tutorial spaces out
punctuation; hyphens become tokens so "eighty - seven" can align with German "sieben und
achtzig". Character level keeps every character, the space included.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["word", "char"]
LEVELS: tuple[str, ...] = ("word", "char")
_WORD = re.compile(r"\w+|[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize(text: str, *, lowercase: bool = False) -> str:
    """NFKC (so e.g. narrow no-break spaces become spaces), optional lowercase,
    whitespace runs collapsed to one space, ends stripped."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Tokenizer:
    level: Level = "word"
    lowercase: bool = False

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level: expected one of {', '.join(LEVELS)}, got {self.level!r}")

    def tokenize(self, text: str) -> list[str]:
        text = normalize(text, lowercase=self.lowercase)
        return _WORD.findall(text) if self.level == "word" else list(text)

    def detokenize(self, tokens: list[str]) -> str:
        return " ".join(tokens) if self.level == "word" else "".join(tokens)

    def canonical(self, text: str) -> str:
        """The text as the model sees it: references for BLEU are compared in this form."""
        return self.detokenize(self.tokenize(text))

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        return cls(level=d.get("level", "word"), lowercase=bool(d.get("lowercase", False)))
