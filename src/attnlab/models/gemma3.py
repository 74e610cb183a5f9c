"""Gemma 3 text decoder (Gemma Team 2025, "Gemma 3 Technical Report") on attnlab's attention.

Why a model file of its own: Gemma 3 is a Llama-family decoder (RoPE, GQA, gated MLP, RMSNorm,
tied embeddings) with six differences, each stated here once:

- local/global layers: five sliding-window layers (each query sees itself and the previous
  ``sliding_window - 1`` keys: 512 keys in all for 270M) then one global layer, repeated
  (``layer_types``); RoPE base 10,000 on local layers, 1,000,000 on global ones (§2.1, §3);
- QK-norm: an RMSNorm over each head's Dh on q and k, before RoPE (replaces Gemma 2's soft-capping);
- every RMSNorm scales by ``(1 + w)``, its weights stored around 0;
- sandwich norms: ``x = x + post_norm(Attn(pre_norm(x)))``, and the same around the MLP;
- GeGLU MLP: ``down(gelu_tanh(gate(x)) * up(x))``; embeddings scaled by sqrt(hidden) in their dtype;
- scores scaled by ``query_pre_attn_scalar ** -0.5``; optional final-logit soft-capping (None in 3).

Gemma 3 270M, attnlab's second embedded LLM (``--model gemma3``, a base model, no chat template),
is 18 layers, 4 query heads sharing 1 K/V head of dim 256, hidden 640, a 262,144-token vocabulary.
Google's Gemma Terms of Use apply to its weights (``attnlab.models.gemma3_files``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.functional.masks import Align, causal, sliding_window
from attnlab.functional.positional import rotary_cos_sin
from attnlab.models.common import (
    DecoderConfigBase,
    DecoderLM,
    ScoreMods,
    TransformerOutput,
    activation,
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

GEMMA3_TYPES = ("gemma3_text",)
LOCAL, GLOBAL = "sliding_attention", "full_attention"


def _rope_theta(cfg: dict[str, Any], kind: str, old_key: str, default: float) -> float:
    """One layer type's RoPE base: transformers 5 nests it per layer type in ``rope_parameters``;
    4.x configs (Google's own) have ``rope_theta`` / ``rope_local_base_freq`` and ``rope_scaling``."""
    params = cfg.get("rope_parameters") or {}
    rope = params.get(kind) if isinstance(params.get(kind), dict) else None
    if rope is None:
        rope = (cfg.get("rope_scaling") if kind == GLOBAL else None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config.json: expected plain RoPE (rope_type 'default') on {kind} layers, got "
                         f"{rope_type!r}; scaled RoPE variants are not implemented")
    return float(rope.get("rope_theta", cfg.get(old_key, default)))


@dataclass(frozen=True)
class Gemma3Config(DecoderConfigBase):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    layer_types: tuple[str, ...]  # LOCAL or GLOBAL, one per layer
    sliding_window: int = 512  # keys a local query sees, itself included
    query_pre_attn_scalar: float = 256.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0  # global layers
    rope_local_theta: float = 10_000.0  # sliding-window layers
    hidden_act: str = "gelu_pytorch_tanh"
    final_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    model_type: str = "gemma3_text"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> Gemma3Config:
        mt = cfg.get("model_type")
        if mt not in GEMMA3_TYPES:
            raise ValueError(f"config.json: expected model_type in {GEMMA3_TYPES}, got {mt!r}")
        for key in ("attn_logit_softcapping", "use_bidirectional_attention"):
            if cfg.get(key):
                raise ValueError(f"config.json: expected {key} unset (Gemma 3 has none), got {cfg[key]!r}; "
                                 f"not implemented")
        n = int(cfg["num_hidden_layers"])
        types = cfg.get("layer_types")
        if types is None:  # 4.x: every sliding_window_pattern-th layer is global
            every = int(cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6)))
            types = [GLOBAL if (i + 1) % every == 0 else LOCAL for i in range(n)]
        if len(types) != n or any(t not in (LOCAL, GLOBAL) for t in types):
            raise ValueError(f"config.json: layer_types: expected {n} entries of {LOCAL!r}/{GLOBAL!r}, "
                             f"got {types!r}")
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
        activation(act)  # an unknown name is an error now, not at the first forward
        eos_ids = hf_eos_ids(cfg)
        cap = cfg.get("final_logit_softcapping")
        H = int(cfg["num_attention_heads"])
        return cls(
            vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]), num_layers=n, num_heads=H,
            num_kv_heads=int(cfg.get("num_key_value_heads") or H),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // H),
            max_positions=int(cfg.get("max_position_embeddings", 32768)), layer_types=tuple(types),
            sliding_window=int(cfg.get("sliding_window") or 512),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(cfg, GLOBAL, "rope_theta", 1_000_000.0),
            rope_local_theta=_rope_theta(cfg, LOCAL, "rope_local_base_freq", 10_000.0),
            hidden_act=act, final_logit_softcapping=None if cap is None else float(cap),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            attention_bias=bool(cfg.get("attention_bias", False)), bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids, pad_token_id=cfg.get("pad_token_id"), model_type=mt,
        )


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)) — Gemma's gated MLP (Shazeer 2020, GEGLU)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.act = activation(act)
        self.hook_post = HookPoint()  # (B, L, I): act(gate(x)) * up(x), the hidden activation

    def forward(self, x: Tensor) -> Tensor:
        gu = fused_call(self, "_gate_up", (self.gate, self.up), x)  # (B, L, 2·I): one matmul, no autograd
        g, u = (self.gate(x), None) if gu is None else gu.chunk(2, dim=-1)  # (B, L, E) -> (B, L, I)
        g = self.act(g)
        if g.requires_grad:
            return self.down(self.hook_post(g * self.up(x)))  # (B, L, E)
        return self.down(self.hook_post(g.mul_(self.up(x) if u is None else u)))  # inference: g's buffer


