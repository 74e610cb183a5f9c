"""The Transformer built from attnlab's parts (Vaswani et al. 2017): an encoder-decoder
translator and a decoder-only language model (with an attention-only option).

Files, in reading order: config.py (hyper-parameters), layers.py (embeddings, positions,
feed-forward, the residual layer), encdec.py (the translator), lm.py (the LM), heads.py
(attention sites by name, head masks).
"""

from attnlab.models.transformer.encdec import (
    Transformer,
    TransformerMemory,
    TransformerState,
    TransformerStep,
    TranslationOutput,
)
from attnlab.models.transformer.heads import AttentionSite, ablation_masks, attention_sites, head_mask
from attnlab.models.transformer.layers import FeedForward, InputEmbedding, TransformerLayer
from attnlab.models.transformer.lm import LMOutput, TransformerLM
from attnlab.models.transformer.transformer_config import NORMS, POSITIONS, LMConfig, TransformerConfig

__all__ = ["NORMS", "POSITIONS", "AttentionSite", "FeedForward", "InputEmbedding", "LMConfig",
           "LMOutput", "Transformer", "TransformerConfig", "TransformerLM", "TransformerLayer",
           "TransformerMemory", "TransformerState", "TransformerStep", "TranslationOutput",
           "ablation_masks", "attention_sites", "head_mask"]
