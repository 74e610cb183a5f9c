"""Pieces the encoder and decoder share: outputs, activations, masks, per-layer score mods."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.arguments import expect_int
from attnlab.functional.attention import ScoreMod
from attnlab.functional.masks import Mask, as_mask
from attnlab.modules.hooks import HookedModel
from attnlab.modules.multihead import KVCache

ScoreMods = Mapping[int, ScoreMod]  # layer index -> score_mod applied to that layer's scores


@dataclass
class TransformerOutput:
    """What a whole model computes, in the layout of Hugging Face's ``output_hidden_states``."""

    last_hidden_state: Tensor  # (B, L, E)
    hidden_states: tuple[Tensor, ...]  # num_layers + 1 entries (B, L, E): embeddings, then each layer
    attentions: tuple[Tensor, ...] | None = None  # num_layers entries (B, H, Lq, Lk); need_weights
    logits: Tensor | None = None  # (B, L, V): decoders with a language-model head
    cache: list[KVCache] | None = None  # decoders: one cache per layer, for the next step


def _gelu_tanh(x: Tensor) -> Tensor:
    # GPT-2's "gelu_new" (Hendrycks & Gimpel 2016, tanh approximation), written as HF writes it.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact erf form (BERT)
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"config.json: expected an activation among {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def key_padding_mask(attention_mask: Tensor | None) -> Mask | None:
    """Hugging Face's (B, Lk) 0/1 ``attention_mask`` as a mask_mod (True = may attend), or None
    when every key is a real token (so SDPA keeps its no-mask fast path)."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask: expected (B, L) of 0/1, got shape {tuple(attention_mask.shape)}")
    keep = attention_mask.bool()  # (B, Lk)
    if bool(keep.all()):
        return None
    return as_mask(lambda b, h, q, kv: keep[b, kv], "key_padding")  # (B,1,1,Lk) after broadcasting


def combine(*masks: object) -> Mask | None:
    """AND of the given masks, skipping None: the keys a query may see under every rule."""
    out: Mask | None = None
    for m in masks:
        if m is None:
            continue
        mm = as_mask(m)
        out = mm if out is None else out & mm
    return out


def check_score_mods(score_mods: object, num_layers: int) -> None:
    """``score_mods`` must map layer indices of this model to callables: a key out of range
    would otherwise be ignored silently."""
    if score_mods is None:
        return
    if not isinstance(score_mods, Mapping):
        raise TypeError(f"score_mods: expected a mapping {{layer: score_mod}}, "
                        f"got {type(score_mods).__name__}")
    for k, f in score_mods.items():
        expect_int("score_mods", k, 0, num_layers - 1, expected=f"layer keys in 0..{num_layers - 1}")
        if not callable(f):
            raise TypeError(f"score_mods[{k}]: expected a callable(score, b, h, q_idx, kv_idx), "
                            f"got {type(f).__name__}")


def layer_score_mod(score_mods: ScoreMods | None, layer: int) -> ScoreMod | None:
    return None if score_mods is None else score_mods.get(layer)


def check_ids(name: str, ids: Tensor, vocab_size: int, max_positions: int, past: int = 0) -> None:
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name}: expected an integer tensor (B, L), got {got}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one token, got shape {tuple(ids.shape)}")
    if past + ids.shape[1] > max_positions:
        raise ValueError(
            f"{name}: expected at most {max_positions} positions (the model's limit), "
            f"got {past + ids.shape[1]}"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name}: expected ids in [0, {vocab_size}), got values in [{lo}, {hi}]")


class DecoderConfigBase:
    """What a decoder LLM's config answers whatever its family (mixed into the frozen dataclasses)."""

    max_positions: int
    eos_token_ids: tuple[int, ...]

    @property
    def max_tokens(self) -> int:
        return self.max_positions

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None


def hf_eos_ids(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """``eos_token_id`` of a config.json: an id, a list of ids, or absent."""
    eos = cfg.get("eos_token_id")
    return tuple(int(e) for e in eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))


