"""Two aligned plain-text files, one sentence per line: line i of the source file translates
line i of the target file (the layout of Moses, OPUS and the WMT corpora: ``train.en`` +
``train.es``).

A line blank in both files is skipped; a line blank in only one of them, or files of
different lengths, mean the files are out of step, and every pair after that point would be
wrong, so they are errors naming the file and line. Blank lines at the very end of either
file (an extra newline) are ignored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from attnlab.data.tokenize import normalize
from attnlab.data.tsv import DataError, Pair, TsvData, decode_line


def read_lines(path: Path | str, option: str, *, keep_trailing: bool = False) -> list[str]:
    """The decoded lines of ``path`` (``-``: standard input); errors name ``file:line``.
    Blank lines at the end are dropped unless ``keep_trailing``."""
    if str(path) == "-":
        name, data = "<stdin>", sys.stdin.buffer.read()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{option}: expected a text file, got {str(path)!r} "
                                    f"(no such file)")
        name, data = str(path), path.read_bytes()
    raws = data.split(b"\n")  # "\n" only, as `wc -l` and the TSV reader count lines
    if raws[-1] == b"":
        raws.pop()  # the newline that ends the last line
    lines = [decode_line(name, i, raw) for i, raw in enumerate(raws, start=1)]
    while lines and not keep_trailing and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{option}: expected one sentence per line in {name}, got "
                        f"{'only blank lines' if raws else 'an empty file'}")
    return lines


def load_aligned(src_path: str | os.PathLike[str], tgt_path: str | os.PathLike[str], *,
                 lowercase: bool = False) -> TsvData:
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src = read_lines(src_path, "data.src_path")
    tgt = read_lines(tgt_path, "data.tgt_path")
    if len(src) != len(tgt):
        raise DataError(f"data.src_path / data.tgt_path: expected files with the same number of "
                        f"lines (line i of one translates line i of the other), got {len(src)} "
                        f"lines in {src_path} and {len(tgt)} in {tgt_path}")
    out = TsvData(pairs=[])
    for lineno, (s_line, t_line) in enumerate(zip(src, tgt, strict=True), start=1):
        s, t = normalize(s_line, lowercase=lowercase), normalize(t_line, lowercase=lowercase)
        if not s and not t:
            out.blank += 1
            continue
        for path, text, other, other_text in ((src_path, s, tgt_path, t),
                                              (tgt_path, t, src_path, s)):
            if not text:
                raise DataError(f"{path}:{lineno}: expected a sentence (the translation of "
                                f"{other}:{lineno}, {other_text[:40]!r}), got a blank line; "
                                f"the two files are out of step")
        out.pairs.append(Pair(src=s, tgt=t))
    return out
