"""Whole models: BERT-family encoders and GPT-2 decoders on attnlab's MultiHeadAttention, a
loader for local Hugging Face folders (the embedded all-MiniLM-L6-v2 by default) and the RNN
seq2seq translator (``attnlab.models.seq2seq``)."""

from attnlab.models.common import TransformerOutput
from attnlab.models.decoder import Decoder, DecoderConfig
from attnlab.models.encoder import Encoder, EncoderConfig
from attnlab.models.loading import DEFAULT_MODEL_NAME, LoadedModel, default_model_dir, load_model
from attnlab.models.tokenizer import Encoded, TextTokenizer

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Decoder",
    "DecoderConfig",
    "Encoded",
    "Encoder",
    "EncoderConfig",
    "LoadedModel",
    "TextTokenizer",
    "TransformerOutput",
    "default_model_dir",
    "load_model",
]
