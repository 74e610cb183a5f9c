"""Decode a list of pairs with a model and score the result (overall and by source length)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from attnlab.data.batching import eval_order, pad
from attnlab.data.tokenize import Tokenizer
from attnlab.data.tsv import Pair
from attnlab.data.vocab import Vocab
from attnlab.models.translation import TranslationModel
from attnlab.training.metrics import by_length, scores
from attnlab.training.search import Hypothesis, decode


@dataclass
class Codec:
    """How text becomes ids and back, on both sides: saved with the model."""

    src_tok: Tokenizer
    tgt_tok: Tokenizer
    src_vocab: Vocab
    tgt_vocab: Vocab

    def source_ids(self, text: str) -> list[int]:
        return self.src_vocab.encode(self.src_tok.tokenize(text))

    def target_text(self, ids: Sequence[int]) -> str:
        return self.tgt_tok.detokenize(self.tgt_vocab.decode(ids))


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    buckets: list[dict[str, Any]] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)


def decode_ids(model: TranslationModel, src_ids: Sequence[Sequence[int]], *, beam: int = 1,
               alpha: float = 1.0, ratio: float = 2.0, batch_size: int = 200
               ) -> list[Hypothesis]:
    """Decode many sources in length-sorted batches; results in the input order."""
    out: list[Hypothesis | None] = [None] * len(src_ids)
    for idx in eval_order([len(s) for s in src_ids], batch_size):
        src, lengths = pad([src_ids[i] for i in idx])
        for i, h in zip(idx, decode(model, src, lengths, beam=beam, alpha=alpha, ratio=ratio),
                        strict=True):
            out[i] = h
    return [h for h in out if h is not None]


def evaluate_pairs(model: TranslationModel, pairs: Sequence[Pair], codec: Codec, *, beam: int = 1,
                   alpha: float = 1.0, ratio: float = 2.0, batch_size: int = 200,
                   edges: Sequence[int] | None = None) -> EvalResult:
    """BLEU / chrF / exact match of the model's translations against the references, the
    references put in the model's own token form first (:meth:`Tokenizer.canonical`)."""
    src_ids = [codec.source_ids(p.src) for p in pairs]
    keep = [i for i, s in enumerate(src_ids) if s]  # an empty source cannot be translated
    hyps_h = decode_ids(model, [src_ids[i] for i in keep], beam=beam, alpha=alpha, ratio=ratio,
                        batch_size=batch_size)
    hyps = [codec.target_text(h.tokens) for h in hyps_h]
    refs = [codec.tgt_tok.canonical(pairs[i].tgt) for i in keep]
    char_level = codec.tgt_tok.level == "char"
    result = EvalResult(scores(hyps, refs, char_level=char_level), hyps=hyps, refs=refs)
    if edges:
        result.buckets = by_length(hyps, refs, [len(src_ids[i]) for i in keep], edges,
                                   char_level=char_level)
    return result
