"""What data a run uses (:class:`DataSpec`), turned into train / valid / test splits.

Evaluation splits are drawn first and their sources are kept out of training, so a test
sentence is never one the model was trained on. ``balanced_eval`` fills every source-length
bucket equally, which is what a BLEU-against-length plot (Bahdanau et al. 2014, Fig. 2) needs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attnlab.data.aligned import load_aligned
from attnlab.data.corpora import date_pairs, number_pairs
from attnlab.data.provenance import DataReport, dedupe
from attnlab.data.tokenize import Tokenizer
from attnlab.data.tsv import DataError, Pair, load_tsv, too_long

CORPORA: tuple[str, ...] = ("numbers", "dates", "tsv", "text")
FILE_CORPORA: tuple[str, ...] = ("tsv", "text")
DEDUPE: tuple[str, ...] = ("pairs", "sources", "none")


@dataclass
class DataSpec:
    corpus: str = "numbers"  # numbers | dates (generated) | tsv | text (your own files)
    path: str = ""  # corpus tsv: the file
    src_col: int = 2  # corpus tsv: 1-based columns (default: target<TAB>source[<TAB>...])
    tgt_col: int = 1
    src_path: str = ""  # corpus text: two aligned files, one sentence per line
    tgt_path: str = ""
    dedupe: str = "pairs"  # file corpora: drop repeated pairs | repeated sources | none
    src_lang: str = "en"  # numbers: num2words language codes
    tgt_lang: str = "es"
    min_items: int = 1  # numbers: how many numbers per sentence
    max_items: int = 3
    max_value: int = 999_999
    train_size: int = 40_000
    valid_size: int = 400
    test_size: int = 1_000
    balanced_eval: bool = False  # valid/test: equal counts per length bucket
    buckets: tuple[int, ...] = (10, 20, 30, 40, 50, 60)  # upper edges of source-length buckets
    src_level: str = "word"  # word | char
    tgt_level: str = "word"
    lowercase: bool = False
    max_src_len: int = 100  # tokens; longer pairs are dropped
    max_tgt_len: int = 100
    min_freq: int = 1  # vocabulary: rarer tokens become <unk>
    seed: int = 1

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"data.corpus: expected one of {', '.join(CORPORA)}, "
                             f"got {self.corpus!r}")
        self._check_files()
        edges = tuple(self.buckets)
        if not edges or any(b <= a for a, b in zip((0, *edges), edges, strict=False)):
            raise ValueError(f"data.buckets: expected increasing positive edges, got {edges}")
        for name in ("train_size", "max_src_len", "max_tgt_len", "min_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("valid_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}: expected >= 0, got {getattr(self, name)}")
        if self.dedupe not in DEDUPE:
            raise ValueError(f"data.dedupe: expected one of {', '.join(DEDUPE)}, "
                             f"got {self.dedupe!r}")

    def _check_files(self) -> None:
        if self.corpus == "tsv" and not self.path:
            raise ValueError("data.path: expected a TSV file when data.corpus = 'tsv', got ''")
        if self.corpus == "text" and not (self.src_path and self.tgt_path):
            raise ValueError(f"data.src_path / data.tgt_path: expected two files when "
                             f"data.corpus = 'text', got {self.src_path!r} and {self.tgt_path!r}")
        if self.src_col < 1 or self.tgt_col < 1 or self.src_col == self.tgt_col:
            raise ValueError(f"data.src_col / data.tgt_col: expected two different 1-based "
                             f"columns, got {self.src_col} and {self.tgt_col}")

    def check_unused(self) -> None:
        """File keys that the corpus would not read: a data.path given without data.corpus=tsv
        would otherwise train on the generated numbers without a word. Checked when the data
        is built, not in __post_init__, so that a run saved before this check still loads."""
        if self.path and self.corpus != "tsv":
            raise ValueError(f"data.path: a TSV file is read when data.corpus = 'tsv', got "
                             f"data.corpus = {self.corpus!r} (set data.corpus=tsv"
                             + (", or data.src_path / data.tgt_path for two files)"
                                if self.corpus == "text" else ")"))
        if (self.src_path or self.tgt_path) and self.corpus != "text":
            raise ValueError(f"data.src_path / data.tgt_path: two files are read when "
                             f"data.corpus = 'text', got data.corpus = {self.corpus!r} "
                             f"(set data.corpus=text)")
        if (self.src_col, self.tgt_col) != (2, 1) and self.corpus != "tsv":
            raise ValueError(f"data.src_col / data.tgt_col: choose columns of a TSV file "
                             f"(data.corpus = 'tsv'), got data.corpus = {self.corpus!r}")
        if self.balanced_eval and self.corpus in FILE_CORPORA:
            raise ValueError(f"data.balanced_eval: fills length buckets from a generated corpus "
                             f"(numbers, dates), got data.corpus = {self.corpus!r}")

    @property
    def src_tokenizer(self) -> Tokenizer:
        return Tokenizer(self.src_level, self.lowercase)  # type: ignore[arg-type]

    @property
    def tgt_tokenizer(self) -> Tokenizer:
        return Tokenizer(self.tgt_level, self.lowercase)  # type: ignore[arg-type]


@dataclass
class Splits:
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    report: DataReport | None = None  # where the pairs came from, what was dropped


def bucket_index(length: int, edges: Sequence[int]) -> int | None:
    """Index of the bucket (edges[i-1], edges[i]] holding ``length``; None past the last."""
    lo = 0
    for i, hi in enumerate(edges):
        if lo < length <= hi:
            return i
        lo = hi
    return None


def bucket_labels(edges: Sequence[int]) -> list[str]:
    return [f"{lo + 1}-{hi}" for lo, hi in zip((0, *edges[:-1]), edges, strict=True)]


def build_splits(spec: DataSpec) -> Splits:
    spec.check_unused()
    if spec.corpus in FILE_CORPORA:
        return _file_splits(spec)
    gen = _generator(spec)
    fits = _fits(spec)
    if spec.balanced_eval:
        per = -(-max(spec.valid_size, spec.test_size) // len(spec.buckets))
        pool = _balanced(gen, spec, per * 2, stream=1)
        valid = [p for i, p in enumerate(pool) if i % 2 == 0][: spec.valid_size]
        test = [p for i, p in enumerate(pool) if i % 2 == 1][: spec.test_size]
    else:
        pool = _dedupe([p for p in gen(3 * (spec.valid_size + spec.test_size) + 10, 1) if fits(p)])
        test, valid = pool[: spec.test_size], pool[spec.test_size: spec.test_size + spec.valid_size]
    held = {p.src for p in valid} | {p.src for p in test}
    train: list[Pair] = []
    for rnd in range(50):
        chunk = gen(spec.train_size, 100 + rnd)
        train += [p for p in chunk if p.src not in held and fits(p)]
        if len(train) >= spec.train_size:
            break
    train = train[: spec.train_size]
    report = DataReport(spec.corpus, train=len(train), valid=len(valid), test=len(test))
    return Splits(train=train, valid=valid, test=test, report=report)


def _generator(spec: DataSpec) -> Callable[[int, int], list[Pair]]:
    def gen(n: int, stream: int) -> list[Pair]:
        seed = spec.seed * 1_000_003 + stream
        if spec.corpus == "numbers":
            return number_pairs(n, seed=seed, src_lang=spec.src_lang, tgt_lang=spec.tgt_lang,
                                min_items=spec.min_items, max_items=spec.max_items,
                                max_value=spec.max_value)
        return date_pairs(n, seed=seed)

    return gen


def _fits(spec: DataSpec) -> Callable[[Pair], bool]:
    st, tt = spec.src_tokenizer, spec.tgt_tokenizer
    return lambda p: (len(st.tokenize(p.src)) <= spec.max_src_len
                      and len(tt.tokenize(p.tgt)) <= spec.max_tgt_len)


def _dedupe(pairs: list[Pair]) -> list[Pair]:
    seen: set[str] = set()
    out = []
    for p in pairs:
        if p.src not in seen:
            seen.add(p.src)
            out.append(p)
    return out


def _balanced(gen: Callable[[int, int], list[Pair]], spec: DataSpec, per_bucket: int,
              stream: int) -> list[Pair]:
    """``per_bucket`` distinct pairs in every source-length bucket, interleaved by bucket."""
    st, fits = spec.src_tokenizer, _fits(spec)
    found: list[list[Pair]] = [[] for _ in spec.buckets]
    seen: set[str] = set()
    for rnd in range(200):
        for p in gen(max(1000, 4 * per_bucket * len(spec.buckets)), stream + 10 * rnd):
            i = bucket_index(len(st.tokenize(p.src)), spec.buckets)
            if i is None or p.src in seen or not fits(p) or len(found[i]) >= per_bucket:
                continue
            seen.add(p.src)
            found[i].append(p)
        if all(len(f) >= per_bucket for f in found):
            break
    short = [lab for lab, f in zip(bucket_labels(spec.buckets), found, strict=True)
             if len(f) < per_bucket]
    if short:
        raise ValueError(f"data.buckets: could not fill source-length buckets {short} with "
                         f"{per_bucket} pairs each; raise data.max_items or lower the edges")
    return [found[b][i] for i in range(per_bucket) for b in range(len(found))]


def _file_splits(spec: DataSpec) -> Splits:
    """Your own pairs: read, drop what is over the length limits, then repeats
    (``data.dedupe``), shuffle (``data.seed``), draw test and valid from distinct sources, and
    keep those sources out of train."""
    if spec.corpus == "tsv":
        data = load_tsv(spec.path, src_col=spec.src_col, tgt_col=spec.tgt_col,
                        lowercase=spec.lowercase, option="data.path")
        files, what = [spec.path], spec.path
    else:
        data = load_aligned(spec.src_path, spec.tgt_path, lowercase=spec.lowercase)
        files, what = [spec.src_path, spec.tgt_path], f"{spec.src_path} + {spec.tgt_path}"
    report = DataReport(spec.corpus, files=files, read=len(data.pairs), blank=data.blank)
    st, tt = spec.src_tokenizer, spec.tgt_tokenizer
    fit = [p for p in data.pairs if not too_long(p, st, tt, spec.max_src_len, spec.max_tgt_len)]
    report.too_long = len(data.pairs) - len(fit)
    if not fit:
        raise DataError(f"data.max_src_len / data.max_tgt_len: expected pairs within "
                        f"{spec.max_src_len} / {spec.max_tgt_len} tokens, got none of the "
                        f"{len(data.pairs)} pairs in {what}")
    pairs = dedupe(fit, spec.dedupe)
    report.duplicates = len(fit) - len(pairs)
    random.Random(spec.seed).shuffle(pairs)
    n_eval = spec.valid_size + spec.test_size
    distinct = _dedupe(pairs)
    if len(distinct) <= n_eval:
        raise DataError(f"data.valid_size + data.test_size: expected fewer than the "
                        f"{len(distinct)} distinct sources of {what} (some must be left to "
                        f"train on), got {spec.valid_size} + {spec.test_size} = {n_eval}")
    test, valid = distinct[: spec.test_size], distinct[spec.test_size: n_eval]
    held = {p.src for p in test} | {p.src for p in valid}
    train = [p for p in pairs if p.src not in held]
    report.held_out = len(pairs) - len(test) - len(valid) - len(train)
    report.over_size = max(0, len(train) - spec.train_size)
    train = train[: spec.train_size]
    report.train, report.valid, report.test = len(train), len(valid), len(test)
    return Splits(train=train, valid=valid, test=test, report=report)
