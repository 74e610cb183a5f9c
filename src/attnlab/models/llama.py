"""Llama-family decoder (Touvron et al. 2023) on attnlab's MultiHeadAttention.

Read top to bottom: token embeddings (no position table: positions enter as RoPE rotations of
q and k, Su et al. 2021), ``num_layers`` pre-norm blocks

    x = x + Attn(RMSNorm(x))          # grouped-query attention (Ainslie et al. 2023)
    x = x + SwiGLU(RMSNorm(x))        # down(silu(gate(x)) * up(x)), Shazeer 2020

a final RMSNorm (Zhang & Sennrich 2019) and a language-model head, tied to the embeddings or
not. A list of :class:`KVCache` (one per layer) makes decoding incremental: keys are cached
already rotated, so each step feeds only the new tokens with their absolute positions.

SmolLM2-135M-Instruct, attnlab's embedded LLM, is this architecture: 30 layers, 9 query heads
sharing 3 K/V heads of dim 64, RoPE base 100000, tied embeddings.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.functional.masks import causal
from attnlab.functional.positional import rotary_cos_sin
from attnlab.models.common import (
    DecoderConfigBase,
    DecoderLM,
    ScoreMods,
    TransformerOutput,
    check_ids,
    check_score_mods,
    combine,
    hf_eos_ids,
    key_padding_mask,
    layer_score_mod,
)
from attnlab.modules.fused import fused_call
from attnlab.modules.hooks import HookPoint
from attnlab.modules.multihead import KVCache, MultiHeadAttention
from attnlab.modules.norms import RMSNorm

LLAMA_TYPES = ("llama",)


@dataclass(frozen=True)
class LlamaConfig(DecoderConfigBase):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    model_type: str = "llama"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> LlamaConfig:
        mt = cfg.get("model_type")
        if mt not in LLAMA_TYPES:
            raise ValueError(f"config.json: expected model_type in {LLAMA_TYPES}, got {mt!r}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json: expected hidden_act 'silu' (SwiGLU), got {act!r}")
        # transformers 5 nests rope settings in rope_parameters; 4.x had rope_theta/rope_scaling.
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(f"config.json: expected plain RoPE (rope_type 'default'), got {kind!r}; "
                             f"scaled RoPE variants are not implemented")
        theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        H = cfg["num_attention_heads"]
        E = cfg["hidden_size"]
        eos_ids = hf_eos_ids(cfg)
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=E, intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=H,
            num_kv_heads=cfg.get("num_key_value_heads") or H,
            head_dim=cfg.get("head_dim") or E // H,
            max_positions=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
            bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos_ids, pad_token_id=cfg.get("pad_token_id"),
            model_type=mt,
        )


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) — the gated MLP of PaLM and Llama (Shazeer 2020, eq. 6)."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.hook_post = HookPoint()  # (B, L, I): silu(gate(x)) * up(x), the hidden activation

    def forward(self, x: Tensor) -> Tensor:
        gu = fused_call(self, "_gate_up", (self.gate, self.up), x)  # (B, L, 2·I): one matmul, no autograd
        g, u = (self.gate(x), None) if gu is None else gu.chunk(2, dim=-1)  # (B, L, E) -> (B, L, I)
        if g.requires_grad:
            return self.down(self.hook_post(F.silu(g) * self.up(x)))  # (B, L, E)
        # Inference: act in gate's buffer instead of two new (B, L, I) temporaries (~10% of the
        # MLP's time in a 1,000-token prefill, measured).
        return self.down(self.hook_post(F.silu(g, inplace=True).mul_(self.up(x) if u is None else u)))


class LlamaBlock(nn.Module):
    """``x = x + Attn(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x))``."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        E = cfg.hidden_size
        self.attention_norm = nn.RMSNorm(E, eps=cfg.rms_norm_eps)
        self.attention = MultiHeadAttention(E, cfg.num_heads, n_kv_heads=cfg.num_kv_heads,
                                            head_dim=cfg.head_dim, bias=cfg.attention_bias)
        self.mlp_norm = nn.RMSNorm(E, eps=cfg.rms_norm_eps)
        self.mlp = SwiGLU(E, cfg.intermediate_size, cfg.mlp_bias)
        # The residual stream before, between and after the sublayers, and what each adds (B, L, E).
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, *, mask: object, score_mod, need_weights: bool, cache: KVCache | None,
                rotary: tuple[Tensor, Tensor], backend: str) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)  # (B, L, E)
        attn = self.attention(self.attention_norm(x), mask=mask, score_mod=score_mod,
                              need_weights=need_weights, cache=cache, rotary=rotary, backend=backend)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn.output))  # (B, L, E)
        x = x + self.hook_mlp_out(self.mlp(self.mlp_norm(x)))  # (B, L, E)
        return self.hook_resid_post(x), attn.weights


