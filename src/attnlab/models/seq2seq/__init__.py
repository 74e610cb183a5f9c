"""RNN encoder-decoder with attention (Bahdanau et al. 2014; Luong et al. 2015)."""

from attnlab.models.seq2seq.decoder import AttentionalDecoder, DecoderOutput, DecoderState
from attnlab.models.seq2seq.encoder import Memory, RNNEncoder
from attnlab.models.seq2seq.model import Seq2Seq
from attnlab.models.seq2seq.seq2seq_config import ATTENTIONS, Seq2SeqConfig

__all__ = [
           "ATTENTIONS",
           "AttentionalDecoder",
           "DecoderOutput",
           "DecoderState",
           "Memory",
           "RNNEncoder",
           "Seq2Seq",
           "Seq2SeqConfig",
]
