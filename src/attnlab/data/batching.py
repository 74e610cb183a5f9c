"""Token ids, padded batches and a deterministic, resumable batch order.

The order of epoch ``e`` is a pure function of ``(seed, e)``: a resumed run needs only the
epoch and the batch index it stopped at (the "data-order state") to continue exactly.
Batches group sentences of similar source length (sorted inside pools of 50 batches, then
the batches are shuffled), which cuts padding without making the order predictable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.data.tokenize import Tokenizer
from attnlab.data.tsv import Pair
from attnlab.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab


@dataclass
class EncodedPairs:
    src: list[list[int]]  # source ids, no specials
    tgt: list[list[int]]  # target ids, no specials

    def __len__(self) -> int:
        return len(self.src)


def encode_pairs(pairs: Sequence[Pair], src_tok: Tokenizer, tgt_tok: Tokenizer,
                 src_vocab: Vocab, tgt_vocab: Vocab) -> EncodedPairs:
    return EncodedPairs(src=[src_vocab.encode(src_tok.tokenize(p.src)) for p in pairs],
                   tgt=[tgt_vocab.encode(tgt_tok.tokenize(p.tgt)) for p in pairs])


@dataclass
class Batch:
    src: Tensor  # (B, Ls) long, PAD after each sentence
    src_lengths: Tensor  # (B,) long
    tgt_in: Tensor  # (B, Lt): <s> y_1 .. y_n  (teacher forcing input)
    tgt_out: Tensor  # (B, Lt): y_1 .. y_n </s> (what is predicted)
    index: list[int]  # positions of these sentences in their split

    @property
    def n_target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())


def pad(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Right-pad with PAD: (B, L) long ids and (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lengths.max()) if len(seqs) else 1)), PAD_ID,
                     dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths


def collate(data: EncodedPairs, index: Sequence[int]) -> Batch:
    src, src_len = pad([data.src[i] for i in index])
    tgt_in, _ = pad([[BOS_ID, *data.tgt[i]] for i in index])
    tgt_out, _ = pad([[*data.tgt[i], EOS_ID] for i in index])
    return Batch(src, src_len, tgt_in, tgt_out, list(index))


def epoch_order(src_lengths: Sequence[int], batch_size: int, seed: int, epoch: int
                ) -> list[list[int]]:
    """The batches of epoch ``epoch``: a list of index lists, the same on every machine."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(src_lengths)))
    rng.shuffle(idx)
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(idx), pool):
        chunk = sorted(idx[start: start + pool], key=lambda i: src_lengths[i])
        batches += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_order(src_lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Length-sorted batches for decoding (callers put results back by ``Batch.index``)."""
    idx = sorted(range(len(src_lengths)), key=lambda i: src_lengths[i])
    return [idx[j: j + batch_size] for j in range(0, len(idx), batch_size)]
