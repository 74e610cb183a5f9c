"""The architecture registry: everything attnlab knows about one model family, in one entry.

An :class:`Architecture` holds its config reader (``config.json`` dict -> typed config), its
builder, its weight map (Hugging Face names -> ours), and for GGUF files its metadata reader,
tensor table and per-tensor transforms (llama's q/k un-permute lives in the llama entry, not in
the reader), and its tokenizer kind. This is the shape of Hugging Face's per-architecture GGUF
tensor processors and modular model files: a new architecture is one entry plus a model file
that states its differences. Loading (``loading.py``) asks the registry and nothing else; an
architecture not in it is an error naming the ones that are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from attnlab.models.decoder import DECODER_TYPES, Decoder, DecoderConfig
from attnlab.models.encoder import ENCODER_TYPES, Encoder, EncoderConfig
from attnlab.models.gemma3 import GEMMA3_TYPES, Gemma3, Gemma3Config
from attnlab.models.gemma3_gguf import GEMMA3_TENSORS, GEMMA3_TRANSFORMS, gemma3_config
from attnlab.models.gguf_file import GGUFContents, TensorTransform
from attnlab.models.llama import LLAMA_TYPES, Llama, LlamaConfig
from attnlab.models.llama_gguf import LLAMA_TENSORS, LLAMA_TRANSFORMS, llama_config
from attnlab.models.weights import WeightMap, decoder_map, encoder_map, gemma3_map, llama_map


@dataclass(frozen=True)
class GGUFSpec:
    """How a GGUF file of this architecture becomes a Hugging Face checkpoint."""

    architecture: str  # general.architecture
    read_config: Callable[[GGUFContents], dict[str, Any]]  # metadata -> config.json dict
    tensors: Mapping[str, str]  # GGUF name ({i} = layer) -> HF name
    transforms: Mapping[str, TensorTransform] = field(default_factory=dict)  # undo the converter


@dataclass(frozen=True)
class Architecture:
    name: str
    kind: str  # "encoder" | "decoder"
    model_types: tuple[str, ...]  # config.json model_type values it reads
    read_config: Callable[[dict[str, Any]], Any]  # config.json dict -> typed config
    build: Callable[[Any, bool], nn.Module]  # (config, untied lm_head) -> model, uninitialised
    weight_map: Callable[[Any, set[str]], tuple[WeightMap, bool]]  # (config, names) -> map, untied
    tokenizer: str  # "tokenizer.json" in a folder; GGUF files carry their own vocabulary
    gguf: GGUFSpec | None = None

    def max_tokens(self, cfg: Any) -> int:
        return int(cfg.max_tokens)


def _with_head(net: Any, cfg: Any, untied: bool) -> nn.Module:
    """An own lm_head when the checkpoint has one (not tied to the embeddings)."""
    if untied:
        net.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
    return net


def _encoder_with_pooler(cfg: EncoderConfig, pooler: bool) -> nn.Module:
    return Encoder(cfg, pooler=pooler)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        # encoder_map's second value says whether the checkpoint has BERT's pooler
        Architecture("bert", "encoder", ENCODER_TYPES, EncoderConfig.from_hf, _encoder_with_pooler,
                     encoder_map, "tokenizer.json"),
        Architecture("gpt2", "decoder", DECODER_TYPES, DecoderConfig.from_hf,
                     lambda cfg, untied: _with_head(Decoder(cfg), cfg, untied), decoder_map,
                     "tokenizer.json"),
        Architecture("llama", "decoder", LLAMA_TYPES, LlamaConfig.from_hf,
                     lambda cfg, untied: _with_head(Llama(cfg), cfg, untied), llama_map, "tokenizer.json",
                     GGUFSpec("llama", llama_config, LLAMA_TENSORS, LLAMA_TRANSFORMS)),
        # Gemma 3: sandwich norms, QK-norm, local/global layers; llama.cpp stored norms as 1 + w.
        Architecture("gemma3", "decoder", GEMMA3_TYPES, Gemma3Config.from_hf,
                     lambda cfg, untied: _with_head(Gemma3(cfg), cfg, untied), gemma3_map, "tokenizer.json",
                     GGUFSpec("gemma3", gemma3_config, GEMMA3_TENSORS, GEMMA3_TRANSFORMS)),
    )
}


def native_model_types() -> tuple[str, ...]:
    return tuple(t for a in ARCHITECTURES.values() for t in a.model_types)


def for_model_type(model_type: str) -> Architecture | None:
    """The entry reading ``config.json``'s ``model_type``, or None (transformers may run it)."""
    for a in ARCHITECTURES.values():
        if model_type in a.model_types:
            return a
    return None


def gguf_architectures() -> tuple[str, ...]:
    return tuple(a.gguf.architecture for a in ARCHITECTURES.values() if a.gguf is not None)


def for_gguf(contents: GGUFContents) -> Architecture:
    """The entry for a GGUF file's ``general.architecture``; an error names the supported ones
    (a widened tuple alone would load e.g. qwen2 with llama's q/k permutation: wrong logits)."""
    arch = contents.architecture
    for a in ARCHITECTURES.values():
        if a.gguf is not None and a.gguf.architecture == arch:
            return a
    raise ValueError(f"{contents.path}: expected general.architecture in {gguf_architectures()}, "
                     f"got {arch!r} (attnlab implements only these for GGUF files)")