class Gemma3Block(nn.Module):
    """``x = x + post_attention_norm(Attn(attention_norm(x)))``, then the same around the MLP."""

    def __init__(self, cfg: Gemma3Config) -> None:
        super().__init__()
        E, Dh, eps = cfg.hidden_size, cfg.head_dim, cfg.rms_norm_eps
        self.attention_norm = RMSNorm(E, eps, offset=1.0)
        self.attention = MultiHeadAttention(
            E, cfg.num_heads, n_kv_heads=cfg.num_kv_heads, head_dim=Dh, bias=cfg.attention_bias,
            scale=cfg.query_pre_attn_scalar ** -0.5,
            qk_norm=(RMSNorm(Dh, eps, offset=1.0), RMSNorm(Dh, eps, offset=1.0)))
        self.post_attention_norm = RMSNorm(E, eps, offset=1.0)
        self.mlp_norm = RMSNorm(E, eps, offset=1.0)
        self.mlp = GeGLU(E, cfg.intermediate_size, cfg.hidden_act)
        self.post_mlp_norm = RMSNorm(E, eps, offset=1.0)
        # The residual stream before, between and after the sublayers, and what each adds (B, L, E):
        # attn_out / mlp_out are after the post-norms, the terms the stream actually receives.
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, *, mask: object, score_mod, need_weights: bool, cache: KVCache | None,
                rotary: tuple[Tensor, Tensor], backend: str) -> tuple[Tensor, Tensor | None]:
        x = self.hook_resid_pre(x)  # (B, L, E)
        attn = self.attention(self.attention_norm(x), mask=mask, score_mod=score_mod,
                              need_weights=need_weights, cache=cache, rotary=rotary, backend=backend)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.post_attention_norm(attn.output)))  # (B, L, E)
        x = x + self.hook_mlp_out(self.post_mlp_norm(self.mlp(self.mlp_norm(x))))  # (B, L, E)
        return self.hook_resid_post(x), attn.weights


