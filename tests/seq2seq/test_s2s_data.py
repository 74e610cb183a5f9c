"""Data: TSV loading (errors name file and line), generated corpora, splits, vocab, batches."""

from __future__ import annotations

import datetime as dt

import pytest

from attnlab.data.batching import collate, encode_pairs, epoch_order
from attnlab.data.corpora import date_pairs, number_pairs
from attnlab.data.io import FormatError
from attnlab.data.splits import DataSpec, bucket_index, bucket_labels, build_splits
from attnlab.data.tokenize import Tokenizer, normalize
from attnlab.data.tsv import DataError, Pair, load_tsv, write_tsv
from attnlab.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocab


def test_tsv_reads_the_tutorial_format(tmp_path):
    f = tmp_path / "spa.txt"
    f.write_text("Go.\tVe.\tCC-BY 2.0 (France) Attribution: tatoeba.org\n\n"
                 "Hi!\t  Hola. \tCC-BY 2.0\r\n", encoding="utf-8")
    data = load_tsv(f)
    assert data.pairs == [Pair(src="Ve.", tgt="Go."), Pair(src="Hola.", tgt="Hi!")]
    assert data.blank == 1
    f.write_text("Go.\tVe.\nHi!\tHola.\n", encoding="utf-8")  # no attribution column
    assert load_tsv(f).pairs == data.pairs


@pytest.mark.parametrize(("content", "line", "expect"), [
    ("a\tb\nonly-one-field\n", 2, "got 1 field"),
    ("a\tb\tc\nx\ty\n", 2, "expected 3 tab-separated fields like line 1, got 2 field"),
    ("a\tb\n\t b\n", 2, "non-empty target"),
    ("a\tb\nx\t \n", 2, "non-empty source"),
])
def test_tsv_errors_name_file_and_line(tmp_path, content, line, expect):
    f = tmp_path / "bad.tsv"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expect) as e:
        load_tsv(f)
    assert str(e.value).startswith(f"{f}:{line}: ")


def test_tsv_bad_utf8_empty_and_missing(tmp_path):
    f = tmp_path / "latin1.tsv"
    f.write_bytes(b"ok\tfine\nbad\tni\xf1o\n")
    with pytest.raises(DataError, match=rf"{f}:2: expected UTF-8"):
        load_tsv(f)
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="expected at least one"):
        load_tsv(empty)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tsv(tmp_path / "missing.tsv")


def test_tsv_length_filter_and_roundtrip(tmp_path):
    tok = Tokenizer()
    pairs = [Pair("one two three", "uno dos tres"), Pair("one", "uno")]
    f = tmp_path / "rt.tsv"
    write_tsv(f, pairs)
    assert load_tsv(f).pairs == pairs
    data = load_tsv(f, src_tokenizer=tok, tgt_tokenizer=tok, max_src_len=2)
    assert data.pairs == [Pair("one", "uno")] and data.too_long == 1
    with pytest.raises(ValueError, match="no tabs"):
        write_tsv(f, [Pair("a\tb", "c")])


def test_tokenizer_and_normalisation():
    assert normalize("  Hola\u202fmundo\n\t!  ") == "Hola mundo !"
    word = Tokenizer("word", lowercase=True)
    assert word.tokenize("Eighty-seven, Sir.") == ["eighty", "-", "seven", ",", "sir", "."]
    assert word.canonical("Go.") == "go ."
    char = Tokenizer("char")
    assert char.tokenize("2. Jan") == ["2", ".", " ", "J", "a", "n"]
    assert char.detokenize(char.tokenize("2. Jan")) == "2. Jan"
    with pytest.raises(ValueError, match="level: expected one of word, char"):
        Tokenizer("bpe")  # type: ignore[arg-type]


def test_numbers_corpus_is_seeded_and_real():
    a = number_pairs(50, seed=3, tgt_lang="es", max_items=2)
    assert a == number_pairs(50, seed=3, tgt_lang="es", max_items=2)
    assert a != number_pairs(50, seed=4, tgt_lang="es", max_items=2)
    de = number_pairs(200, seed=1, tgt_lang="de", max_items=1, max_value=99)
    assert Pair("eighty-seven", "siebenundachtzig") in de  # the reordering case
    with pytest.raises(ValueError, match="tgt_lang: expected a language code"):
        number_pairs(1, seed=0, tgt_lang="xx")


def test_dates_corpus_maps_to_iso():
    pairs = date_pairs(200, seed=5)
    assert pairs == date_pairs(200, seed=5)
    assert len({p.src for p in pairs}) > 150
    for p in pairs:
        dt.date.fromisoformat(p.tgt)  # every target is a valid ISO date
    with pytest.raises(ValueError, match="locales: expected CLDR"):
        date_pairs(1, seed=0, locales=["xx_YY_ZZ"])


