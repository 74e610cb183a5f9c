"""GPT-2-family decoder (Radford et al. 2019) on attnlab's MultiHeadAttention.

Read top to bottom: token + learned position embeddings, ``num_layers`` pre-LayerNorm blocks
``x = x + Attn(LN(x)); x = x + MLP(LN(x))`` under a causal mask, a final LayerNorm, and a
language-model head tied to the token embeddings. A list of :class:`KVCache` (one per layer)
makes decoding incremental: each step feeds only the new tokens and a bottom-right causal mask
lets them see the whole past.

GPT-2 stores its projections as ``Conv1D`` (weight shaped (in, out)) and fuses q, k, v into one
``c_attn``; ``attnlab.models.loading`` splits and transposes them into the separate q/k/v
projections of MultiHeadAttention.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.functional.masks import causal
from attnlab.models.common import (
    DecoderLM,
    ScoreMods,
    TransformerOutput,
    activation,
    check_ids,
    check_score_mods,
    combine,
    key_padding_mask,
    layer_score_mod,
)
from attnlab.modules.hooks import HookPoint
from attnlab.modules.multihead import KVCache, MultiHeadAttention

DECODER_TYPES = ("gpt2",)


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    resid_dropout: float = 0.1
    embd_dropout: float = 0.1
    attention_dropout: float = 0.1
    # GPT-2's score scaling: 1/sqrt(Dh) when scale_attn_weights, and a further 1/(layer + 1)
    # when scale_attn_by_inverse_layer_idx (Mistral's stability trick). Folded into W_q at load.
    scale_attn_weights: bool = True
    scale_by_inverse_layer: bool = False
    eos_token_id: int | None = None
    model_type: str = "gpt2"

    @property
    def max_tokens(self) -> int:
        return self.max_positions

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> DecoderConfig:
        mt = cfg.get("model_type")
        if mt not in DECODER_TYPES:
            raise ValueError(f"config.json: expected model_type in {DECODER_TYPES}, got {mt!r}")
        if cfg.get("add_cross_attention"):
            raise ValueError("config.json: expected a GPT-2 without cross-attention, got add_cross_attention")
        E = cfg["n_embd"]
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=E, num_layers=cfg["n_layer"],
            num_heads=cfg["n_head"], intermediate_size=cfg.get("n_inner") or 4 * E,
            max_positions=cfg["n_positions"], layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            activation=cfg.get("activation_function", "gelu_new"),
            resid_dropout=cfg.get("resid_pdrop", 0.1), embd_dropout=cfg.get("embd_pdrop", 0.1),
            attention_dropout=cfg.get("attn_pdrop", 0.1),
            scale_attn_weights=cfg.get("scale_attn_weights", True),
            scale_by_inverse_layer=cfg.get("scale_attn_by_inverse_layer_idx", False),
            eos_token_id=cfg.get("eos_token_id"), model_type=mt,
        )

    def q_scale(self, layer: int) -> float:
        """Factor folded into W_q so that attnlab's default 1/sqrt(Dh) gives GPT-2's scaling."""
        s = 1.0 if self.scale_attn_weights else (self.hidden_size // self.num_heads) ** 0.5
        return s / (layer + 1) if self.scale_by_inverse_layer else s


class DecoderBlock(nn.Module):
    """``x = x + Attn(LN1(x)); x = x + MLP(LN2(x))`` — pre-LN (Radford et al. 2019, §2.3)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        E = cfg.hidden_size
        self.attention_norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.attention = MultiHeadAttention(E, cfg.num_heads, dropout=cfg.attention_dropout)
        self.mlp_norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.mlp_in = nn.Linear(E, cfg.intermediate_size)
        self.mlp_out = nn.Linear(cfg.intermediate_size, E)
        self.act = activation(cfg.activation)
        self.dropout = nn.Dropout(cfg.resid_dropout)
        # The residual stream before, between and after the sublayers, and what each adds (B, L, E).
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_mlp_post = HookPoint()  # (B, L, I): the MLP's hidden activation

    def forward(self, x: Tensor, *, mask: object, score_mod, need_weights: bool, cache: KVCache | None,
                backend: str) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)  # (B, L, E)
        attn = self.attention(self.attention_norm(x), mask=mask, score_mod=score_mod,
                              need_weights=need_weights, cache=cache, backend=backend)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.dropout(attn.output)))  # (B, L, E)
        h = self.hook_mlp_post(self.act(self.mlp_in(self.mlp_norm(x))))  # (B, L, I)
        h = self.mlp_out(h)  # (B, L, E)
        x = x + self.hook_mlp_out(self.dropout(h))
        return self.hook_resid_post(x), attn.weights


