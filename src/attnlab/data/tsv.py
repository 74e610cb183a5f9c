"""Tab-separated parallel text, as in the TensorFlow NMT tutorial (Anki's spa-eng):

    target<TAB>source[<TAB>attribution]

one pair per line (the tutorial translates Spanish -> English with English first). Text is
normalised (:func:`attnlab.data.tokenize.normalize`); blank lines are skipped; anything else
that does not fit raises :class:`DataError` naming the file and the 1-based line.
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


def load_tsv(path: str | os.PathLike[str], *, lowercase: bool = False,
             src_tokenizer: Tokenizer | None = None, tgt_tokenizer: Tokenizer | None = None,
             max_src_len: int | None = None, max_tgt_len: int | None = None) -> TsvData:
    """Read ``target<TAB>source[<TAB>attribution]`` lines; drop pairs longer (in tokens of the
    given tokenizers) than ``max_src_len`` / ``max_tgt_len``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected a TSV file, got {str(path)!r} (no such file)")
    out = TsvData(pairs=[])
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            pair = _parse_line(path, lineno, raw, lowercase)
            if pair is None:
                out.blank += 1
                continue
            if _too_long(pair, src_tokenizer, tgt_tokenizer, max_src_len, max_tgt_len):
                out.too_long += 1
                continue
            out.pairs.append(pair)
    if not out.pairs:
        raise DataError(f"{path}: expected at least one 'target<TAB>source' pair, got none "
                        f"({out.blank} blank lines, {out.too_long} over the length limits)")
    return out


def _parse_line(path: Path, lineno: int, raw: bytes, lowercase: bool) -> Pair | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: expected UTF-8 text, got undecodable bytes "
                        f"at column {e.start + 1}") from e
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    fields = line.split("\t")
    if len(fields) not in (2, 3):
        raise DataError(f"{path}:{lineno}: expected 'target<TAB>source[<TAB>attribution]' "
                        f"(2 or 3 tab-separated fields), got {len(fields)} field(s): "
                        f"{line[:60]!r}")
    tgt, src = (normalize(x, lowercase=lowercase) for x in fields[:2])
    for name, value in (("target (field 1)", tgt), ("source (field 2)", src)):
        if not value:
            raise DataError(f"{path}:{lineno}: expected a non-empty {name}, got an empty one")
    return Pair(src=src, tgt=tgt)


def _too_long(pair: Pair, st: Tokenizer | None, tt: Tokenizer | None,
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
