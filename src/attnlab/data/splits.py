"""What data a run uses (:class:`DataSpec`), turned into train / valid / test splits.

Evaluation splits are drawn first and their sources are kept out of training, so a test
sentence is never one the model was trained on. ``balanced_eval`` fills every source-length
bucket equally, which is what a BLEU-against-length plot (Bahdanau et al. 2014, Fig. 2) needs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attnlab.data.corpora import date_pairs, number_pairs
from attnlab.data.tokenize import Tokenizer
from attnlab.data.tsv import DataError, Pair, load_tsv

CORPORA: tuple[str, ...] = ("numbers", "dates", "tsv")


@dataclass
class DataSpec:
    corpus: str = "numbers"  # numbers | dates | tsv
    path: str = ""  # the TSV file when corpus = "tsv"
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
        if self.corpus == "tsv" and not self.path:
            raise ValueError("data.path: expected a TSV file when data.corpus = 'tsv', got ''")
        edges = tuple(self.buckets)
        if not edges or any(b <= a for a, b in zip((0, *edges), edges, strict=False)):
            raise ValueError(f"data.buckets: expected increasing positive edges, got {edges}")
        for name in ("train_size", "max_src_len", "max_tgt_len", "min_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("valid_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}: expected >= 0, got {getattr(self, name)}")

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
    if spec.corpus == "tsv":
        return _tsv_splits(spec)
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
    return Splits(train=train[: spec.train_size], valid=valid, test=test)


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


def _tsv_splits(spec: DataSpec) -> Splits:
    data = load_tsv(spec.path, lowercase=spec.lowercase, src_tokenizer=spec.src_tokenizer,
                    tgt_tokenizer=spec.tgt_tokenizer, max_src_len=spec.max_src_len,
                    max_tgt_len=spec.max_tgt_len)
    pairs = list(data.pairs)
    random.Random(spec.seed).shuffle(pairs)
    n_eval = spec.valid_size + spec.test_size
    distinct = _dedupe(pairs)
    if len(distinct) <= n_eval:
        raise DataError(f"{spec.path}: expected more than valid_size + test_size = {n_eval} "
                        f"distinct sources, got {len(distinct)}")
    test, valid = distinct[: spec.test_size], distinct[spec.test_size: n_eval]
    held = {p.src for p in test} | {p.src for p in valid}
    train = [p for p in pairs if p.src not in held][: spec.train_size]
    return Splits(train=train, valid=valid, test=test)
