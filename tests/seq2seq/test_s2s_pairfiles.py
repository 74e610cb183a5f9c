"""Your own sentence pairs (issue 16): TSV columns, two aligned files, de-duplication and
length filters with a report of what was dropped, and errors that name file, line, what was
expected and what was found."""

from __future__ import annotations

import pytest

from attnlab.data.aligned import load_aligned, read_lines
from attnlab.data.splits import DataSpec, build_splits
from attnlab.data.tsv import DataError, Pair, load_tsv

ANKI = ("Go.\tVe.\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM)\n"
        "Hi.\tHola.\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM)\n")


def _write(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return f


def test_tsv_columns_choose_source_and_target(tmp_path):
    f = _write(tmp_path, "spa.txt", ANKI)
    assert load_tsv(f).pairs == [Pair("Ve.", "Go."), Pair("Hola.", "Hi.")]  # the tutorial's
    assert load_tsv(f, src_col=1, tgt_col=2).pairs == [Pair("Go.", "Ve."), Pair("Hi.", "Hola.")]
    # Tatoeba's "sentence pairs" download: id, text, id, text
    t = _write(tmp_path, "tatoeba.tsv", "1\tI see.\t2\tYa veo.\n3\tRun!\t4\t¡Corre!\n")
    assert load_tsv(t, src_col=2, tgt_col=4).pairs == [Pair("I see.", "Ya veo."),
                                                       Pair("Run!", "¡Corre!")]


@pytest.mark.parametrize(("content", "cols", "line", "message"), [
    (ANKI + "Run!\t¡Corre!\n", (2, 1), 3,
     r"expected 3 tab-separated fields like line 1, got 2 field\(s\): 'Run!\\t¡Corre!' "
     r"\(a tab inside a sentence, or a missing field\?\)"),
    ("\nGo.\tVe.\nHi.\tHo\tla.\n", (2, 1), 3, "expected 2 tab-separated fields like line 2, got 3"),
    ("Go. Ve.\n", (2, 1), 1, r"expected at least 2 tab-separated fields \(source in column 2, "
                             r"target in column 1\), got 1 \(no tab on the line\)"),
    (ANKI, (4, 1), 1, r"expected at least 4 tab-separated fields \(source in column 4, target in "
                      r"column 1\), got 3"),
    ("Go.\tVe.\tx\nHi.\t \ty\n", (1, 2), 2, r"expected a non-empty target \(column 2\), got an "
                                            r"empty one"),
])
def test_tsv_ragged_and_short_lines(tmp_path, content, cols, line, message):
    f = _write(tmp_path, "bad.tsv", content)
    with pytest.raises(DataError, match=message) as e:
        load_tsv(f, src_col=cols[0], tgt_col=cols[1])
    assert str(e.value).startswith(f"{f}:{line}: ")


def test_tsv_empty_file_and_byte_order_mark(tmp_path):
    with pytest.raises(DataError, match=r"empty\.tsv: expected tab-separated pairs, one per line, "
                                        r"got an empty file"):
        load_tsv(_write(tmp_path, "empty.tsv", ""))
    bom = _write(tmp_path, "bom.tsv", b"\xef\xbb\xbfGo.\tVe.\n")  # Windows editors write one
    assert load_tsv(bom).pairs == [Pair("Ve.", "Go.")]


def test_two_aligned_files(tmp_path):
    en = _write(tmp_path, "a.en", "Go.\n\nHi.\r\n\n\n")  # trailing blank lines: an extra newline
    es = _write(tmp_path, "a.es", "Ve.\n\nHola.\n")
    data = load_aligned(en, es)
    assert data.pairs == [Pair("Go.", "Ve."), Pair("Hi.", "Hola.")] and data.blank == 1


@pytest.mark.parametrize(("en", "es", "message"), [
    ("Go.\nHi.\nRun!\n", "Ve.\nHola.\n",
     r"^data\.src_path / data\.tgt_path: expected files with the same number of lines \(line i "
     r"of one translates line i of the other\), got 3 lines in .*a\.en and 2 in .*a\.es$"),
    ("Go.\n\nRun!\n", "Ve.\nHola.\n¡Corre!\n",
     r"a\.en:2: expected a sentence \(the translation of .*a\.es:2, 'Hola\.'\), got a blank "
     r"line; the two files are out of step$"),
    ("Go.\n", "", r"^data\.tgt_path: expected one sentence per line in .*a\.es, got an empty file$"),
    ("Go.\n", "\n \n", r"expected one sentence per line in .*a\.es, got only blank lines$"),
    ("Go.\nni\xf1o\n".encode("latin-1"), "Ve.\nniño\n", r"a\.en:2: expected UTF-8 text, got "
                                                        r"undecodable bytes at column 3$"),
])
def test_two_files_errors(tmp_path, en, es, message):
    with pytest.raises(DataError, match=message):
        load_aligned(_write(tmp_path, "a.en", en), _write(tmp_path, "a.es", es))


def test_missing_files_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^data\.tgt_path: expected a text file, got "
                                                r"'.*nope\.es' \(no such file\)$"):
        load_aligned(_write(tmp_path, "a.en", "Go.\n"), tmp_path / "nope.es")
    with pytest.raises(FileNotFoundError, match=r"^--file: expected a text file"):
        read_lines(tmp_path / "none.txt", "--file")


