"""Text -> token ids with the model's own ``tokenizer.json`` (Hugging Face ``tokenizers``).

The folder's tokenizer may carry padding and truncation settings (all-MiniLM-L6-v2's pads and
cuts every text to 128 tokens). Both are switched off here: a text longer than the model's
positions is an error unless the caller asks for ``truncate=True``, and then the cut is made by
``tokenizers`` itself so that the special tokens ([CLS] ... [SEP]) survive it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer

# Sub-word markers of the common tokenizer families: WordPiece "##", byte-level BPE "Ġ"
# (a leading space), SentencePiece "▁". Stripped when a user names a token (``--focus it``).
_MARKERS = re.compile(r"^(##|Ġ|▁)+")


def normalize_token(token: str) -> str:
    """The form used to match a user's word against tokens: no markers, no spaces, lower case."""
    return _MARKERS.sub("", token.strip()).strip().lower()


@dataclass(frozen=True)
class Encoded:
    """One tokenised text. Every list has one entry per token (position)."""

    text: str
    ids: list[int]
    tokens: list[str]  # the tokenizer's own strings ("##ing", "Ġit")
    labels: list[str]  # readable labels for pictures ("##ing", " it")
    offsets: list[tuple[int, int]]  # character span in ``text``; (0, 0) for special tokens
    special: list[bool]  # [CLS], [SEP], <|endoftext|>, ...
    type_ids: list[int]
    truncated: bool = False
    total_tokens: int = 0  # tokens before truncation

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with padding and truncation off, plus a length check."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, *, source: str = "tokenizer.json") -> None:
        self.source = source
        self.max_tokens = max_tokens
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self._lock = threading.Lock()  # enable/no_truncation mutate the tokenizer (server threads)
        # Byte-level BPE (GPT-2) spells bytes as printable stand-ins ("Ġ" = space); its decoder
        # turns a token back into text for labels.
        self.byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"

    @classmethod
    def from_file(cls, path: Path, max_tokens: int) -> TextTokenizer:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception subclass on bad JSON
            raise ValueError(f"{path}: expected a Hugging Face tokenizer.json, "
                             f"could not read it ({e})") from None
        return cls(tok, max_tokens, source=str(path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def piece_ids(self, text: str) -> list[int]:
        """Ids of ``text`` alone: no special tokens added around it, no length check."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(i) or f"<{i}>"

    def special_strings(self) -> list[str]:
        """The text of every special added token (``<|im_end|>``, ``<s>``, ...)."""
        return [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]

    def _encode_spans(self, text: str, plain: Sequence[tuple[int, int]]) -> Any:
        """``text`` encoded with special-token strings inside the ``plain`` spans read as
        ordinary text (tokenizers' ``encode_special_tokens``, what transformers calls
        ``split_special_tokens``), the rest as usual; then the post-processor (BOS...)."""
        cuts, pos = [], 0
        for a, b in sorted(plain):
            if a > pos:
                cuts.append((pos, a, False))
            cuts.append((max(a, pos), b, True))
            pos = max(pos, b)
        if pos < len(text):
            cuts.append((pos, len(text), False))
        encs = []
        with self._lock:  # encode_special_tokens is the tokenizer's state (server threads)
            try:
                for a, b, is_plain in cuts:
                    if b > a:
                        self._tok.encode_special_tokens = is_plain
                        encs.append(self._tok.encode(text[a:b], add_special_tokens=False))
            finally:
                self._tok.encode_special_tokens = False
        return self._tok.post_process(Encoding.merge(encs, growing_offsets=True))

    def encode(self, text: str, *, truncate: bool = False, name: str = "text",
               plain: Sequence[tuple[int, int]] = ()) -> Encoded:
        """Tokenise ``text``. More than ``max_tokens`` tokens is a ValueError unless ``truncate``.
        ``plain``: character spans (a user's text inside a chat template) whose special-token
        strings are ordinary text, not the special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"{name}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{name}: expected some text, got an empty string")
        if plain:
            enc = self._encode_spans(text, plain)
            total = len(enc.ids)
            if total > self.max_tokens:
                if not truncate:
                    raise ValueError(f"{name}: expected at most {self.max_tokens} tokens (the model's "
                                     f"positions), got {total}; shorten it")
                enc.truncate(self.max_tokens)
            return self._pack(text, enc, total)
        enc = self._tok.encode(text)
        total = len(enc.ids)
        if total > self.max_tokens:
            if not truncate:
                raise ValueError(
                    f"{name}: expected at most {self.max_tokens} tokens (the model's positions), got "
                    f"{total}; shorten it or pass --truncate (truncate=True) to keep the first "
                    f"{self.max_tokens}"
                )
            with self._lock:
                self._tok.enable_truncation(self.max_tokens)
                try:
                    enc = self._tok.encode(text)
                finally:
                    self._tok.no_truncation()
        if not any(not s for s in _special(enc)):
            raise ValueError(f"{name}: expected text that gives at least one token, got {text!r}")
        return self._pack(text, enc, total)

    def encode_ids(self, ids: list[int], text: str = "", special: list[bool] | None = None) -> Encoded:
        """An :class:`Encoded` for ids that did not come from text (generation, probes)."""
        tokens = [self.id_to_token(i) for i in ids]
        sp = [False] * len(ids) if special is None else list(special)
        labels = [t if s else self.label(t) for t, s in zip(tokens, sp, strict=True)]
        return Encoded(text or self.decode(ids), list(ids), tokens, labels,
                       [(0, 0)] * len(ids), sp, [0] * len(ids), False, len(ids))

    def special_frame(self) -> tuple[list[int], list[int]]:
        """The special ids the post-processor puts before and after a text ([CLS] / [SEP])."""
        enc = self._tok.encode("a")
        sp = _special(enc)
        first = sp.index(False) if False in sp else len(sp)
        last = len(sp) - sp[::-1].index(False) if False in sp else len(sp)
        return list(enc.ids[:first]), list(enc.ids[last:])

    def label(self, token: str) -> str:
        return self._tok.decoder.decode([token]) if self.byte_level else token

    def _pack(self, text: str, enc, total: int) -> Encoded:
        special = _special(enc)
        labels = [self.label(t) if not s else t for t, s in zip(enc.tokens, special, strict=True)]
        return Encoded(text, list(enc.ids), list(enc.tokens), labels, [tuple(o) for o in enc.offsets],
                       special, list(enc.type_ids), total > len(enc.ids), total)


def _special(enc) -> list[bool]:
    return [bool(m) for m in enc.special_tokens_mask]
