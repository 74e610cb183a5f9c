"""BLEU and chrF via sacrebleu, exact match, and the same per source-length bucket."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sacrebleu

from attnlab.data.splits import bucket_index, bucket_labels

logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # "tokenized period" hints: not for us


def scores(hyps: Sequence[str], refs: Sequence[str], *, char_level: bool = False
           ) -> dict[str, Any]:
    """Corpus BLEU and chrF (0-100, sacrebleu: 13a tokenisation, chrF β = 2) and the fraction
    of exact matches; None for all three on an empty list.

    BLEU counts n-grams up to 4 over the whole corpus: a corpus of 1-3 word sentences has no
    4-grams and scores 0 however good it is (chrF and exact match still say something). With
    ``char_level`` (character targets: dates, German number words) BLEU counts character
    n-grams (sacrebleu's ``char`` tokeniser, as for languages written without spaces)."""
    if len(hyps) != len(refs):
        raise ValueError(f"hyps: expected {len(refs)} (as refs), got {len(hyps)}")
    if not refs:
        return {"bleu": None, "chrf": None, "exact": None, "n": 0}
    tokenize = "char" if char_level else "13a"
    return {
        "bleu": round(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize).score,
                      2),
        "chrf": round(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score, 2),
        "exact": round(sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs), 4),
        "n": len(refs),
    }


def by_length(hyps: Sequence[str], refs: Sequence[str], src_lengths: Sequence[int],
              edges: Sequence[int], *, char_level: bool = False) -> list[dict[str, Any]]:
    """One row per source-length bucket (edges are upper bounds): label, n, BLEU, chrF, exact."""
    rows = []
    for i, label in enumerate(bucket_labels(edges)):
        sel = [j for j, n in enumerate(src_lengths) if bucket_index(n, edges) == i]
        rows.append({"bucket": label, **scores([hyps[j] for j in sel], [refs[j] for j in sel],
                                               char_level=char_level)})
    return rows