class DecoderLM(HookedModel):
    """What every decoder LLM here shares: sizes from its config, one KV cache per layer, and the
    language-model head (tied to the token embeddings unless the checkpoint has its own). A
    subclass adds ``num_kv_heads``, ``eos_token_ids`` and ``layer_window`` (the CausalLM contract,
    attnlab.models.contract) and its own blocks."""

    kind = "decoder"
    cfg: Any
    token_embedding: nn.Embedding
    lm_head: nn.Linear | None  # None = tied to token_embedding
    layers: nn.ModuleList
    unembed_int8: nn.Module | None  # set by quantize_weights("int8" or "int4"); absent before
    # parameter name -> bits per weight its file stored it in (set by load_gguf; absent for
    # float checkpoints): quantize_weights never goes below it
    file_bits: dict[str, int]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self.cfg.eos_token_ids)

    @property
    def num_layers(self) -> int:
        return int(self.cfg.num_layers)

    @property
    def num_heads(self) -> int:
        return int(self.cfg.num_heads)

    @property
    def max_positions(self) -> int:
        return int(self.cfg.max_positions)

    @property
    def vocab_size(self) -> int:
        return int(self.cfg.vocab_size)

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def _head(self) -> Tensor:
        return self.token_embedding.weight if self.lm_head is None else self.lm_head.weight  # (V, E)

    @property
    def weights_format(self) -> str:
        """"float32", or the format :meth:`quantize_weights` kept the weights in."""
        return str(self.__dict__.get("_weights_format", "float32"))

    def quantize_weights(self, weights: str = "int8") -> DecoderLM:
        """Keep the blocks' projection weights as int8 rows with per-row scales ("int8") or as
        4-bit groups of 32 inputs with a scale and zero each ("int4"; weights a GGUF stores in
        more than 4 bits, listed in ``file_bits``, stay int8 rows), and the unembedding as
        int8 rows in both (:mod:`attnlab.models.quantized`, :mod:`~attnlab.models.quantized_int4`),
        in place: a decode step reads a quarter (an eighth) of the bytes. The unembedding stays
        8-bit: GGUF files keep it at 8 bits or more (SmolLM2's is Q8_0) where their blocks are
        4-bit. Embedding lookups, norms and :meth:`output_embedding` stay float32. Inference
        only; "float32", or a model already quantized, is left as it is."""
        from attnlab.models.quantized import Int8Linear, check_format, quantize_linears

        fmt = check_format(weights)
        if fmt == "float32" or self.weights_format != "float32":
            return self
        if fmt == "int4":
            from attnlab.models.quantized_int4 import int4_available

            why = int4_available()
            if why is not None:
                raise ValueError(f"weights: 'int4' is not available here: {why}; 'int8' is")
        # Never below the file: a weight a GGUF stores in more than 4 bits (Q5_0, Q6_K, Q8_0...)
        # stays 8-bit; float checkpoints carry no such limit.
        bits: dict[str, int] = self.__dict__.get("file_bits", {})
        keep = {n.removeprefix("layers.").removesuffix(".weight") for n, b in bits.items()
                if b > 4 and n.startswith("layers.")}
        quantize_linears(self.layers, fmt, keep_8bit=keep)
        self.unembed_int8 = Int8Linear(self._head(), long_bf16=False)  # (V, E) as int8 rows; float32 logits
        self._weights_format = fmt
        return self.train(self.training)  # the new layers in the model's mode (new modules train)

    def output_embedding(self, ids: Tensor) -> Tensor:
        """Rows of the unembedding matrix W_U for token ``ids`` (n,): (n, E)."""
        return self._head()[ids]

    def unembed(self, x: Tensor) -> Tensor:
        """Logits of residual-stream vectors already through the final norm: (..., E) -> (..., V)."""
        head = getattr(self, "unembed_int8", None)
        return F.linear(x, self._head()) if head is None else head(x)
