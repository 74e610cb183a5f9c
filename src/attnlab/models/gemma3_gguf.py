"""What a gemma3 GGUF file needs to become a Hugging Face ``gemma3_text`` checkpoint.

Why: llama.cpp's converter writes Gemma 3 (Gemma Team 2025, "Gemma 3 Technical Report") with
``gemma3.*`` metadata and its own tensor names, and it stores every RMSNorm weight as ``1 + w``
(its RMSNorm multiplies by the weight as stored; Gemma's computes ``(1 + w)``), so reading back
subtracts 1 from each ``*norm.weight`` — transformers' GGUF loader does the same for gemma2/3.
q and k are not permuted (Gemma uses the "rotate half" RoPE layout llama.cpp calls NEOX).

What the metadata leaves out is filled in as llama.cpp's runtime does (``llama-model.cpp``): the
local RoPE base 10,000 (``rope.freq_base_swa`` when present), every 6th layer global
(``attention.sliding_window_pattern`` when present), and scores scaled by 1/sqrt(head_dim)
(``attention.scale`` when present; the 62-layer 27B uses 1/sqrt(hidden / heads)). transformers
keeps ``query_pre_attn_scalar`` at its default 256, equal to head_dim for every size but 27B.
The 270M file's weights fall under Google's Gemma Terms of Use.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.models.gemma3 import GLOBAL, LOCAL
from attnlab.models.gguf_file import GGUFContents, TensorTransform, get
from attnlab.models.gguf_hparams import (
    attention_sizes,
    check_tensor_table,
    float_field,
    int_field,
    layer_count,
    optional_float,
)
from attnlab.models.llama_gguf import LLAMA_SHAPES, LLAMA_TENSORS, OPTIONAL_TENSORS, vocab_size

# GGUF tensor name -> Hugging Face gemma3_text name ({i} = layer): llama's table plus Gemma's
# differences — QK-norm, the norms after each sublayer, and ffn_norm as the pre-MLP norm.
GEMMA3_TENSORS = LLAMA_TENSORS | {
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
}
GEMMA3_SHAPES = LLAMA_SHAPES | {
    "blk.{i}.attn_q_norm.weight": ("head_dim",),
    "blk.{i}.attn_k_norm.weight": ("head_dim",),
    "blk.{i}.post_attention_norm.weight": ("hidden_size",),
    "blk.{i}.post_ffw_norm.weight": ("hidden_size",),
}

_SWA_EVERY = 6  # llama.cpp: hparams.set_swa_pattern(6) for gemma3


def _layer_types(contents: GGUFContents, n: int) -> list[str]:
    pattern = get(contents, "attention.sliding_window_pattern", _SWA_EVERY)
    if isinstance(pattern, list):  # one bool per layer, True = sliding window
        if len(pattern) != n:
            raise ValueError(f"{contents.path}: gemma3.attention.sliding_window_pattern: expected {n} "
                             f"entries (one per layer), got {len(pattern)}")
        return [LOCAL if p else GLOBAL for p in pattern]
    every = expect_int(f"{contents.path}: gemma3.attention.sliding_window_pattern", pattern, 0,
                       expected="an integer >= 0 or one bool per layer", error=ValueError)
    return [GLOBAL if every > 0 and (i + 1) % every == 0 else LOCAL for i in range(n)]


def gemma3_config(contents: GGUFContents) -> dict[str, Any]:
    """The file's hyper-parameters as a Hugging Face ``gemma3_text`` ``config.json`` dict, each
    checked as a range and against the file's tensors (``gguf_hparams``) before anything is built."""
    m = contents.metadata
    n = layer_count(contents)  # before the per-layer list below
    hidden = int_field(contents, "embedding_length")
    heads, kv_heads, head_dim = attention_sizes(contents, hidden)
    scale = optional_float(contents, "attention.scale")
    scalar = 1.0 / scale**2 if scale else (hidden / heads if n == 62 else head_dim)
    tokens = m.get("tokenizer.ggml.tokens") or []
    eos = m.get("tokenizer.ggml.eos_token_id")
    # llama.cpp also ends generation at <end_of_turn> (its EOG list), as Gemma's generation_config does.
    eos_ids = [int(eos)] if eos is not None else []
    if "<end_of_turn>" in tokens and tokens.index("<end_of_turn>") not in eos_ids:
        eos_ids.append(tokens.index("<end_of_turn>"))
    scaling = get(contents, "rope.scaling.type", None)
    cfg = {
        "model_type": "gemma3_text",
        "vocab_size": vocab_size(contents),
        "hidden_size": hidden,
        "intermediate_size": int_field(contents, "feed_forward_length"),
        "num_hidden_layers": n,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int_field(contents, "context_length"),
        "rms_norm_eps": float_field(contents, "attention.layer_norm_rms_epsilon", 1e-6),
        "sliding_window": int_field(contents, "attention.sliding_window"),
        "layer_types": _layer_types(contents, n),
        "query_pre_attn_scalar": scalar,
        "rope_parameters": {
            GLOBAL: {"rope_type": scaling if scaling not in (None, "none") else "default",
                     "rope_theta": float_field(contents, "rope.freq_base", 1_000_000.0)},
            LOCAL: {"rope_type": "default",
                    "rope_theta": float_field(contents, "rope.freq_base_swa", 10_000.0)},
        },
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": optional_float(contents, "final_logit_softcapping"),
        "attn_logit_softcapping": get(contents, "attn_logit_softcapping", None),
        "tie_word_embeddings": "output.weight" not in contents.shapes,
        "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos_ids,
        "pad_token_id": m.get("tokenizer.ggml.padding_token_id"),
    }
    check_tensor_table(contents, cfg, GEMMA3_SHAPES, OPTIONAL_TENSORS)
    return cfg


def _minus_one(w: Tensor, cfg: dict[str, Any]) -> Tensor:
    return w - 1.0  # llama.cpp stored 1 + w


GEMMA3_TRANSFORMS: dict[str, TensorTransform] = {
    name: _minus_one for name in GEMMA3_TENSORS if name.endswith("norm.weight")
}
