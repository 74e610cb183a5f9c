"""What a llama GGUF file needs to become a Hugging Face llama checkpoint: its metadata as a
``config.json`` dict, its tensor names, and the q/k row permutation llama.cpp's converter applied.

transformers' GGUF loader keeps the same facts per architecture (``TENSOR_PROCESSORS``:
``LlamaConverter`` reverse-permutes q/k; qwen2 needs nothing) — a registry entry's job here
(``attnlab.models.arch``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attnlab.models.gguf_file import GGUFContents
from attnlab.models.gguf_hparams import (
    attention_sizes,
    check_tensor_table,
    float_field,
    int_field,
    layer_count,
)

# GGUF tensor name -> Hugging Face llama name ({i} = layer).
LLAMA_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# GGUF tensor name -> its shape (rows, cols as torch holds it) in config.json terms; q_size and
# kv_size are heads x head_dim (gguf_hparams.check_tensor_table). output.weight is absent when tied.
LLAMA_SHAPES: dict[str, tuple[str, ...]] = {
    "token_embd.weight": ("vocab_size", "hidden_size"),
    "output_norm.weight": ("hidden_size",),
    "output.weight": ("vocab_size", "hidden_size"),
    "blk.{i}.attn_norm.weight": ("hidden_size",),
    "blk.{i}.attn_q.weight": ("q_size", "hidden_size"),
    "blk.{i}.attn_k.weight": ("kv_size", "hidden_size"),
    "blk.{i}.attn_v.weight": ("kv_size", "hidden_size"),
    "blk.{i}.attn_output.weight": ("hidden_size", "q_size"),
    "blk.{i}.ffn_norm.weight": ("hidden_size",),
    "blk.{i}.ffn_gate.weight": ("intermediate_size", "hidden_size"),
    "blk.{i}.ffn_up.weight": ("intermediate_size", "hidden_size"),
    "blk.{i}.ffn_down.weight": ("hidden_size", "intermediate_size"),
}
OPTIONAL_TENSORS = frozenset({"output.weight"})


def vocab_size(contents: GGUFContents) -> int:
    tokens = contents.metadata.get("tokenizer.ggml.tokens")
    return int_field(contents, "vocab_size", default=len(tokens) if isinstance(tokens, list) else 0)


def llama_config(contents: GGUFContents) -> dict[str, Any]:
    """The file's hyper-parameters as a Hugging Face llama ``config.json`` dict, each checked as
    a range and against the file's tensors (``gguf_hparams``) before anything is built."""
    m = contents.metadata
    n = layer_count(contents)
    hidden = int_field(contents, "embedding_length")
    heads, kv_heads, head_dim = attention_sizes(contents, hidden)
    cfg = {
        "model_type": "llama",
        "vocab_size": vocab_size(contents),
        "hidden_size": hidden,
        "intermediate_size": int_field(contents, "feed_forward_length"),
        "num_hidden_layers": n,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int_field(contents, "context_length"),
        "rms_norm_eps": float_field(contents, "attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": float_field(contents, "rope.freq_base", 10000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in contents.shapes,
        "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": m.get("tokenizer.ggml.padding_token_id"),
    }
    check_tensor_table(contents, cfg, LLAMA_SHAPES, OPTIONAL_TENSORS)
    return cfg


def unpermute_rope(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's q/k row permutation.  w (n_heads·Dh, E) -> same shape.

    HF llama applies RoPE in the "rotate half" layout (pairs (x_i, x_{i+Dh/2})); llama.cpp
    rotates adjacent pairs (x_{2i}, x_{2i+1}), so its converter reorders each head's rows from
    [first half | second half] to interleaved. Reading back: (H, 2, Dh/2) -> (H, Dh/2, 2) was
    the write; (H, Dh/2, 2) -> (H, 2, Dh/2) undoes it (transformers' GGUF loader does the same).
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"q/k weight: expected rows divisible by 2 x {n_heads} heads, got {rows}")
    d2 = rows // n_heads // 2
    return w.reshape(n_heads, d2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)  # (H·Dh, E)


LLAMA_TRANSFORMS = {
    "blk.{i}.attn_q.weight": lambda w, cfg: unpermute_rope(w, cfg["num_attention_heads"]),
    "blk.{i}.attn_k.weight": lambda w, cfg: unpermute_rope(w, cfg["num_key_value_heads"]),
}