class Decoder(DecoderLM):
    """A GPT-2 language model: ``forward`` gives hidden states, logits and (optionally) weights.
    Implements :class:`attnlab.models.contract.CausalLM`."""

    mlp_post = "hook_mlp_post"

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.embd_dropout)
        self.hook_embed = HookPoint()  # (B, L, E): token + position embeddings
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # None = tied to token_embedding (GPT-2); a checkpoint with its own lm_head.weight sets it.
        self.lm_head: nn.Linear | None = None
        self.setup_hooks()

    @property
    def num_kv_heads(self) -> int:
        return self.cfg.num_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return () if self.cfg.eos_token_id is None else (int(self.cfg.eos_token_id),)

    def layer_window(self, layer: int) -> int | None:
        return None  # every GPT-2 layer attends to the whole past

    def forward(
        self,
        input_ids: Tensor,  # (B, L) the new tokens (all of them without a cache)
        attention_mask: Tensor | None = None,  # (B, L_past + L) 1 = token, 0 = padding
        *,
        position_ids: Tensor | None = None,  # (B, L) or (L,); default past..past+L-1
        cache: list[KVCache] | None = None,
        mask: object = None,  # extra mask_mod ANDed with the causal mask, e.g. sliding_window(4)
        score_mods: ScoreMods | None = None,
        need_weights: bool | Collection[int] = False,  # True, or the layers whose weights to compute
        keep_weights: bool = True,  # False: weights only reach hook_pattern (bounded memory)
        backend: str = "auto",
        logits_to_keep: int = 0,  # 0 = logits at every position; n = only the last n
    ) -> TransformerOutput:
        past = len(cache[0]) if cache else 0
        check_ids("input_ids", input_ids, self.cfg.vocab_size, self.cfg.max_positions, past)
        check_score_mods(score_mods, self.cfg.num_layers)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache: expected {len(self.layers)} KVCache (one per layer), got {len(cache)}")
        L = input_ids.shape[1]
        pos = torch.arange(past, past + L, device=input_ids.device) if position_ids is None else position_ids
        x = self.hook_embed(self.token_embedding(input_ids) + self.position_embedding(pos))  # (B, L, E)
        x = self.dropout(x)
        # With a cache the L new queries are the newest of past + L keys: bottom-right alignment.
        full_mask = combine(causal("bottom-right" if past else "top-left"),
                            key_padding_mask(attention_mask), mask)
        wanted = (lambda i: need_weights) if isinstance(need_weights, bool) else need_weights.__contains__
        hidden: list[Tensor] = [x]
        weights: list[Any] = []  # per layer: (B, H, L, Lk), None where not computed
        for i, block in enumerate(self.layers):
            x, w = block(x, mask=full_mask, score_mod=layer_score_mod(score_mods, i),
                         need_weights=wanted(i), cache=None if cache is None else cache[i],
                         backend=backend)
            hidden.append(x)
            weights.append(w if keep_weights else None)
        x = self.final_norm(x)
        # HF's hidden_states end with the final-LayerNorm output instead of the raw last layer.
        hidden[-1] = x
        logits = self.unembed(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, L or n, V)
        kept = tuple(weights) if need_weights and keep_weights else None
        return TransformerOutput(x, tuple(hidden), kept, logits, cache)
