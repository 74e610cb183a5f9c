"""A trained model folder as a translator: text in, translation + alignment out.

Unknown source tokens are encoded as ``<unk>`` (the model has a learned embedding for it) and
reported in :attr:`Translation.unknown`, so a user sees which words the model could not read.
For a Transformer, ``translate(..., attention=True)`` also returns every layer's and head's
encoder self-, decoder self- and cross-attention (:class:`AttentionMaps`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnlab.data.batching import pad
from attnlab.data.io import read_json
from attnlab.data.tsv import load_tsv
from attnlab.data.vocab import BOS, BOS_ID, EOS
from attnlab.models.transformer import Transformer
from attnlab.models.translation import TranslationModel
from attnlab.models.translators import load_translator
from attnlab.training.evaluate import Codec, EvalResult, decode_ids, evaluate_pairs
from attnlab.training.run import SPLITS, load_codec, read_run_config
from attnlab.training.search import Hypothesis, decode


@dataclass
class AttentionMaps:
    """A Transformer's attention over one translation, recomputed by teacher forcing on the
    decoded output (in eval mode the same numbers the decoder computed step by step).

    Decoder self-attention rows and columns are the decoder's inputs (<s> y_1 ..); cross-
    attention rows are the tokens those steps emitted (``target_labels``, </s> included)."""

    encoder_self: torch.Tensor  # (N, H, Ls, Ls)
    decoder_self: torch.Tensor  # (N, H, Lt, Lt)
    cross: torch.Tensor  # (N, H, Lt, Ls)
    source_tokens: list[str]
    decoder_tokens: list[str]  # <s> y_1 .. y_{Lt-1}
    target_labels: list[str]  # y_1 .. (</s>)

    def sites(self) -> list[tuple[str, torch.Tensor, list[str], list[str]]]:
        """(name, weights (N, H, Lq, Lk), query labels, key labels) per kind of attention."""
        return [("encoder self-attention", self.encoder_self, self.source_tokens, self.source_tokens),
                ("decoder self-attention (masked)", self.decoder_self, self.decoder_tokens,
                 self.decoder_tokens),
                ("cross-attention (encoder-decoder)", self.cross, self.target_labels,
                 self.source_tokens)]

    def to_dict(self) -> dict[str, Any]:
        def r(t: torch.Tensor) -> list[Any]:
            return (t * 1e6).round().div(1e6).tolist()

        return {"encoder_self": r(self.encoder_self), "decoder_self": r(self.decoder_self),
                "cross": r(self.cross), "source_tokens": self.source_tokens,
                "decoder_tokens": self.decoder_tokens, "target_labels": self.target_labels}


@torch.no_grad()
def attention_maps(model: Transformer, src: torch.Tensor, lengths: torch.Tensor, out_ids: list[int],
                   finished: bool, source_tokens: list[str], target_labels: list[str],
                   tgt_tokens: list[str]) -> AttentionMaps:
    """One sentence's attention: src (1, Ls); ``out_ids`` the decoded target ids (no </s>)."""
    steps = len(out_ids) + finished  # rows: one per emitted token
    tgt_in = torch.tensor([[BOS_ID, *out_ids][:max(steps, 1)]])  # (1, Lt): <s> y_1 ..
    out = model.eval()(src, lengths, tgt_in, need_weights=True)
    assert out.encoder_self is not None and out.decoder_self is not None and out.cross is not None
    enc = torch.stack(out.encoder_self)[:, 0]  # N x (1, H, Ls, Ls) -> (N, H, Ls, Ls)
    dec = torch.stack(out.decoder_self)[:, 0]  # (N, H, Lt, Lt)
    cross = torch.stack(out.cross)[:, 0]  # (N, H, Lt, Ls)
    return AttentionMaps(enc, dec, cross, source_tokens, [BOS, *tgt_tokens][:tgt_in.shape[1]],
                         target_labels[:tgt_in.shape[1]])


@dataclass
class Translation:
    source: str
    source_tokens: list[str]
    tokens: list[str]  # target tokens, no </s>
    text: str
    score: float  # Σ log p
    finished: bool  # ended with </s> (else hit the length limit)
    unknown: list[str] = field(default_factory=list)  # source tokens read as <unk>
    weights: list[list[float]] | None = None  # (steps, Ls); None for attention "none"
    centres: list[float] | None = None  # local-p's p_t per step
    maps: AttentionMaps | None = None  # a Transformer's every head, with attention=True

    @property
    def target_labels(self) -> list[str]:
        """Row labels for the alignment: the tokens, then </s> when it was emitted."""
        return [*self.tokens, EOS] if self.finished else list(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_tokens": self.source_tokens,
                "translation": self.text, "tokens": self.tokens,
                "target_labels": self.target_labels, "score": round(self.score, 4),
                "finished": self.finished, "unknown": self.unknown,
                "alignment": self.weights, "centres": self.centres,
                **({"attention": self.maps.to_dict()} if self.maps is not None else {})}


