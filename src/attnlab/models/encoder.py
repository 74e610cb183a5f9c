"""BERT-family encoder (Devlin et al. 2019) on attnlab's MultiHeadAttention.

Read top to bottom: embeddings (token + position + segment, LayerNorm), then ``num_layers``
post-LayerNorm blocks ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``. RoBERTa (Liu et al. 2019) is
the same network with positions numbered from ``pad_token_id + 1``.

The weights load from a Hugging Face checkpoint through the explicit name map in
``attnlab.models.loading``; outputs match ``transformers``' BertModel/RobertaModel to ~1e-6 in
float32 (tests/models). Every attention call goes through ``attnlab.attention``, so any
attnlab backend, mask or score_mod can be swapped into the real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.models.common import (
    ScoreMods,
    TransformerOutput,
    activation,
    check_ids,
    check_score_mods,
    combine,
    key_padding_mask,
    layer_score_mod,
)
from attnlab.modules.hooks import HookedModel, HookPoint
from attnlab.modules.multihead import MultiHeadAttention

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int  # rows of the position table
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    roberta_positions: bool = False  # positions = pad_token_id + 1 + index (RoBERTa)
    model_type: str = "bert"

    @property
    def max_tokens(self) -> int:
        """Longest input: RoBERTa spends pad_token_id + 1 rows of its table on the offset."""
        return self.max_positions - (self.pad_token_id + 1 if self.roberta_positions else 0)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> EncoderConfig:
        """From a Hugging Face ``config.json`` dict; refuses settings this code does not implement."""
        mt = cfg.get("model_type")
        if mt not in ENCODER_TYPES:
            raise ValueError(f"config.json: expected model_type in {ENCODER_TYPES}, got {mt!r}")
        pos = cfg.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"config.json: expected position_embedding_type 'absolute', got {pos!r}")
        if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
            raise ValueError("config.json: expected an encoder (is_decoder false), got a decoder config")
        roberta = mt != "bert"
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"], max_positions=cfg["max_position_embeddings"],
            type_vocab_size=cfg.get("type_vocab_size", 2), layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            hidden_act=cfg.get("hidden_act", "gelu"), hidden_dropout=cfg.get("hidden_dropout_prob", 0.1),
            attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=cfg.get("pad_token_id", 1 if roberta else 0) or 0,
            roberta_positions=roberta, model_type=mt,
        )


class EncoderEmbeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def positions(self, input_ids: Tensor) -> Tensor:
        B, L = input_ids.shape
        if not self.cfg.roberta_positions:
            return torch.arange(L, device=input_ids.device).expand(B, L)  # (B, L)
        # RoBERTa: real tokens count up from pad_token_id + 1; padding sits at pad_token_id.
        real = (input_ids != self.cfg.pad_token_id).long()  # (B, L)
        return torch.cumsum(real, dim=1) * real + self.cfg.pad_token_id  # (B, L)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, L, E)
        x = x + self.position(self.positions(input_ids))  # (B, L, E)
        return self.dropout(self.norm(x))


class EncoderLayer(nn.Module):
    """One post-LN block: ``x = LN(x + Attn(x)); x = LN(x + W2·act(W1·x))`` (Vaswani et al. §3)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        E = cfg.hidden_size
        self.attention = MultiHeadAttention(E, cfg.num_heads, dropout=cfg.attention_dropout)
        self.attention_norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(E, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, E)
        self.ffn_norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.act = activation(cfg.hidden_act)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        # Post-LN: the stream before the layer, after LN(x + attention), after the layer (B, L, E),
        # and what each sublayer adds before its LayerNorm.
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_mlp_post = HookPoint()  # (B, L, I): the feed-forward's hidden activation

    def forward(self, x: Tensor, *, mask: object, score_mod, need_weights: bool,
                backend: str) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)  # (B, L, E)
        attn = self.attention(x, mask=mask, score_mod=score_mod, need_weights=need_weights,
                              backend=backend)
        a = self.hook_attn_out(self.dropout(attn.output))  # (B, L, E)
        x = self.hook_resid_mid(self.attention_norm(x + a))
        h = self.ffn_out(self.hook_mlp_post(self.act(self.ffn_in(x))))  # (B, L, I) -> (B, L, E)
        x = self.ffn_norm(x + self.hook_mlp_out(self.dropout(h)))
        return self.hook_resid_post(x), attn.weights


class Encoder(HookedModel):
    """A BERT/RoBERTa encoder. ``forward`` returns every hidden state and, on request, weights."""

    kind = "encoder"
    mlp_post = "hook_mlp_post"

    def __init__(self, cfg: EncoderConfig, *, pooler: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = EncoderEmbeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        # The [CLS] pooler (dense + tanh) is part of BertModel; kept when the checkpoint has it.
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None
        self.hook_embed = HookPoint()  # (B, L, E): the embeddings' output (after their LayerNorm)
        self.setup_hooks()

    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    @property
    def num_heads(self) -> int:
        return self.cfg.num_heads

    def forward(
        self,
        input_ids: Tensor,  # (B, L)
        attention_mask: Tensor | None = None,  # (B, L) 1 = token, 0 = padding
        token_type_ids: Tensor | None = None,  # (B, L)
        *,
        mask: object = None,  # extra mask_mod (True = may attend), e.g. sliding_window(3, 3)
        score_mods: ScoreMods | None = None,  # {layer: score_mod}: read or patch scores
        need_weights: bool = False,
        backend: str = "auto",
    ) -> TransformerOutput:
        check_ids("input_ids", input_ids, self.cfg.vocab_size, self.cfg.max_tokens)
        check_score_mods(score_mods, self.cfg.num_layers)
        full_mask = combine(key_padding_mask(attention_mask), mask)
        x = self.hook_embed(self.embeddings(input_ids, token_type_ids))  # (B, L, E)
        hidden, weights = [x], []
        for i, layer in enumerate(self.layers):
            x, w = layer(x, mask=full_mask, score_mod=layer_score_mod(score_mods, i),
                         need_weights=need_weights, backend=backend)
            hidden.append(x)
            weights.append(w)
        return TransformerOutput(x, tuple(hidden), tuple(weights) if need_weights else None)

    def pooled(self, last_hidden_state: Tensor) -> Tensor:
        """BERT's pooler output: tanh(W · h_[CLS] + b), (B, E)."""
        if self.pooler is None:
            raise ValueError("pooled: this checkpoint has no pooler weights (pooler.dense.*)")
        return torch.tanh(self.pooler(last_hidden_state[:, 0]))
