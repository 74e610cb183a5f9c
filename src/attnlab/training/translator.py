"""A trained model folder as a translator: text in, translation + alignment out.

Unknown source tokens are encoded as ``<unk>`` (the model has a learned embedding for it) and
reported in :attr:`Translation.unknown`, so a user sees which words the model could not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnlab.data.batching import pad
from attnlab.data.io import read_json
from attnlab.data.tsv import load_tsv
from attnlab.data.vocab import EOS
from attnlab.models.seq2seq.model import Seq2Seq
from attnlab.training.evaluate import Codec, EvalResult, evaluate_pairs
from attnlab.training.run import SPLITS, load_codec, read_run_config
from attnlab.training.search import decode


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

    @property
    def target_labels(self) -> list[str]:
        """Row labels for the alignment: the tokens, then </s> when it was emitted."""
        return [*self.tokens, EOS] if self.finished else list(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_tokens": self.source_tokens,
                "translation": self.text, "tokens": self.tokens,
                "target_labels": self.target_labels, "score": round(self.score, 4),
                "finished": self.finished, "unknown": self.unknown,
                "alignment": self.weights, "centres": self.centres}


class Translator:
    def __init__(self, model: Seq2Seq, codec: Codec, folder: Path | None = None,
                 ratio: float = 2.0) -> None:
        self.model, self.codec, self.folder = model.eval(), codec, folder
        self.ratio = ratio  # output limit: ratio·|source| + 10 tokens (train.max_len_ratio)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Translator:
        folder = Path(folder)
        model = Seq2Seq.load(folder)  # checks the folder, files and format first
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

    def translate(self, text: str, *, beam: int = 1, alpha: float = 1.0,
                  ratio: float | None = None) -> Translation:
        if not isinstance(text, str):
            raise TypeError(f"text: expected a string, got {type(text).__name__}")
        tokens = self.codec.src_tok.tokenize(text)
        if not tokens:
            raise ValueError(f"text: expected a non-empty sentence, got {text!r}")
        src, lengths = pad([self.codec.src_vocab.encode(tokens)])
        with torch.no_grad():
            hyp = decode(self.model, src, lengths, beam=beam, alpha=alpha,
                         ratio=self.ratio if ratio is None else ratio)[0]
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
        pairs = load_tsv(path).pairs
        edges = None
        if (self.folder / "run.json").is_file():
            edges = read_run_config(self.folder).data.buckets
        return evaluate_pairs(self.model, pairs, self.codec, beam=beam, alpha=alpha,
                              ratio=self.ratio, batch_size=batch_size, edges=edges)

    def results(self) -> dict[str, Any] | None:
        path = None if self.folder is None else self.folder / "results.json"
        return read_json(path, "results") if path is not None and path.is_file() else None
