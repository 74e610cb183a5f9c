"""The encoder-decoder as one module, with save/load to a folder.

A saved model is two files: ``model.safetensors`` (weights; no pickle) and ``model.json``
(format tag + :class:`Seq2SeqConfig`); :class:`attnlab.models.translation.TranslationModel`
writes and checks them (format tag, both files present, every tensor's name and shape).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attnlab.models.seq2seq.decoder import AttentionalDecoder, DecoderOutput, DecoderState, StepOutput
from attnlab.models.seq2seq.encoder import Memory, RNNEncoder
from attnlab.models.seq2seq.seq2seq_config import Seq2SeqConfig
from attnlab.models.translation import CONFIG, WEIGHTS, TranslationModel, read_weights

MODEL_FORMAT = "attnlab.seq2seq/1"
__all__ = ["CONFIG", "MODEL_FORMAT", "WEIGHTS", "Seq2Seq", "read_weights"]


class Seq2Seq(TranslationModel):
    FORMAT = MODEL_FORMAT
    ARCH = "rnn"

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        cfg.check_vocab()
        self.cfg = cfg
        self.encoder = RNNEncoder(cfg)
        self.decoder = AttentionalDecoder(cfg)

    @classmethod
    def config_from_dict(cls, d: dict[str, Any]) -> Seq2SeqConfig:
        return Seq2SeqConfig.from_dict(d)

    def encode(self, src: Tensor, src_lengths: Tensor) -> Memory:
        """src (B, Ls), src_lengths (B,) -> Memory with the attention's keys cached."""
        if bool((src_lengths < 1).any()):
            raise ValueError(f"src_lengths: expected every source to have >= 1 token, "
                             f"got {src_lengths.tolist()}")
        return self.decoder.prepare(self.encoder(src, src_lengths))

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> DecoderOutput:
        """Teacher forcing: logits (B, Lt, V) and alignments (B, Lt, Ls)."""
        return self.decoder(tgt_in, self.encode(src, src_lengths))

    def init_state(self, memory: Memory, *, cache: bool = True) -> DecoderState:
        return self.decoder.init_state(memory)  # the RNN state is its own cache

    def step(self, y_prev: Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        return self.decoder.step(y_prev, state, memory)
