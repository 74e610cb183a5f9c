"""The Transformer's parts (Vaswani et al. 2017, §3): embeddings with positions, the
position-wise feed-forward network and the residual layer every stack is made of.

Read top to bottom:

- :class:`InputEmbedding`: token embedding · √d_model (§3.4) + a positional encoding (§3.5),
  then dropout (§5.4). Rotary positions (Su et al. 2021) are not added here: they rotate q and
  k inside every self-attention (:func:`rotary_tables` makes the tables).
- :class:`FeedForward`: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (eq. 2).
- :class:`TransformerLayer`: self-attention, optional cross-attention (encoder-decoder
  attention, §3.2.3), optional feed-forward, each a residual sublayer with LayerNorm after
  (post-LN, §3.1: LayerNorm(x + Sublayer(x))) or before (pre-LN: x + Sublayer(LayerNorm(x))).
  An encoder layer is self + FFN, a decoder layer masked self + cross + FFN, a decoder-only LM
  block masked self + FFN, or masked self alone when ``attention_only``.

Every attention is :class:`attnlab.modules.multihead.MultiHeadAttention`; masks come from
:mod:`attnlab.functional.masks`, passed in by the model (the layer does not decide who may see
whom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.data.vocab import PAD_ID
from attnlab.functional.positional import rotary_cos_sin, sinusoidal
from attnlab.modules.hooks import HookPoint
from attnlab.modules.multihead import KVCache, MultiHeadAttention


def init_linear(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear inside ``module`` (Glorot &
    Bengio 2010; what the reference tensor2tensor and fairseq implementations use)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class InputEmbedding(nn.Module):
    """ids (B, L) -> (B, L, d_model): E[ids]·√d_model + PE[offset .. offset + L) (§3.4-3.5)."""

    def __init__(self, vocab_size: int, d_model: int, positions: str, max_len: int,
                 dropout: float, *, pad: bool = True) -> None:
        """``pad``: id PAD_ID is padding (a zero vector that never trains), as in the
        translators' vocabularies; a language model over raw ids passes False."""
        super().__init__()
        self.d_model, self.positions, self.max_len = d_model, positions, max_len
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID if pad else None)
        # N(0, d^-1/2): after the √d scale the embeddings have unit variance, like the sinusoids
        nn.init.normal_(self.tokens.weight, std=d_model ** -0.5)
        if pad:
            with torch.no_grad():
                self.tokens.weight[PAD_ID].zero_()
        self.table: nn.Embedding | None = None
        if positions == "learned":
            self.table = nn.Embedding(max_len, d_model)
            # fairseq's N(0, 1/d), 1/√d of the √d-scaled tokens. N(0, 1) trains the ablations
            # translator to 94.3 test BLEU in 1000 steps, not 81.1, and did no worse on the
            # induction LM in 3 seeds; kept until more runs say so (docs/transformer.md, ablations)
            nn.init.normal_(self.table.weight, std=d_model ** -0.5)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        length = ids.shape[1]
        x = self.tokens(ids) * math.sqrt(self.d_model)  # (B, L, D)  §3.4
        if self.positions == "sinusoidal":  # §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), ...
            pe = sinusoidal(offset + length, self.d_model, dtype=x.dtype)[offset:]  # (L, D)
            x = x + pe.to(x.device)
        elif self.table is not None:
            if offset + length > self.max_len:
                raise ValueError(f"ids: expected at most model.max_len={self.max_len} positions "
                                 f"(learned positions), got {offset + length}")
            pos = torch.arange(offset, offset + length, device=ids.device)  # (L,)
            x = x + self.table(pos)  # (B, L, D) + (L, D)
        return self.drop(x)


