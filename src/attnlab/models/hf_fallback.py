"""Architectures attnlab does not implement, run by ``transformers`` behind the same interface.

The model is loaded with ``local_files_only`` (no network) and ``use_safetensors`` (no pickle).
A decoder whose class declares ``_supports_attention_backend`` (transformers' mark for models
whose attention goes through ``AttentionInterface``, modeling_utils.py) loads with
``attn_implementation="attnlab"`` (models/hf_bridge): its attention runs through
``attnlab.attention``, so ``mask``, ``score_mods`` and ``backend`` work and each attention module
carries attnlab hook points. Any other model loads with eager attention (the transformers
implementation that returns weights): hidden states and weights, so capture, analyses, head
detection and pictures work, and masks, score_mods and backends are refused with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.arguments import expect_int
from attnlab.backends.registry import current_backend, get_backend
from attnlab.models.common import TransformerOutput, check_score_mods
from attnlab.modules.hooks import HookedModel


class TransformersModel(HookedModel):
    """Wraps a ``transformers`` base model; ``forward`` matches attnlab's models. Bridged models
    name their attention hook points by layer like attnlab's own (``hook_name(layer,
    "attn.z")``), so ablation, patching and recording reach them the same way."""

    def __init__(self, hf: nn.Module, kind: str, num_layers: int, num_heads: int,
                 unbridged: str | None = None) -> None:
        super().__init__()
        self.hf = hf
        self.kind = kind
        self.num_layers = num_layers
        self.num_heads = num_heads
        # None: attention runs through attnlab (hf_bridge); else why it does not
        self.unbridged = unbridged

    @property
    def bridged(self) -> bool:
        return self.unbridged is None

    def attention_modules(self) -> list[nn.Module]:
        """The bridged attention modules by layer index, each with ``attnlab_hooks``."""
        if self.unbridged is not None:
            raise ValueError(f"attention_modules: {self.unbridged}")
        from attnlab.models.hf_bridge import attention_modules

        return attention_modules(self.hf)

    def hook_name(self, layer: int, site: str) -> str:
        """The dotted name of an attention site of ``layer`` ("attn.q/k/v/pattern/z"): what a
        bridged transformers model exposes through attnlab's attention function."""
        if self.unbridged is not None:
            raise ValueError(f"hook: needs attention through attnlab; {self.unbridged}")
        n = self.num_layers
        expect_int("layer", layer, -n, n - 1, expected=f"an int in 0..{n - 1}")
        s = site.removeprefix("hook_").replace(".hook_", ".")
        sites = ("attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z")
        if s not in sites:
            raise ValueError(f"site: expected one of {', '.join(sites)} on a transformers model (its "
                             f"attention runs through attnlab; the residual stream has no attnlab hook "
                             f"point), got {site!r}")
        module = self.attention_modules()[layer % n]
        path = next(n for n, m in self.named_modules() if m is module)
        name = f"{path}.attnlab_hooks.hook_{s[5:]}"
        self.hook_point(name)  # attached when the model was loaded; a missing one says so
        return name

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, mask: object = None, score_mods: Any = None,
                need_weights: bool = False, backend: str = "auto", cache: Any = None) -> TransformerOutput:
        if cache:
            raise ValueError("cache: needs attnlab's own model code (gpt2, llama); this model runs "
                             "through the transformers fallback")
        asked = [n for n, v in (("mask", mask), ("score_mods", score_mods)) if _given(v)]
        if backend != "auto":
            asked.append("backend")
        if asked and self.unbridged is not None:
            raise ValueError(f"{', '.join(asked)}: needs attnlab's own model code (bert, roberta, gpt2, "
                             f"llama) or attention through attnlab; {self.unbridged}")
        kw: dict[str, Any] = {"input_ids": input_ids, "output_hidden_states": True,
                              "output_attentions": need_weights}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if token_type_ids is not None and self.kind == "encoder" and _takes(self.hf, "token_type_ids"):
            kw["token_type_ids"] = token_type_ids
        if self.unbridged is not None:
            out = self.hf(**kw)
        else:
            out = self._bridged(kw, mask, score_mods, backend, need_weights)
        att = tuple(out.attentions) if need_weights and out.attentions is not None else None
        return TransformerOutput(out.last_hidden_state, tuple(out.hidden_states), att)

    def _bridged(self, kw: dict[str, Any], mask: object, score_mods: Any, backend: str,
                 need_weights: bool) -> Any:
        from attnlab.models.hf_bridge import bridge_interventions

        check_score_mods(score_mods, self.num_layers)
        chosen = current_backend() if backend == "auto" else backend
        if chosen != "auto":
            caps = get_backend(chosen).capabilities  # a bad name fails here, naming the choices
            if need_weights and not (caps.returns_weights or caps.returns_lse):
                raise ValueError(f"need_weights: backend {chosen!r} cannot return attention weights; "
                                 f"use 'eager', 'tiled' or 'auto'")
        with bridge_interventions(mask=mask, score_mods=score_mods,
                                  backend=None if backend == "auto" else backend):
            return self.hf(**kw)


def _given(v: object) -> bool:
    return v is not None and not (isinstance(v, Mapping) and not v)


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
        causal = bool(getattr(hcfg, "is_decoder", False)) or _is_causal_lm(hcfg)
        unbridged = _why_not_bridged(hcfg, causal)
        if unbridged is None:
            from attnlab.models.hf_bridge import register

            register()
        hf = AutoModel.from_pretrained(folder, config=hcfg,
                                       attn_implementation="eager" if unbridged else "attnlab",
                                       local_files_only=True, use_safetensors=True,
                                       trust_remote_code=False, dtype=dtype)
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{folder / 'config.json'}: model_type {cfg['model_type']!r} is not supported: "
                         f"attnlab implements bert, roberta, xlm-roberta and gpt2, and transformers "
                         f"could not load it either ({first})") from None
    hf.eval()
    layers = getattr(hcfg, "num_hidden_layers", None) or getattr(hcfg, "n_layer", None)
    heads = getattr(hcfg, "num_attention_heads", None) or getattr(hcfg, "n_head", None)
    if not layers or not heads:
        raise ValueError(f"{folder / 'config.json'}: expected num_hidden_layers and num_attention_heads")
    model = TransformersModel(hf, "decoder" if causal else "encoder", int(layers), int(heads), unbridged)
    if unbridged is None:
        model.attention_modules()  # attach the hook points now, so hooks can be registered before a call
    model.setup_hooks()
    return model


def _why_not_bridged(hcfg: Any, causal: bool) -> str | None:
    """None when the model's attention can run through attnlab, else the reason, naming it."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    mt = hcfg.model_type
    if not causal:
        return f"model_type {mt!r} is an encoder; only decoders are bridged to attnlab's attention"
    name = MODEL_MAPPING_NAMES.get(mt)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None:
        return f"model_type {mt!r}: transformers names no single base model class for it"
    if not getattr(cls, "_supports_attention_backend", False):
        return (f"model_type {mt!r} ({cls.__name__}): its attention does not go through transformers' "
                f"AttentionInterface (_supports_attention_backend is False)")
    return None


def _is_causal_lm(hcfg: Any) -> bool:
    """Decoder-only when transformers knows a causal-LM class for it but no masked-LM class."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = hcfg.model_type
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