class Llama(DecoderLM):
    """A Llama-family language model: ``forward`` gives hidden states, logits and weights.
    Implements :class:`attnlab.models.contract.CausalLM`."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.hook_embed = HookPoint()  # (B, L, E)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        # None = tied to token_embedding; a checkpoint with its own lm_head.weight sets it.
        self.lm_head: nn.Linear | None = None
        self._rope: tuple[Tensor, Tensor] | None = None  # (N, Dh) cos/sin, grown on demand
        self.setup_hooks()

    @property
    def num_kv_heads(self) -> int:
        return self.cfg.num_kv_heads

    def layer_window(self, layer: int) -> int | None:
        """Keys a layer's queries see behind them; None = the whole past (every Llama layer)."""
        return None

    def rope(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin of the given positions: (L, Dh) for shared positions (L,), (B, 1, L, Dh) for (B, L)."""
        need = int(position_ids.max()) + 1
        dev = position_ids.device  # the model's (a table built before a move is rebuilt there)
        if self._rope is None or self._rope[0].shape[0] < need or self._rope[0].device != dev:
            n = min(max(256, 1 << (need - 1).bit_length()), max(need, self.cfg.max_positions))
            self._rope = rotary_cos_sin(n, self.cfg.head_dim, base=self.cfg.rope_theta,
                                        device=dev)  # (n, Dh) float32
        cos, sin = (t[position_ids] for t in self._rope)
        if position_ids.ndim == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, L, Dh) -> (B, 1, L, Dh)
        return cos, sin

    def forward(
        self,
        input_ids: Tensor,  # (B, L) the new tokens (all of them without a cache)
        attention_mask: Tensor | None = None,  # (B, L_past + L) 1 = token, 0 = padding
        *,
        position_ids: Tensor | None = None,  # (B, L) or (L,); default past..past+L-1
        cache: list[KVCache] | None = None,
        mask: object = None,  # extra mask_mod ANDed with the causal mask (knockout, windows)
        score_mods: ScoreMods | None = None,
        need_weights: bool | Collection[int] = False,  # True, or the layers whose weights to compute
        keep_weights: bool = True,  # False: weights only reach hook_pattern (bounded memory)
        backend: str = "auto",
        logits_to_keep: int = 0,  # 0 = logits at every position; n = only the last n
    ) -> TransformerOutput:
        past = len(cache[0]) if cache else 0
        check_ids("input_ids", input_ids, self.cfg.vocab_size, self.cfg.max_positions, past)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache: expected {len(self.layers)} KVCache (one per layer), got {len(cache)}")
        check_score_mods(score_mods, self.cfg.num_layers)
        L = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=input_ids.device)  # (L,)
        rotary = self.rope(position_ids)
        x = self.hook_embed(self.token_embedding(input_ids))  # (B, L, E)
        # With a cache the L new queries are the newest of past + L keys: bottom-right alignment.
        full_mask = combine(causal("bottom-right" if past else "top-left"),
                            key_padding_mask(attention_mask), mask)
        wanted = (lambda i: need_weights) if isinstance(need_weights, bool) else need_weights.__contains__
        hidden: list[Tensor] = [x]
        weights: list[Any] = []  # per layer: (B, H, L, Lk), None where not computed
        for i, block in enumerate(self.layers):
            x, w = block(x, mask=full_mask, score_mod=layer_score_mod(score_mods, i), need_weights=wanted(i),
                         cache=None if cache is None else cache[i], rotary=rotary, backend=backend)
            hidden.append(x)
            weights.append(w if keep_weights else None)
        x = self.final_norm(x)
        hidden[-1] = x  # as HF: hidden_states end with the final-norm output
        logits = self.unembed(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, L or n, V)
        kept = tuple(weights) if need_weights and keep_weights else None
        return TransformerOutput(x, tuple(hidden), kept, logits, cache)