def _pairs_file(tmp_path, lines):
    return _write(tmp_path, "pairs.tsv", "".join(f"{t}\t{s}\n" for s, t in lines))


def test_splits_report_what_was_dropped(tmp_path):
    lines = [(f"s{i}", f"t{i}") for i in range(30)]
    lines += [("s1", "t1"), ("s2", "t2"), ("s1", "other t1")]  # 2 repeated pairs, 1 more source
    lines += [("a b c d e f", "t"), ("s", "a b c d e f g")]  # over the length limits (5 tokens)
    f = _pairs_file(tmp_path, lines)
    spec = DataSpec(corpus="tsv", path=str(f), valid_size=3, test_size=4, train_size=20,
                    max_src_len=5, max_tgt_len=5)
    s = build_splits(spec)
    r = s.report
    assert (r.read, r.too_long, r.duplicates) == (35, 2, 2)
    assert (len(s.train), len(s.valid), len(s.test)) == (r.train, r.valid, r.test) == (20, 3, 4)
    held = {p.src for p in s.valid + s.test}
    assert not held & {p.src for p in s.train} and len(set(s.train)) == len(s.train)
    assert r.held_out + r.over_size == 31 - 7 - 20  # 31 kept pairs: 7 in valid/test, 20 train
    assert r.summary().startswith(f"data: 35 pairs read from {f}; dropped 2 over the length "
                                  f"limits, 2 duplicates, ")
    assert r.summary().endswith("train 20, valid 3, test 4")
    assert build_splits(spec) == s  # deterministic (data.seed)
    by_source = build_splits(DataSpec(corpus="tsv", path=str(f), valid_size=3, test_size=4,
                                      dedupe="sources", max_src_len=5, max_tgt_len=5))
    assert by_source.report.duplicates == 3
    kept = build_splits(DataSpec(corpus="tsv", path=str(f), valid_size=3, test_size=4,
                                 dedupe="none"))
    assert kept.report.duplicates == 0 and kept.report.too_long == 0


def test_splits_from_two_files_match_the_tsv(tmp_path):
    lines = [(f"s{i}", f"t{i}") for i in range(20)]
    f = _pairs_file(tmp_path, lines)
    src = _write(tmp_path, "a.src", "".join(f"{s}\n" for s, _ in lines))
    tgt = _write(tmp_path, "a.tgt", "".join(f"{t}\n" for _, t in lines))
    a = build_splits(DataSpec(corpus="tsv", path=str(f), valid_size=2, test_size=2))
    b = build_splits(DataSpec(corpus="text", src_path=str(src), tgt_path=str(tgt), valid_size=2,
                              test_size=2))
    assert (a.train, a.valid, a.test) == (b.train, b.valid, b.test)
    assert b.report.files == [str(src), str(tgt)]


def test_splits_errors_name_the_settings(tmp_path):
    f = _pairs_file(tmp_path, [("a b c", "x"), ("d e f", "y")])
    with pytest.raises(DataError, match=r"^data\.max_src_len / data\.max_tgt_len: expected pairs "
                                        r"within 2 / 100 tokens, got none of the 2 pairs in "):
        build_splits(DataSpec(corpus="tsv", path=str(f), max_src_len=2))
    with pytest.raises(DataError, match=r"^data\.valid_size \+ data\.test_size: expected fewer "
                                        r"than the 2 distinct sources of .*pairs\.tsv \(some must "
                                        r"be left to train on\), got 1 \+ 1 = 2$"):
        build_splits(DataSpec(corpus="tsv", path=str(f), valid_size=1, test_size=1))
