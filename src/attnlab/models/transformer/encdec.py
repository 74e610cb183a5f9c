"""The encoder-decoder Transformer (Vaswani et al. 2017, Fig. 1) as a translator.

Read top to bottom:

1. ``encode``: source ids -> embeddings + positions -> N encoder layers (self-attention over
   the real source tokens: a padding mask from :func:`attnlab.functional.masks.padding`) ->
   the memory. Each decoder layer's cross-attention projects the memory to keys and values
   once here (``MultiHeadAttention.project_kv``), not at every decoding step.
2. ``decode``: target ids -> embeddings + positions -> N decoder layers (masked
   self-attention: ``causal("bottom-right")``, so new queries see the cached past and
   themselves; cross-attention over the memory, §3.2.3) -> LayerNorm (pre-LN only) -> logits
   through the pre-softmax projection (tied to the target embedding, §3.4, by default).
3. ``forward`` is teacher forcing (training, §5); ``init_state`` + ``step`` decode one token
   at a time for greedy and beam search, with one :class:`KVCache` per decoder layer
   (``cache=False`` recomputes the whole prefix at each step instead: the reference).

The alignment a translator shows for each target token is the last decoder layer's
cross-attention averaged over heads; ``forward(..., need_weights=True)`` returns every
layer's encoder self-, decoder self- and cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.functional.masks import causal, materialize, padding
from attnlab.models.transformer.layers import InputEmbedding, TransformerLayer, rotary_tables
from attnlab.models.transformer.transformer_config import TransformerConfig
from attnlab.models.translation import TranslationModel
from attnlab.modules.hooks import HookedModel
from attnlab.modules.multihead import KVCache

FORMAT = "attnlab.transformer/1"  # listed in attnlab.models.translation.FORMATS


@dataclass
class TransformerMemory:
    """The encoded source, as every decoding step reads it."""

    states: Tensor  # (B, Ls, D): the encoder stack's output
    lengths: Tensor  # (B,) long
    allowed: Tensor  # (B, 1, 1, Ls) bool: real source tokens (True = may attend)
    kv: list[tuple[Tensor, Tensor]]  # per decoder layer: cross-attention K, V (B, H, Ls, Dh)
    weights: tuple[Tensor, ...] | None = None  # per encoder layer (B, H, Ls, Ls), if asked

    def index_select(self, idx: Tensor) -> TransformerMemory:
        """Reorder / repeat sentences (beam search): idx (B',) -> a memory of batch B'."""
        return TransformerMemory(
            self.states.index_select(0, idx), self.lengths.index_select(0, idx),
            self.allowed.index_select(0, idx),
            [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.kv],
            None if self.weights is None else tuple(w.index_select(0, idx) for w in self.weights))


@dataclass
class TransformerState:
    """What decoding has fed so far: one KV cache per decoder layer, or (``cache=False``) the
    whole prefix of target ids, recomputed at every step."""

    caches: list[KVCache] | None  # per decoder layer: keys/values (B, H, t, Dh)
    prefix: Tensor | None  # (B, t) ids fed so far, when there is no cache
    t: int = 0  # target positions fed so far

    def index_select(self, idx: Tensor) -> TransformerState:
        """Reorder batch entries (beam search backpointers): idx (B',). Never mutates self."""
        caches = None
        if self.caches is not None:
            caches = []
            for c in self.caches:
                new = KVCache()
                if c.k is not None and c.v is not None:
                    new.k, new.v = c.k.index_select(0, idx), c.v.index_select(0, idx)
                caches.append(new)
        prefix = None if self.prefix is None else self.prefix.index_select(0, idx)
        return TransformerState(caches, prefix, self.t)


@dataclass
class TranslationOutput:
    logits: Tensor  # (B, Lt, V)
    weights: Tensor | None = None  # (B, Lt, Ls): last layer's cross-attention, mean over heads
    centres: Tensor | None = None  # (the RNN's local-p field; always None here)
    encoder_self: tuple[Tensor, ...] | None = None  # per layer (B, H, Ls, Ls)
    decoder_self: tuple[Tensor, ...] | None = None  # per layer (B, H, Lt, Lt)
    cross: tuple[Tensor, ...] | None = None  # per layer (B, H, Lt, Ls)


@dataclass
class TransformerStep:
    logits: Tensor  # (B, V)
    state: TransformerState
    weights: Tensor | None = None  # (B, Ls): this step's alignment
    centres: Tensor | None = None


class Transformer(TranslationModel, HookedModel):
    FORMAT = FORMAT
    ARCH = "transformer"
    blocks = "decoder"  # hook_name(layer, site) names the decoder's layers; the encoder's by name
    attn_attr = "self_attn"
    mlp_post = "ffn.hook_post"

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg.check_vocab()
        self.cfg = cfg
        d, drop = cfg.d_model, cfg.dropout
        self.src_embed = InputEmbedding(cfg.src_vocab_size, d, cfg.positions, cfg.max_len, drop)
        self.tgt_embed = InputEmbedding(cfg.tgt_vocab_size, d, cfg.positions, cfg.max_len, drop)
        layer: dict[str, Any] = dict(dropout=drop, attn_dropout=cfg.attn_dropout, norm=cfg.norm)
        self.encoder = nn.ModuleList(TransformerLayer(d, cfg.heads, cfg.ffn, **layer)
                                     for _ in range(cfg.layers))
        self.decoder = nn.ModuleList(TransformerLayer(d, cfg.heads, cfg.ffn, cross=True, **layer)
                                     for _ in range(cfg.layers))
        # pre-LN leaves the last layer's output unnormalised: one LayerNorm ends each stack
        pre = cfg.norm == "pre"
        self.encoder_norm: nn.Module = nn.LayerNorm(d) if pre else nn.Identity()
        self.decoder_norm: nn.Module = nn.LayerNorm(d) if pre else nn.Identity()
        # §3.4: the pre-softmax linear transformation shares the target embedding's weights
        self.out: nn.Linear | None = None if cfg.tie_embeddings else nn.Linear(d, cfg.tgt_vocab_size)
        self.out_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab_size)) if cfg.tie_embeddings else None
        if self.out is not None:
            nn.init.xavier_uniform_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.setup_hooks()

    @classmethod
    def config_from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        return TransformerConfig.from_dict(d)

    # -- encoder -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor, *, need_weights: bool = False
               ) -> TransformerMemory:
        """src (B, Ls) ids, src_lengths (B,) >= 1 -> the memory (B, Ls, D) + cross K/V."""
        if bool((src_lengths < 1).any()):
            raise ValueError(f"src_lengths: expected every source to have >= 1 token, "
                             f"got {src_lengths.tolist()}")
        bsz, src_len = src.shape
        lengths = src_lengths.to(src.device)
        # key j of sentence b is visible iff j < length_b: padding is never attended (dense once)
        allowed = materialize(padding(k_lengths=lengths), 1, src_len, batch=bsz,
                              device=src.device)  # (B, 1, 1, Ls)
        x = self.src_embed(src)  # (B, Ls, D)
        rot = rotary_tables(self.cfg.positions, src_len, self.cfg.head_dim, 0, x)
        weights = []
        for layer in self.encoder:
            out = layer(x, self_mask=allowed, rotary=rot, need_weights=need_weights)
            x = out.x
            weights.append(out.self_weights)
        x = self.encoder_norm(x)  # (B, Ls, D)
        kv = []  # per decoder layer: (B, H, Ls, Dh) x2
        for layer in self.decoder:
            assert isinstance(layer, TransformerLayer) and layer.cross_attn is not None
            kv.append(layer.cross_attn.project_kv(x))
        return TransformerMemory(x, lengths, allowed, kv, tuple(weights) if need_weights else None)

    # -- decoder -------------------------------------------------------------------------
    def logits(self, x: Tensor) -> Tensor:
        """(B, Lt, D) -> (B, Lt, V)."""
        if self.out is not None:
            return self.out(x)
        return F.linear(x, self.tgt_embed.tokens.weight, self.out_bias)  # tied (§3.4)

    def decode(self, tgt_in: Tensor, memory: TransformerMemory, *,
               caches: list[KVCache] | None = None, need_weights: bool = False,
               alignment: bool = False) -> TranslationOutput:
        """tgt_in (B, Lt): the new target ids (<s> y_1 .. without a cache) -> logits (B, Lt, V).

        With ``caches`` the Lt new positions follow the len(cache) cached ones: they get
        positions past .. past + Lt - 1 and the bottom-right causal mask lets them see every
        cached key and the new keys up to themselves.
        """
        past = len(caches[0]) if caches else 0
        x = self.tgt_embed(tgt_in, offset=past)  # (B, Lt, D)
        rot = rotary_tables(self.cfg.positions, tgt_in.shape[1], self.cfg.head_dim, past, x)
        self_mask = causal("bottom-right")  # §3.2.3: no position attends to later positions
        last = len(self.decoder) - 1
        self_w, cross_w = [], []
        for i, layer in enumerate(self.decoder):
            out = layer(x, self_mask=self_mask, rotary=rot, cache=None if caches is None else caches[i],
                        memory_kv=memory.kv[i], cross_mask=memory.allowed, need_weights=need_weights,
                        cross_weights=alignment and i == last)
            x = out.x
            self_w.append(out.self_weights)
            cross_w.append(out.cross_weights)
        logits = self.logits(self.decoder_norm(x))  # (B, Lt, V)
        # the alignment: last layer's cross-attention, mean over heads (B, H, Lt, Ls) -> (B, Lt, Ls)
        align = cross_w[-1].mean(1) if (alignment or need_weights) and cross_w[-1] is not None else None
        if not need_weights:
            return TranslationOutput(logits, align)
        return TranslationOutput(logits, align, None, memory.weights, tuple(self_w), tuple(cross_w))

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, *,
                need_weights: bool = False) -> TranslationOutput:
        """Teacher forcing: logits (B, Lt, V); with ``need_weights`` every attention too."""
        memory = self.encode(src, src_lengths, need_weights=need_weights)
        return self.decode(tgt_in, memory, need_weights=need_weights)

    # -- decoding one token at a time ----------------------------------------------------
    def init_state(self, memory: TransformerMemory, *, cache: bool = True) -> TransformerState:
        if cache:
            return TransformerState([KVCache() for _ in self.decoder], None, 0)
        bsz = memory.states.shape[0]
        empty = torch.zeros(bsz, 0, dtype=torch.long, device=memory.states.device)  # (B, 0)
        return TransformerState(None, empty, 0)

    def step(self, y_prev: Tensor, state: TransformerState, memory: TransformerMemory
             ) -> TransformerStep:
        """y_prev (B,) ids -> logits (B, V) for the next token, and the new state."""
        if state.caches is None:
            assert state.prefix is not None  # init_state(cache=False) sets it
            prefix = torch.cat([state.prefix, y_prev.unsqueeze(1)], 1)  # (B, t + 1)
            out = self.decode(prefix, memory, alignment=True)  # every position again
            new = TransformerState(None, prefix, state.t + 1)
        else:
            # new cache objects sharing the old tensors: the caller's state stays valid
            caches = []
            for c in state.caches:
                fork = KVCache()
                fork.k, fork.v = c.k, c.v
                caches.append(fork)
            out = self.decode(y_prev.unsqueeze(1), memory, caches=caches, alignment=True)
            new = TransformerState(caches, None, state.t + 1)
        weights = None if out.weights is None else out.weights[:, -1]  # (B, Ls)
        return TransformerStep(out.logits[:, -1], new, weights)