class Gemma3(DecoderLM):
    """A Gemma 3 text model: ``forward`` gives hidden states, logits and weights.
    Implements :class:`attnlab.models.contract.CausalLM`."""

    def __init__(self, cfg: Gemma3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.hook_embed = HookPoint()  # (B, L, E), after the sqrt(E) scale: the residual stream's start
        self.layers = nn.ModuleList(Gemma3Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, offset=1.0)
        # None = tied to token_embedding (always, in Google's checkpoints).
        self.lm_head: nn.Linear | None = None
        self._rope: dict[float, tuple[Tensor, Tensor]] = {}  # base -> (N, Dh) cos/sin, grown on demand
        self.setup_hooks()

    @property
    def num_kv_heads(self) -> int:
        return self.cfg.num_kv_heads

    def is_local(self, layer: int) -> bool:
        return self.cfg.layer_types[layer] == LOCAL

    def layer_window(self, layer: int) -> int | None:
        """Keys a layer's queries see, themselves included: ``sliding_window`` on local layers."""
        if not 0 <= layer < self.cfg.num_layers:
            raise ValueError(f"layer: expected 0..{self.cfg.num_layers - 1}, got {layer}")
        return self.cfg.sliding_window if self.is_local(layer) else None

    def _windows(self, given: Sequence[int | None] | None) -> list[int | None]:
        n = self.cfg.num_layers
        if given is None:
            return [self.layer_window(i) for i in range(n)]
        ws = list(given)
        bad = [w for w in ws if w is not None and (isinstance(w, bool) or not isinstance(w, int)
                                                   or not 1 <= w <= self.cfg.max_positions)]
        if len(ws) != n or bad:
            raise ValueError(f"layer_windows: expected {n} entries, each None (global) or keys per query "
                             f"in 1..{self.cfg.max_positions} (the context), got {ws!r}")
        return ws

    def unembed(self, x: Tensor) -> Tensor:
        """Logits of final-norm outputs, soft-capped if the config says so: (..., E) -> (..., V)."""
        logits = super().unembed(x)
        cap = self.cfg.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings times sqrt(E), the scale rounded to the weights' dtype as Gemma does
        (sqrt(640) = 25.30 is 25.25 in bfloat16).  (B, L) -> (B, L, E)"""
        w = self.token_embedding.weight
        return self.token_embedding(input_ids) * torch.tensor(self.cfg.hidden_size ** 0.5, dtype=w.dtype,
                                                              device=w.device)

    def rope(self, position_ids: Tensor, base: float) -> tuple[Tensor, Tensor]:
        """cos/sin of the given positions for RoPE base ``base``: (L, Dh) for shared positions (L,),
        (B, 1, L, Dh) for (B, L)."""
        need = int(position_ids.max()) + 1
        dev = position_ids.device  # the model's (a table built before a move is rebuilt there)
        table = self._rope.get(base)
        if table is None or table[0].shape[0] < need or table[0].device != dev:
            n = min(max(256, 1 << (need - 1).bit_length()), max(need, self.cfg.max_positions))
            table = self._rope[base] = rotary_cos_sin(n, self.cfg.head_dim, base=base, device=dev)  # (n, Dh)
        cos, sin = (t[position_ids] for t in table)
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
        mask: object = None,  # extra mask_mod ANDed with each layer's own (knockout, windows)
        score_mods: ScoreMods | None = None,
        need_weights: bool | Collection[int] = False,  # True, or the layers whose weights to compute
        keep_weights: bool = True,  # False: weights only reach hook_pattern (bounded memory)
        backend: str = "auto",
        logits_to_keep: int = 0,  # 0 = logits at every position; n = only the last n
        layer_windows: Sequence[int | None] | None = None,  # keys per query, per layer; None = global
    ) -> TransformerOutput:
        """``layer_windows`` replaces the trained local/global layout (each layer keeps its RoPE
        base): every layer global is ``[None] * n``, a halved window ``[w // 2 if w else None ...]``."""
        past = len(cache[0]) if cache else 0
        check_ids("input_ids", input_ids, self.cfg.vocab_size, self.cfg.max_positions, past)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache: expected {len(self.layers)} KVCache (one per layer), got {len(cache)}")
        check_score_mods(score_mods, self.cfg.num_layers)
        L = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=input_ids.device)  # (L,)
        rotary = {LOCAL: self.rope(position_ids, self.cfg.rope_local_theta),
                  GLOBAL: self.rope(position_ids, self.cfg.rope_theta)}
        x = self.hook_embed(self.embed(input_ids))  # (B, L, E)
        # With a cache the L new queries are the newest of past + L keys: bottom-right alignment.
        # Local layers: key j is seen by query i when i - W < j <= i (HF's kv > q - W, with q);
        # while the whole sequence fits in the window that is just causal (SDPA's fast path).
        align: Align = "bottom-right" if past else "top-left"
        pad = key_padding_mask(attention_mask)
        windows = self._windows(layer_windows)
        masks: dict[int | None, Any] = {}
        for W in set(windows):
            seen = causal(align) if W is None or past + L <= W else sliding_window(W - 1, 0, align)
            masks[W] = combine(seen, pad, mask)
        wanted = (lambda i: need_weights) if isinstance(need_weights, bool) else need_weights.__contains__
        hidden: list[Tensor] = [x]
        weights: list[Any] = []  # per layer: (B, H, L, Lk), None where not computed
        for i, block in enumerate(self.layers):
            kind = self.cfg.layer_types[i]
            x, w = block(x, mask=masks[windows[i]], score_mod=layer_score_mod(score_mods, i),
                         need_weights=wanted(i), cache=None if cache is None else cache[i],
                         rotary=rotary[kind], backend=backend)
            hidden.append(x)
            weights.append(w if keep_weights else None)
        x = self.final_norm(x)
        hidden[-1] = x  # as HF: hidden_states end with the final-norm output
        logits = self.unembed(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, L or n, V)
        kept = tuple(weights) if need_weights and keep_weights else None
        return TransformerOutput(x, tuple(hidden), kept, logits, cache)
