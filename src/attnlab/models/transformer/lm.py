"""A decoder-only Transformer language model, for the mechanistic experiments.

The Transformer's decoder without cross-attention (the shape of GPT, Radford et al. 2018):
embeddings + positions -> N blocks of masked self-attention [+ feed-forward] -> LayerNorm
(pre-LN) -> logits. ``attention_only=True`` drops the feed-forward sublayers, so everything
written into the residual stream comes from attention heads: the models in which Elhage et
al. 2021 read circuits and Olsson et al. 2022 watch induction heads form.

``forward(ids, cache=...)`` takes the new tokens; with a list of :class:`KVCache` (one per
layer, :meth:`TransformerLM.new_cache`) the bottom-right causal mask lets them see the whole
past. Per-head weights come back with ``need_weights``; heads can be ablated through each
attention's ``hook_z`` (:func:`attnlab.models.transformer.heads.head_mask`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import Tensor, nn

from attnlab.data.io import FormatError, atomic_write_bytes, write_json
from attnlab.functional.masks import causal
from attnlab.models.transformer.layers import InputEmbedding, TransformerLayer, rotary_tables
from attnlab.models.transformer.transformer_config import LMConfig
from attnlab.models.translation import CONFIG, WEIGHTS, read_model_json, read_weights
from attnlab.modules.hooks import HookedModel
from attnlab.modules.multihead import KVCache

LM_FORMAT = "attnlab.transformer-lm/1"


@dataclass
class LMOutput:
    logits: Tensor  # (B, L, V)
    weights: tuple[Tensor, ...] | None = None  # per layer (B, H, L, past + L), need_weights
    cache: list[KVCache] | None = None


class TransformerLM(HookedModel):
    attn_attr = "self_attn"
    mlp_post = "ffn.hook_post"

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        # an LM's ids have no padding: every id, 0 included, is a token with a trained embedding
        self.embed = InputEmbedding(cfg.vocab_size, d, cfg.positions, cfg.max_len, cfg.dropout,
                                    pad=False)
        self.layers = nn.ModuleList(
            TransformerLayer(d, cfg.heads, cfg.ffn, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                             norm=cfg.norm, mlp=not cfg.attention_only)
            for _ in range(cfg.layers))
        self.final_norm: nn.Module = nn.LayerNorm(d) if cfg.norm == "pre" else nn.Identity()
        self.out: nn.Linear | None = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size)
        if self.out is not None:
            nn.init.xavier_uniform_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.setup_hooks()

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def forward(self, ids: Tensor, *, cache: list[KVCache] | None = None,
                need_weights: bool = False) -> LMOutput:
        """ids (B, L) long: the new tokens -> logits (B, L, V) predicting each next token."""
        if ids.ndim != 2 or ids.dtype.is_floating_point or ids.shape[1] == 0:
            raise ValueError(f"ids: expected integer token ids (B, L) with L >= 1, got "
                             f"{ids.dtype} {tuple(ids.shape)}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise ValueError(f"ids: expected ids in [0, {self.cfg.vocab_size}), got values in "
                             f"[{lo}, {hi}]")
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache: expected {len(self.layers)} KVCache (one per layer), "
                             f"got {len(cache)}")
        past = len(cache[0]) if cache else 0
        x = self.embed(ids, offset=past)  # (B, L, D)
        rot = rotary_tables(self.cfg.positions, ids.shape[1], self.cfg.head_dim, past, x)
        mask = causal("bottom-right")  # new queries see the cached past and themselves
        weights = []
        for i, layer in enumerate(self.layers):
            out = layer(x, self_mask=mask, rotary=rot, cache=None if cache is None else cache[i],
                        need_weights=need_weights)
            x = out.x
            weights.append(out.self_weights)
        x = self.final_norm(x)
        head = self.out.weight if self.out is not None else self.embed.tokens.weight
        bias = self.out.bias if self.out is not None else None
        logits = F.linear(x, head, bias)  # (B, L, D) -> (B, L, V)
        return LMOutput(logits, tuple(weights) if need_weights else None, cache)

    # -- files (safetensors + JSON, like the translators) ---------------------------------
    def save(self, folder: str | os.PathLike[str]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS, st_save(tensors, metadata={"format": LM_FORMAT}))
        write_json(folder / CONFIG, {"format": LM_FORMAT, "config": self.cfg.to_dict()})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> TransformerLM:
        folder = Path(folder)
        fmt, meta = read_model_json(folder)
        if fmt != LM_FORMAT:
            raise FormatError(f"{folder / CONFIG}: expected model format {LM_FORMAT!r}, got {fmt!r}")
        try:
            model = cls(LMConfig.from_dict(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{folder / CONFIG}: invalid model config: {e}") from e
        model.load_state_dict(read_weights(folder / WEIGHTS, model.state_dict()))
        return model