def rotary_tables(positions: str, length: int, head_dim: int, offset: int, like: Tensor
                  ) -> tuple[Tensor, Tensor] | None:
    """RoPE's (cos, sin) tables (L, Dh) for positions offset .. offset + L - 1, or None
    when the model does not use rotary positions."""
    if positions != "rotary":
        return None
    cos, sin = rotary_cos_sin(length, head_dim, offset=offset, dtype=like.dtype)
    return cos.to(like.device), sin.to(like.device)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, the same at every position (eq. 2)."""

    def __init__(self, d_model: int, ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ffn)
        self.w2 = nn.Linear(ffn, d_model)
        self.hook_post = HookPoint()  # (B, L, d_ff): the hidden activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.hook_post(torch.relu(self.w1(x))))  # (B, L, D) -> (B, L, d_ff) -> (B, L, D)


@dataclass
class LayerOutput:
    x: Tensor  # (B, L, D): the residual stream after the layer
    self_weights: Tensor | None = None  # (B, H, L, Lk) when need_weights
    cross_weights: Tensor | None = None  # (B, H, L, Ls) when need_weights and cross


class TransformerLayer(nn.Module):
    """One layer of a stack: self-attention [+ cross-attention] [+ feed-forward]."""

    def __init__(self, d_model: int, heads: int, ffn: int, *, dropout: float, attn_dropout: float,
                 norm: str, cross: bool = False, mlp: bool = True) -> None:
        super().__init__()
        self.pre = norm == "pre"
        self.self_attn = MultiHeadAttention(d_model, heads, dropout=attn_dropout)
        self.norm_self = nn.LayerNorm(d_model)
        self.cross_attn: MultiHeadAttention | None = None
        self.norm_cross: nn.LayerNorm | None = None
        if cross:
            self.cross_attn = MultiHeadAttention(d_model, heads, dropout=attn_dropout)
            self.norm_cross = nn.LayerNorm(d_model)
        self.ffn: FeedForward | None = FeedForward(d_model, ffn) if mlp else None
        self.norm_ffn: nn.LayerNorm | None = nn.LayerNorm(d_model) if mlp else None
        self.drop = nn.Dropout(dropout)  # P_drop on each sublayer's output (§5.4)
        # Hook points (B, L, D): each sublayer's output before the residual add, and the stream
        self.hook_attn_out, self.hook_cross_out = HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()
        # the stream entering the layer and after self-attention's residual (+ norm in post-LN)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        init_linear(self)

    def _residual(self, x: Tensor, out: Tensor, norm: nn.LayerNorm) -> Tensor:
        """post-LN: LayerNorm(x + Dropout(out)) (§3.1); pre-LN: x + Dropout(out), the sublayer
        having read LayerNorm(x)."""
        y = x + self.drop(out)  # (B, L, D)
        return y if self.pre else norm(y)

    def forward(self, x: Tensor, *, self_mask: object, rotary: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, memory_kv: tuple[Tensor, Tensor] | None = None,
                cross_mask: object = None, need_weights: bool = False,
                cross_weights: bool = False) -> LayerOutput:
        """x (B, L, D); ``memory_kv``: the cross-attention's projected memory (B, H, Ls, Dh) x2
        (``cross_attn.project_kv(encoder output)``); ``cache``: this layer's self-attention
        KV cache; ``cross_weights``: return the cross-attention weights even without
        ``need_weights`` (the alignment a translator shows)."""
        x = self.hook_resid_pre(x)  # (B, L, D)
        h = self.norm_self(x) if self.pre else x
        a = self.self_attn(h, mask=self_mask, rotary=rotary, cache=cache, need_weights=need_weights)
        x = self.hook_resid_mid(self._residual(x, self.hook_attn_out(a.output), self.norm_self))
        c = None
        if self.cross_attn is not None and self.norm_cross is not None:
            if memory_kv is None:
                raise ValueError("memory_kv: expected the encoder memory's projected keys and "
                                 "values for a layer with cross-attention, got None")
            h = self.norm_cross(x) if self.pre else x
            c = self.cross_attn(h, kv=memory_kv, mask=cross_mask,
                                need_weights=need_weights or cross_weights)
            x = self._residual(x, self.hook_cross_out(c.output), self.norm_cross)
        if self.ffn is not None and self.norm_ffn is not None:
            h = self.norm_ffn(x) if self.pre else x
            x = self._residual(x, self.hook_mlp_out(self.ffn(h)), self.norm_ffn)
        return LayerOutput(self.hook_resid_post(x), a.weights, None if c is None else c.weights)
