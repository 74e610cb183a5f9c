"""RNN encoder-decoder with attention (Bahdanau et al. 2014; Luong et al. 2015)."""

from attnlab.models.seq2seq.config import ATTENTIONS, Seq2SeqConfig
from attnlab.models.seq2seq.decoder import AttentionalDecoder, DecoderOutput, DecoderState
from attnlab.models.seq2seq.encoder import Encoder, Memory
from attnlab.models.seq2seq.model import Seq2Seq

__all__ = ["ATTENTIONS", "AttentionalDecoder", "DecoderOutput", "DecoderState", "Encoder",
           "Memory", "Seq2Seq", "Seq2SeqConfig"]
