"""Vocabulary with special tokens, saved as JSON next to the model.

Ids 0-3 are always ``<pad> <unk> <s> </s>``. A token not in the vocabulary encodes to
``<unk>``: at translation time the source's unknown tokens are reported (never silently
dropped), and the model reads them as the learned ``<unk>`` embedding.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence

from attnlab.data.io import FormatError, read_json, write_json

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
VOCAB_FORMAT = "attnlab.vocab/1"


class Vocab:
    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"tokens: expected to start with {SPECIALS}, got {tuple(tokens[:4])}")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, c in Counter(tokens).items() if c > 1][:5]
            raise ValueError(f"tokens: expected unique tokens, got duplicates {dup}")
        self.tokens: list[str] = list(tokens)
        self.index: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], *, min_freq: int = 1,
              max_size: int | None = None) -> Vocab:
        """Most frequent first, ties broken alphabetically: the same data gives the same ids."""
        counts = Counter(t for seq in sequences for t in seq)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                        key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self.index

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int], *, strip: bool = True) -> list[str]:
        """Ids -> tokens; with ``strip``, stop at ``</s>`` and drop ``<pad>``/``<s>``."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if strip and i == EOS_ID:
                break
            if strip and i in (PAD_ID, BOS_ID):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return out

    def unknown(self, tokens: Sequence[str]) -> list[str]:
        return [t for t in tokens if t not in self.index]

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, {"format": VOCAB_FORMAT, "tokens": self.tokens})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        d = read_json(path, "vocabulary")
        if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise FormatError(f"{path}: expected vocabulary format {VOCAB_FORMAT!r}, got {got!r}")
        try:
            return cls(d["tokens"])
        except (KeyError, ValueError) as e:
            raise FormatError(f"{path}: invalid vocabulary: {e}") from e