class Translator:
    def __init__(self, model: TranslationModel, codec: Codec, folder: Path | None = None,
                 ratio: float = 2.0) -> None:
        self.model, self.codec, self.folder = model.eval(), codec, folder
        self.ratio = ratio  # output limit: ratio·|source| + 10 tokens (train.max_len_ratio)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Translator:
        folder = Path(folder)
        model = load_translator(folder)  # checks the folder, files and format first
        codec = load_codec(folder)
        for side, vocab, size in (("src", codec.src_vocab, model.cfg.src_vocab_size),
                                  ("tgt", codec.tgt_vocab, model.cfg.tgt_vocab_size)):
            if len(vocab) != size:
                raise ValueError(f"model: {folder}/{side}_vocab.json has {len(vocab)} tokens but "
                                 f"the model expects {size}; the files come from different runs")
        ratio = 2.0
        if (folder / "run.json").is_file():
            ratio = read_run_config(folder).train.max_len_ratio
        return cls(model, codec, folder, ratio)

    @property
    def alignment_name(self) -> str:
        """What the alignment picture shows, for titles."""
        cfg = self.model.cfg
        if isinstance(self.model, Transformer):
            return f"transformer: layer {cfg.layers - 1} cross-attention, mean of {cfg.heads} heads"
        return str(cfg.attention)

    def translate(self, text: str, *, beam: int = 1, alpha: float = 1.0,
                  ratio: float | None = None, attention: bool = False) -> Translation:
        """``attention``: a Transformer's every head (:class:`AttentionMaps`) in ``.maps``."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a string, got {type(text).__name__}")
        tokens = self.codec.src_tok.tokenize(text)
        if not tokens:
            raise ValueError(f"text: expected a non-empty sentence, got {text!r}")
        src, lengths = pad([self.codec.src_vocab.encode(tokens)])
        with torch.no_grad():
            hyp = decode(self.model, src, lengths, beam=beam, alpha=alpha,
                         ratio=self.ratio if ratio is None else ratio)[0]
        t = self._translation(text, tokens, hyp)
        out = t.tokens
        if attention:
            if not isinstance(self.model, Transformer):
                raise ValueError(f"attention: per-head maps exist for model.arch=transformer, "
                                 f"got a model.arch={self.model.ARCH} model (its alignment is "
                                 f"in .weights)")
            t.maps = attention_maps(self.model, src, lengths, hyp.tokens, hyp.finished, tokens,
                                    t.target_labels, out)
        return t

    def translate_many(self, texts: Sequence[str], *, beam: int = 1, alpha: float = 1.0,
                       batch_size: int = 200) -> list[Translation | None]:
        """Translate many sentences in length-sorted batches (one decode per batch, not per
        sentence); results in input order, None for a text with no tokens (a blank line)."""
        tokens = [self.codec.src_tok.tokenize(text) for text in texts]
        todo = [i for i, toks in enumerate(tokens) if toks]
        hyps = decode_ids(self.model, [self.codec.src_vocab.encode(tokens[i]) for i in todo],
                          beam=beam, alpha=alpha, ratio=self.ratio, batch_size=batch_size)
        out: list[Translation | None] = [None] * len(texts)
        for i, hyp in zip(todo, hyps, strict=True):
            out[i] = self._translation(texts[i], tokens[i], hyp)
        return out

    def _translation(self, text: str, tokens: list[str], hyp: Hypothesis) -> Translation:
        out = self.codec.tgt_vocab.decode(hyp.tokens)
        return Translation(
            source=text, source_tokens=tokens, tokens=out,
            text=self.codec.tgt_tok.detokenize(out), score=hyp.score, finished=hyp.finished,
            unknown=self.codec.src_vocab.unknown(tokens),
            weights=None if hyp.weights is None else hyp.weights.tolist(),
            centres=None if hyp.centres is None else hyp.centres.tolist())

    def evaluate(self, split: str = "test", *, beam: int = 1, alpha: float = 1.0,
                 batch_size: int = 200) -> EvalResult:
        """Scores on one of the run's saved splits (``data/<split>.tsv``) or a TSV path."""
        if self.folder is None:
            raise ValueError("split: this translator has no folder to read splits from")
        path = Path(split) if split not in SPLITS else self.folder / "data" / f"{split}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"split: expected one of {', '.join(SPLITS)} or a TSV file, "
                                    f"got {split!r} ({path} does not exist)")
        edges, cols = None, (2, 1)  # saved splits: target<TAB>source
        if (self.folder / "run.json").is_file():
            data = read_run_config(self.folder).data
            edges = data.buckets
            if split not in SPLITS and data.corpus == "tsv":  # read like the training file
                cols = (data.src_col, data.tgt_col)
        pairs = load_tsv(path, src_col=cols[0], tgt_col=cols[1]).pairs
        return evaluate_pairs(self.model, pairs, self.codec, beam=beam, alpha=alpha,
                              ratio=self.ratio, batch_size=batch_size, edges=edges)

    def results(self) -> dict[str, Any] | None:
        path = None if self.folder is None else self.folder / "results.json"
        return read_json(path, "results") if path is not None and path.is_file() else None
