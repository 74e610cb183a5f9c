"""Architectures attnlab does not implement, run by ``transformers`` behind the same interface.

The model is loaded with eager attention (the only implementation that returns weights),
``local_files_only`` (no network) and ``use_safetensors`` (no pickle). It gives hidden states
and attention weights, so capture, analyses, head detection and pictures work; patching,
custom masks and attnlab backends need attnlab's own model code and say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.models.common import TransformerOutput


class TransformersModel(nn.Module):
    """Wraps a ``transformers`` base model; ``forward`` matches attnlab's models."""

    def __init__(self, hf: nn.Module, kind: str, num_layers: int, num_heads: int) -> None:
        super().__init__()
        self.hf = hf
        self.kind = kind
        self.num_layers = num_layers
        self.num_heads = num_heads

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, mask: object = None, score_mods: Any = None,
                need_weights: bool = False, backend: str = "auto", cache: Any = None) -> TransformerOutput:
        asked = [n for n, v in (("mask", mask), ("score_mods", score_mods), ("cache", cache)) if v]
        if backend != "auto":
            asked.append("backend")
        if asked:
            raise ValueError(f"{', '.join(asked)}: needs attnlab's own model code (bert, roberta, gpt2); "
                             f"this model runs through the transformers fallback")
        kw: dict[str, Any] = {"input_ids": input_ids, "output_hidden_states": True,
                              "output_attentions": need_weights}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if token_type_ids is not None and self.kind == "encoder" and _takes(self.hf, "token_type_ids"):
            kw["token_type_ids"] = token_type_ids
        out = self.hf(**kw)
        att = tuple(out.attentions) if need_weights and out.attentions is not None else None
        return TransformerOutput(out.last_hidden_state, tuple(out.hidden_states), att)


def _takes(model: nn.Module, arg: str) -> bool:
    import inspect

    return arg in inspect.signature(model.forward).parameters


def load_transformers(folder: Path, cfg: dict[str, Any], dtype: torch.dtype) -> TransformersModel:
    if cfg.get("is_encoder_decoder"):
        raise ValueError(f"{folder / 'config.json'}: model_type {cfg['model_type']!r} is an encoder-decoder; "
                         f"attnlab inspects encoders and decoders (bert, roberta, gpt2, or what "
                         f"transformers' AutoModel loads)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces with local_files_only
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise ValueError(f"{folder}: model_type {cfg['model_type']!r} needs the transformers fallback, "
                         f"which is not installed") from None
    try:
        hcfg = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        hf = AutoModel.from_pretrained(folder, config=hcfg, attn_implementation="eager",
                                       local_files_only=True, use_safetensors=True,
                                       trust_remote_code=False, dtype=dtype)
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{folder / 'config.json'}: model_type {cfg['model_type']!r} is not supported: "
                         f"attnlab implements bert, roberta, xlm-roberta and gpt2, and transformers "
                         f"could not load it either ({first})") from None
    hf.eval()
    causal = bool(getattr(hcfg, "is_decoder", False)) or _is_causal_lm(hcfg)
    layers = getattr(hcfg, "num_hidden_layers", None) or getattr(hcfg, "n_layer", None)
    heads = getattr(hcfg, "num_attention_heads", None) or getattr(hcfg, "n_head", None)
    if not layers or not heads:
        raise ValueError(f"{folder / 'config.json'}: expected num_hidden_layers and num_attention_heads")
    return TransformersModel(hf, "decoder" if causal else "encoder", int(layers), int(heads))


def _is_causal_lm(hcfg: Any) -> bool:
    """Decoder-only when transformers knows a causal-LM class for it but no masked-LM class."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = hcfg.model_type
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
