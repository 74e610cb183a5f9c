"""A GGUF file's hyper-parameters, read as ranges and compared with its tensors before a model is
built from them.

Why: the model is allocated from the metadata, so a wrong number costs before any weight is
read: ``head_count 0`` divided by zero, ``block_count 2**31`` built modules until memory ran out,
``feed_forward_length 2**31`` asked the allocator for terabytes, and an RMS epsilon of -1 or a
RoPE base of 0 loaded a model whose every logit was NaN. Here each field is checked for its
type and range (heads > 0, K/V heads dividing heads, an even head size for RoPE's pairs, finite
positive epsilons and bases), the layer count against the layers the file holds, and every
tensor's name and shape against what the fields imply (:func:`check_tensor_table`) — so layers
and sizes are bounded by the tensors, themselves bounded by the file (``gguf_scan``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from attnlab.arguments import expect_int
from attnlab.models.gguf_file import LAYER, GGUFContents

_MISSING = object()

# The shape symbols of an architecture's tensor table (``LLAMA_SHAPES``) -> the GGUF fields they
# come from, for errors. q_size and kv_size: heads x head size.
FIELDS = {
    "vocab_size": "vocab_size (or the number of tokenizer.ggml.tokens)",
    "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length",
    "head_dim": "attention.key_length",
    "q_size": "attention.head_count x attention.key_length",
    "kv_size": "attention.head_count_kv x attention.key_length",
}


def _value(contents: GGUFContents, key: str, default: Any) -> tuple[str, Any]:
    full = f"{contents.architecture}.{key}"
    value = contents.metadata.get(full, default)
    if value is _MISSING:
        raise ValueError(f"{contents.path}: expected the metadata field {full}, it is missing")
    return full, value


def int_field(contents: GGUFContents, key: str, *, lo: int = 1, default: Any = _MISSING) -> int:
    """``<architecture>.<key>`` as an integer >= ``lo`` (a bool, float or string is an error)."""
    full, value = _value(contents, key, default)
    return expect_int(f"{contents.path}: {full}", value, lo, expected=f"an integer >= {lo}", error=ValueError)


def float_field(contents: GGUFContents, key: str, default: Any = _MISSING) -> float:
    """``<architecture>.<key>`` as a finite number > 0: an epsilon, a RoPE base, a scale (NaN,
    0 or a negative one makes every logit NaN)."""
    full, value = _value(contents, key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{contents.path}: {full}: expected a finite number > 0, got {value!r}")
    return float(value)


def optional_float(contents: GGUFContents, key: str) -> float | None:
    return None if f"{contents.architecture}.{key}" not in contents.metadata else float_field(contents, key)


def layer_count(contents: GGUFContents) -> int:
    """``block_count``, which must be the number of layers the file holds tensors for: checked
    before anything is made per layer."""
    n = int_field(contents, "block_count")
    held = 1 + max((int(m.group(1)) for name in contents.shapes if (m := LAYER.match(name))), default=-1)
    if n != held:
        raise ValueError(f"{contents.path}: {contents.architecture}.block_count: expected {held} (the file "
                         f"holds tensors for layers 0 to {held - 1}), got {n}")
    return n


def attention_sizes(contents: GGUFContents, hidden: int) -> tuple[int, int, int]:
    """(heads, K/V heads, head size), each > 0, K/V heads dividing heads, the head size even."""
    arch = contents.architecture
    heads = int_field(contents, "attention.head_count")
    kv = int_field(contents, "attention.head_count_kv", default=heads)
    if heads % kv:
        raise ValueError(f"{contents.path}: {arch}.attention.head_count_kv: expected a divisor of "
                         f"{arch}.attention.head_count {heads} (query heads share K/V heads), got {kv}")
    if f"{arch}.attention.key_length" not in contents.metadata and hidden % heads:
        raise ValueError(f"{contents.path}: {arch}.attention.key_length: missing, and "
                         f"{arch}.embedding_length {hidden} is not a multiple of {arch}.attention.head_count "
                         f"{heads}")
    head_dim = int_field(contents, "attention.key_length", default=hidden // heads)
    if head_dim % 2:
        raise ValueError(f"{contents.path}: {arch}.attention.key_length: expected an even head size "
                         f"(RoPE rotates pairs), got {head_dim}")
    return heads, kv, head_dim


def check_tensor_table(contents: GGUFContents, cfg: Mapping[str, Any], shapes: Mapping[str, tuple[str, ...]],
                       optional: Collection[str] = ()) -> None:
    """Every tensor of ``shapes`` (GGUF name, ``{i}`` = layer -> shape symbols, (rows, cols) as
    torch holds it) is in the file with the shape ``cfg`` implies; those in ``optional`` may be
    absent. Runs before anything is allocated; the layer count is already :func:`layer_count`'s."""
    sizes = {"vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
             "intermediate_size": cfg["intermediate_size"], "head_dim": cfg["head_dim"],
             "q_size": cfg["num_attention_heads"] * cfg["head_dim"],
             "kv_size": cfg["num_key_value_heads"] * cfg["head_dim"]}
    arch, have = contents.architecture, contents.shapes
    for pattern, dims in shapes.items():
        layers = range(cfg["num_hidden_layers"]) if "{i}" in pattern else [0]
        for i in layers:
            name = pattern.format(i=i)
            if name not in have:
                if pattern in optional:
                    continue
                raise ValueError(f"{contents.path}: tensor {name}: expected in the file "
                                 f"({arch}.block_count {cfg['num_hidden_layers']}), it is missing")
            want = tuple(sizes[d] for d in dims)
            if have[name] != want:
                why = " x ".join(f"{arch}.{FIELDS[d]}" for d in dims)
                raise ValueError(f"{contents.path}: tensor {name}: expected shape {want} from {why}, "
                                 f"got {have[name]}")
