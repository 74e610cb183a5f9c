"""Tab-separated parallel text, e.g. the TensorFlow NMT tutorial's and Anki's (Tatoeba) files:

    English<TAB>Other language<TAB>attribution

one pair per line. Which column is the source and which the target is a choice
(``src_col`` / ``tgt_col``, 1-based; by default the tutorial's ``target<TAB>source``: it
translates Spanish -> English with English first). Every line must have as many fields as the
first one: a ragged line usually means a tab inside a sentence or a missing field, which would
silently pair the wrong texts. Text is normalised (:func:`attnlab.data.tokenize.normalize`);
blank lines are skipped; anything else that does not fit raises :class:`DataError` naming the
file and the 1-based line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from attnlab.data.io import atomic_write_text
from attnlab.data.tokenize import Tokenizer, normalize


class Pair(NamedTuple):
    src: str
    tgt: str


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


@dataclass
class TsvData:
    pairs: list[Pair]
    blank: int = 0  # blank lines skipped
    too_long: int = 0  # pairs dropped by the length filters


def decode_line(path: Path | str, lineno: int, raw: bytes) -> str:
    """One line of a UTF-8 file without its line ending (and without a BOM on line 1, which
    Windows editors write and which would otherwise stick to the first word)."""
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: expected UTF-8 text, got undecodable bytes "
                        f"at column {e.start + 1}") from e
    return line.rstrip("\r\n")


def load_tsv(path: str | os.PathLike[str], *, src_col: int = 2, tgt_col: int = 1,
             lowercase: bool = False, src_tokenizer: Tokenizer | None = None,
             tgt_tokenizer: Tokenizer | None = None, max_src_len: int | None = None,
             max_tgt_len: int | None = None, option: str = "path") -> TsvData:
    """Read the pairs in columns ``src_col`` and ``tgt_col``; drop pairs longer (in tokens of
    the given tokenizers) than ``max_src_len`` / ``max_tgt_len``. ``option``: what a missing
    file is called in the error (the setting the user gave it with)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option}: expected a TSV file, got {str(path)!r} "
                                f"(no such file)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: expected tab-separated pairs, one per line, got an empty file")
    out = TsvData(pairs=[])
    width, first = 0, 0  # fields per line, fixed by the first non-blank line (number first)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_line(path, lineno, raw)
            if not line.strip():
                out.blank += 1
                continue
            fields = line.split("\t")
            if not width:
                width, first = _check_width(path, lineno, len(fields), src_col, tgt_col), lineno
            elif len(fields) != width:
                raise DataError(f"{path}:{lineno}: expected {width} tab-separated fields like "
                                f"line {first}, got {len(fields)} field(s): {line[:60]!r} (a tab "
                                f"inside a sentence, or a missing field?)")
            pair = Pair(src=_side(path, lineno, fields, src_col, "source", lowercase),
                        tgt=_side(path, lineno, fields, tgt_col, "target", lowercase))
            if too_long(pair, src_tokenizer, tgt_tokenizer, max_src_len, max_tgt_len):
                out.too_long += 1
                continue
            out.pairs.append(pair)
    if not out.pairs:
        raise DataError(f"{path}: expected at least one tab-separated pair, got none "
                        f"({out.blank} blank lines, {out.too_long} over the length limits)")
    return out


def _check_width(path: Path, lineno: int, width: int, src_col: int, tgt_col: int) -> int:
    need = max(src_col, tgt_col)
    if width < max(need, 2):
        raise DataError(f"{path}:{lineno}: expected at least {max(need, 2)} tab-separated fields "
                        f"(source in column {src_col}, target in column {tgt_col}), got "
                        f"{width}" + (" (no tab on the line)" if width == 1 else ""))
    return width


def _side(path: Path, lineno: int, fields: list[str], col: int, name: str,
          lowercase: bool) -> str:
    text = normalize(fields[col - 1], lowercase=lowercase)
    if not text:
        raise DataError(f"{path}:{lineno}: expected a non-empty {name} (column {col}), "
                        f"got an empty one")
    return text


def too_long(pair: Pair, st: Tokenizer | None, tt: Tokenizer | None,
             max_src: int | None, max_tgt: int | None) -> bool:
    if max_src is not None and len(st.tokenize(pair.src) if st else pair.src.split()) > max_src:
        return True
    return max_tgt is not None and len(tt.tokenize(pair.tgt) if tt else pair.tgt.split()) > max_tgt


def write_tsv(path: str | os.PathLike[str], pairs: Iterable[Pair]) -> None:
    """Write ``target<TAB>source`` lines atomically (the inverse of :func:`load_tsv`)."""
    lines = []
    for i, p in enumerate(pairs):
        for name, text in (("src", p.src), ("tgt", p.tgt)):
            if "\t" in text or "\n" in text or "\r" in text:
                raise ValueError(f"pairs[{i}].{name}: expected no tabs or newlines, got {text!r}")
        lines.append(f"{p.tgt}\t{p.src}\n")
    atomic_write_text(path, "".join(lines))
