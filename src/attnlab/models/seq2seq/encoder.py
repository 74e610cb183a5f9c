"""Embedding + (bidirectional) GRU/LSTM encoder: one annotation per source token.

Bahdanau et al. 2014 §3.2: the annotation h_j = [→h_j; ←h_j] summarises the whole sentence
with a focus on word j. The summary vector (what the attention-free baseline must squeeze the
sentence into) is [→h_Tx; ←h_1], the two directions' final states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnlab.data.vocab import PAD_ID
from attnlab.models.seq2seq.seq2seq_config import Seq2SeqConfig
from attnlab.modules.bahdanau import source_allowed

__all__ = ["PAD_ID", "Memory", "RNNEncoder", "make_rnn"]


@dataclass
class Memory:
    """What the decoder reads: the encoded source and per-sentence caches."""

    states: Tensor  # (B, Ls, H): annotations h̄_s
    lengths: Tensor  # (B,) long
    summary: Tensor  # (B, H): [→h_Tx; ←h_1]
    allowed: Tensor  # (B, 1, Ls) bool: real tokens (True = may attend)
    keys: Tensor | None = None  # (B, Ls, A): the attention's precomputed key features

    def index_select(self, idx: Tensor) -> Memory:
        """Reorder / repeat sentences (beam search): idx (B',) -> a Memory of batch B'."""
        return Memory(self.states.index_select(0, idx), self.lengths.index_select(0, idx),
                      self.summary.index_select(0, idx), self.allowed.index_select(0, idx),
                      None if self.keys is None else self.keys.index_select(0, idx))


def make_rnn(kind: str, input_size: int, hidden: int, layers: int, dropout: float,
             bidirectional: bool = False) -> nn.RNNBase:
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    return cls(input_size, hidden, num_layers=layers, batch_first=True,
               dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)


class RNNEncoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        per_dir = cfg.hidden // 2 if cfg.bidirectional else cfg.hidden
        self.embed = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = make_rnn(cfg.rnn, cfg.emb_dim, per_dir, cfg.layers, cfg.dropout,
                            cfg.bidirectional)

    def forward(self, src: Tensor, lengths: Tensor) -> Memory:
        """src (B, Ls) ids, lengths (B,) >= 1 -> Memory (states (B, Ls, H), summary (B, H))."""
        bsz, src_len = src.shape
        x = self.drop(self.embed(src))  # (B, Ls, E)
        # Packing makes the backward direction start at each sentence's last real token.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src_len)  # (B, Ls, H)
        h = h_n[0] if isinstance(h_n, tuple) else h_n  # (layers·dirs, B, H/dirs)
        summary = torch.cat([h[-2], h[-1]], -1) if self.cfg.bidirectional else h[-1]  # (B, H)
        allowed = source_allowed(lengths, bsz, 1, src_len, src.device)  # (B, 1, Ls)
        return Memory(states, lengths.to(src.device), summary, allowed)