def test_splits_are_disjoint_and_buckets_balanced():
    spec = DataSpec(max_items=4, train_size=300, valid_size=20, test_size=40,
                    balanced_eval=True, buckets=(5, 10, 20), max_src_len=20)
    s = build_splits(spec)
    assert len(s.train) == 300 and len(s.valid) == 20 and len(s.test) == 40
    held = {p.src for p in s.valid} | {p.src for p in s.test}
    assert not held & {p.src for p in s.train}
    tok = spec.src_tokenizer
    counts = [0, 0, 0]
    for p in s.test:
        counts[bucket_index(len(tok.tokenize(p.src)), spec.buckets)] += 1
    assert max(counts) - min(counts) <= 1
    assert s == build_splits(spec)  # deterministic
    assert bucket_labels((5, 10, 20)) == ["1-5", "6-10", "11-20"]
    assert bucket_index(21, (5, 10, 20)) is None
    with pytest.raises(ValueError, match=r"data\.buckets: could not fill"):
        build_splits(DataSpec(max_items=1, max_value=9, buckets=(1, 30), train_size=10,
                              valid_size=2, test_size=2, balanced_eval=True))


def test_data_spec_validation():
    with pytest.raises(ValueError, match=r"data\.corpus: expected one of numbers, dates, tsv"):
        DataSpec(corpus="wiki")
    with pytest.raises(ValueError, match=r"data\.path: expected a TSV file"):
        DataSpec(corpus="tsv")
    with pytest.raises(ValueError, match="increasing positive edges"):
        DataSpec(buckets=(10, 5))


def test_vocab_specials_unknowns_and_files(tmp_path):
    v = Vocab.build([["b", "a", "b"], ["c"]])
    assert v.tokens[:4] == ["<pad>", "<unk>", "<s>", "</s>"] and v.tokens[4] == "b"
    assert v.encode(["a", "zebra"]) == [v.index["a"], UNK_ID]
    assert v.unknown(["a", "zebra"]) == ["zebra"]
    assert v.decode([BOS_ID, v.index["a"], EOS_ID, v.index["b"]]) == ["a"]
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").tokens == v.tokens
    (tmp_path / "old.json").write_text('{"format": "attnlab.vocab/0", "tokens": []}')
    with pytest.raises(FormatError, match="expected vocabulary format"):
        Vocab.load(tmp_path / "old.json")
    with pytest.raises(FileNotFoundError):
        Vocab.load(tmp_path / "none.json")


def test_batches_and_epoch_order():
    tok = Tokenizer()
    pairs = [Pair("a b c", "x"), Pair("a", "y z")]
    sv, tv = Vocab.build([["a", "b", "c"]]), Vocab.build([["x", "y", "z"]])
    enc = encode_pairs(pairs, tok, tok, sv, tv)
    b = collate(enc, [0, 1])
    assert b.src.tolist()[1][1:] == [PAD_ID, PAD_ID] and b.src_lengths.tolist() == [3, 1]
    assert b.tgt_in[:, 0].tolist() == [BOS_ID, BOS_ID]
    assert b.tgt_out.tolist()[0] == [tv.index["x"], EOS_ID, PAD_ID]
    assert b.n_target_tokens == 5
    lengths = [i % 7 + 1 for i in range(100)]
    e0 = epoch_order(lengths, 8, seed=1, epoch=0)
    assert e0 == epoch_order(lengths, 8, seed=1, epoch=0)
    assert e0 != epoch_order(lengths, 8, seed=1, epoch=1)
    assert sorted(i for batch in e0 for i in batch) == list(range(100))


def test_atomic_writes_leave_normal_permissions_and_no_temp_files(tmp_path):
    import os

    from attnlab.data.io import read_json, write_json

    mask = os.umask(0)
    os.umask(mask)
    write_json(tmp_path / "x.json", {"a": 1})
    write_json(tmp_path / "x.json", {"a": 2})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert read_json(tmp_path / "x.json") == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_metrics_word_and_character_level():
    from attnlab.training.metrics import by_length, scores

    refs = ["cuarenta y dos", "siete", "mil ciento uno y dos"]
    assert scores(refs, refs) == {"bleu": 100.0, "chrf": 100.0, "exact": 1.0, "n": 3}
    assert scores([], []) == {"bleu": None, "chrf": None, "exact": None, "n": 0}
    one_word = ["siebenundachtzig", "dreihundert"]
    assert scores(one_word, one_word)["bleu"] == 0.0  # no word 4-grams at all
    assert scores(one_word, one_word, char_level=True)["bleu"] == 100.0
    rows = by_length(refs, refs, [3, 1, 6], [2, 4, 8])
    assert [r["n"] for r in rows] == [1, 1, 1] and rows[0]["bucket"] == "1-2"
    with pytest.raises(ValueError, match="hyps: expected 3"):
        scores(refs[:2], refs)
