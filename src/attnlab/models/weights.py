"""Explicit weight-name maps: Hugging Face checkpoint tensor -> attnlab parameter.

Every tensor the model needs must be in the checkpoint (else: an error naming the missing
ones) and every tensor in the checkpoint must be used, or be on a short list of known, unused
entries — task heads such as ``cls.*`` (BERT's pre-training heads) and buffers old versions
saved (``embeddings.position_ids``, GPT-2's ``attn.bias`` causal table). Anything else left
over is an error too: a silent leftover usually means the map is wrong.

Weights are read only from safetensors files (no pickle: a ``.bin`` checkpoint can run code
when loaded), and only from inside the model folder: an index naming ``../x.safetensors``, an
absolute path or a symlink out of the folder is refused (:func:`contained`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from attnlab.models.decoder import DecoderConfig
from attnlab.models.encoder import EncoderConfig
from attnlab.models.gemma3 import Gemma3Config
from attnlab.models.llama import LlamaConfig

Convert = Callable[[list[Tensor]], list[Tensor]]


@dataclass(frozen=True)
class Rule:
    """``ours`` parameters come from the checkpoint tensors ``theirs`` through ``convert``."""

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    convert: Convert | None = None  # default: one-to-one copy


@dataclass(frozen=True)
class WeightMap:
    rules: tuple[Rule, ...]
    ignorable: tuple[str, ...]  # regexes of checkpoint tensors knowingly left unused


# --------------------------------------------------------------------------------- reading files


def contained(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused (ValueError naming ``what``) if it leaves ``folder``: an
    absolute name, ``..``, or a symlink pointing elsewhere. Symlinks are resolved, so this
    holds for the file that would actually be read. The one exception is the Hugging Face
    cache layout, where ``<repo>/snapshots/<rev>/<name>`` links to ``<repo>/blobs/<hash>``.
    A missing file passes (the caller reports it as missing)."""
    try:
        root, target = folder.resolve(), (folder / name).resolve()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a symlink loop
        raise ValueError(f"{what}: expected a file inside the model folder {folder}, got "
                         f"{name!r} ({e})") from None
    if target == root or root in target.parents:
        return folder / name
    if root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs":
        return folder / name
    raise ValueError(f"{what}: expected a file inside the model folder {folder}, got "
                     f"{name!r}, which resolves to {target} (outside it); refusing to read it")


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists, each checked to lie inside ``folder``."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [contained(folder, single.name, str(single))]
    if not index.is_file():
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        hint = (f"; found {', '.join(sorted(pickles))}, which attnlab does not load (pickle files can "
                f"run code): convert them to safetensors first") if pickles else ""
        raise FileNotFoundError(f"{folder}: expected model.safetensors (weights), it is missing{hint}")
    contained(folder, index.name, str(index))
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        entries = sorted(weight_map.items(), key=lambda kv: (str(kv[1]), str(kv[0])))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{index}: expected a safetensors index with a weight_map, got ({e})") from None
    files: list[Path] = []
    for tensor, name in entries:  # the first tensor (by name) of each file names its entry
        if not isinstance(name, str) or not name:
            raise ValueError(f"{index}: expected a file name for the weight_map entry "
                             f"{tensor!r}, got {name!r}")
        f = contained(folder, name, f"{index}: weight_map entry {tensor!r}")
        if f in files:
            continue
        if not f.is_file():
            raise FileNotFoundError(f"{folder}: the index lists {name}, which is missing")
        files.append(f)
    return files


def read_safetensors(folder: Path) -> dict[str, Tensor]:
    """All tensors of ``model.safetensors`` (or the shards an ``.index.json`` lists)."""
    from safetensors import SafetensorError, safe_open

    files = safetensors_files(folder)
    out: dict[str, Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                    out[k] = st.get_tensor(k)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{f}: expected a valid safetensors file, could not read it ({e})") from None
    return out


# --------------------------------------------------------------------------------- the maps


def _prefix(keys: set[str], probe: str, candidates: tuple[str, ...]) -> str:
    """The wrapper prefix a task model adds ('bert.', 'roberta.', 'transformer.'), or ''."""
    for p in ("", *candidates):
        if p + probe in keys:
            return p
    raise ValueError(f"model.safetensors: expected a tensor named {probe!r} (maybe under "
                     f"{', '.join(repr(c) for c in candidates)}), found none; first names: "
                     f"{sorted(keys)[:5]}")


def _norm(keys: set[str], ours: str, theirs: str) -> list[Rule]:
    """A LayerNorm; very old BERT checkpoints call weight/bias gamma/beta."""
    old = f"{theirs}.gamma" in keys and f"{theirs}.weight" not in keys
    w, b = ("gamma", "beta") if old else ("weight", "bias")
    return [Rule((f"{ours}.weight",), (f"{theirs}.{w}",)), Rule((f"{ours}.bias",), (f"{theirs}.{b}",))]


def _linear(ours: str, theirs: str) -> list[Rule]:
    return [Rule((f"{ours}.{p}",), (f"{theirs}.{p}",)) for p in ("weight", "bias")]


def encoder_map(cfg: EncoderConfig, keys: set[str]) -> tuple[WeightMap, bool]:
    """BERT/RoBERTa names (HF ``BertModel``); returns the map and whether a pooler is present."""
    p = _prefix(keys, "embeddings.word_embeddings.weight", ("bert.", "roberta."))
    e = f"{p}embeddings"
    rules = [
        Rule(("embeddings.word.weight",), (f"{e}.word_embeddings.weight",)),
        Rule(("embeddings.position.weight",), (f"{e}.position_embeddings.weight",)),
        Rule(("embeddings.token_type.weight",), (f"{e}.token_type_embeddings.weight",)),
        *_norm(keys, "embeddings.norm", f"{e}.LayerNorm"),
    ]
    for i in range(cfg.num_layers):
        t, o = f"{p}encoder.layer.{i}", f"layers.{i}"
        rules += [
            *_linear(f"{o}.attention.q_proj", f"{t}.attention.self.query"),
            *_linear(f"{o}.attention.k_proj", f"{t}.attention.self.key"),
            *_linear(f"{o}.attention.v_proj", f"{t}.attention.self.value"),
            *_linear(f"{o}.attention.out_proj", f"{t}.attention.output.dense"),
            *_norm(keys, f"{o}.attention_norm", f"{t}.attention.output.LayerNorm"),
            *_linear(f"{o}.ffn_in", f"{t}.intermediate.dense"),
            *_linear(f"{o}.ffn_out", f"{t}.output.dense"),
            *_norm(keys, f"{o}.ffn_norm", f"{t}.output.LayerNorm"),
        ]
    pooler = f"{p}pooler.dense.weight" in keys
    if pooler:
        rules += _linear("pooler", f"{p}pooler.dense")
    ignorable = (r".*embeddings\.position_ids$", r"^(cls|lm_head|classifier|qa_outputs)\.")
    return WeightMap(tuple(rules), ignorable), pooler


def _split_qkv(scale: float) -> Convert:
    """GPT-2's fused Conv1D c_attn: weight (E, 3E) in (in, out) layout, bias (3E,) -> q, k, v.

    Conv1D computes x @ W + b, nn.Linear computes x @ Wᵀ + b: transpose, then split the output
    axis into q | k | v. ``scale`` (GPT-2's score scaling relative to 1/sqrt(Dh)) is folded
    into the query projection: (s·q)·k = s·(q·k), so the scores are unchanged.
    """

    def convert(ts: list[Tensor]) -> list[Tensor]:
        w, b = ts
        wq, wk, wv = w.t().chunk(3, dim=0)  # (3E, E) -> 3 x (E, E)
        bq, bk, bv = b.chunk(3, dim=0)  # (3E,) -> 3 x (E,)
        if scale != 1.0:
            wq, bq = wq * scale, bq * scale
        return [t.contiguous() for t in (wq, wk, wv, bq, bk, bv)]

    return convert


def _conv1d(ours: str, theirs: str) -> list[Rule]:
    return [Rule((f"{ours}.weight",), (f"{theirs}.weight",), lambda ts: [ts[0].t().contiguous()]),
            Rule((f"{ours}.bias",), (f"{theirs}.bias",))]


def decoder_map(cfg: DecoderConfig, keys: set[str]) -> tuple[WeightMap, bool]:
    """GPT-2 names (HF ``GPT2Model``); returns the map and whether an untied lm_head is present."""
    p = _prefix(keys, "wte.weight", ("transformer.",))
    rules = [
        Rule(("token_embedding.weight",), (f"{p}wte.weight",)),
        Rule(("position_embedding.weight",), (f"{p}wpe.weight",)),
        *_linear("final_norm", f"{p}ln_f"),
    ]
    for i in range(cfg.num_layers):
        t, o = f"{p}h.{i}", f"layers.{i}"
        a = f"{o}.attention"
        rules += [
            *_linear(f"{o}.attention_norm", f"{t}.ln_1"),
            Rule((f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight",
                  f"{a}.q_proj.bias", f"{a}.k_proj.bias", f"{a}.v_proj.bias"),
                 (f"{t}.attn.c_attn.weight", f"{t}.attn.c_attn.bias"), _split_qkv(cfg.q_scale(i))),
            *_conv1d(f"{a}.out_proj", f"{t}.attn.c_proj"),
            *_linear(f"{o}.mlp_norm", f"{t}.ln_2"),
            *_conv1d(f"{o}.mlp_in", f"{t}.mlp.c_fc"),
            *_conv1d(f"{o}.mlp_out", f"{t}.mlp.c_proj"),
        ]
    # lm_head.weight is usually tied to wte (and then not saved); keep it only when it differs.
    untied = "lm_head.weight" in keys
    if untied:
        rules.append(Rule(("lm_head.weight",), ("lm_head.weight",)))
    ignorable = (r".*h\.\d+\.attn\.(bias|masked_bias)$", r"^(score|multiple_choice_head)\.")
    return WeightMap(tuple(rules), ignorable), untied


def llama_map(cfg: LlamaConfig, keys: set[str]) -> tuple[WeightMap, bool]:
    """HF ``LlamaForCausalLM`` names (GGUF files are renamed to these by ``gguf_file``); returns
    the map and whether the checkpoint has its own, untied lm_head."""
    p = _prefix(keys, "embed_tokens.weight", ("model.",))
    b = ("weight", "bias") if cfg.attention_bias else ("weight",)
    mb = ("weight", "bias") if cfg.mlp_bias else ("weight",)
    rules = [Rule(("token_embedding.weight",), (f"{p}embed_tokens.weight",)),
             Rule(("final_norm.weight",), (f"{p}norm.weight",))]
    for i in range(cfg.num_layers):
        t, o = f"{p}layers.{i}", f"layers.{i}"
        rules += [Rule((f"{o}.attention_norm.weight",), (f"{t}.input_layernorm.weight",)),
                  Rule((f"{o}.mlp_norm.weight",), (f"{t}.post_attention_layernorm.weight",))]
        for ours, theirs in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                             ("out_proj", "o_proj")):
            rules += [Rule((f"{o}.attention.{ours}.{x}",), (f"{t}.self_attn.{theirs}.{x}",)) for x in b]
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            rules += [Rule((f"{o}.mlp.{ours}.{x}",), (f"{t}.mlp.{theirs}.{x}",)) for x in mb]
    untied = "lm_head.weight" in keys and not cfg.tie_word_embeddings
    if untied:
        rules.append(Rule(("lm_head.weight",), ("lm_head.weight",)))
    # A tied model may still save lm_head (a copy of the embeddings); inv_freq is a buffer.
    ignorable = (r".*rotary_emb\.inv_freq$", *((r"^lm_head\.weight$",) if cfg.tie_word_embeddings else ()))
    return WeightMap(tuple(rules), ignorable), untied


def gemma3_map(cfg: Gemma3Config, keys: set[str]) -> tuple[WeightMap, bool]:
    """HF ``Gemma3ForCausalLM`` names (``gemma3_text``; GGUF files are renamed to these by
    ``gemma3_gguf``); returns the map and whether the checkpoint has its own, untied lm_head."""
    p = _prefix(keys, "embed_tokens.weight", ("model.",))
    rules = [Rule(("token_embedding.weight",), (f"{p}embed_tokens.weight",)),
             Rule(("final_norm.weight",), (f"{p}norm.weight",))]
    b = ("weight", "bias") if cfg.attention_bias else ("weight",)
    for i in range(cfg.num_layers):
        t, o = f"{p}layers.{i}", f"layers.{i}"
        for ours, theirs in (("attention_norm", "input_layernorm"),
                             ("post_attention_norm", "post_attention_layernorm"),
                             ("mlp_norm", "pre_feedforward_layernorm"),
                             ("post_mlp_norm", "post_feedforward_layernorm"),
                             ("attention.q_norm", "self_attn.q_norm"),
                             ("attention.k_norm", "self_attn.k_norm"),
                             ("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"),
                             ("mlp.down", "mlp.down_proj")):
            rules.append(Rule((f"{o}.{ours}.weight",), (f"{t}.{theirs}.weight",)))
        for ours, theirs in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                             ("out_proj", "o_proj")):
            rules += [Rule((f"{o}.attention.{ours}.{x}",), (f"{t}.self_attn.{theirs}.{x}",)) for x in b]
    untied = "lm_head.weight" in keys and not cfg.tie_word_embeddings
    if untied:
        rules.append(Rule(("lm_head.weight",), ("lm_head.weight",)))
    ignorable = (r".*rotary_emb\..*inv_freq$", *((r"^lm_head\.weight$",) if cfg.tie_word_embeddings else ()))
    return WeightMap(tuple(rules), ignorable), untied


# --------------------------------------------------------------------------------- applying


def map_bits(wmap: WeightMap, bits: dict[str, int]) -> dict[str, int]:
    """Our parameter name -> the bits its checkpoint tensors were stored in (the most of them,
    when a rule merges several), for the rules whose every tensor has an entry in ``bits``."""
    return {ours: max(bits[t] for t in r.theirs) for r in wmap.rules
            if r.theirs and all(t in bits for t in r.theirs) for ours in r.ours}


def apply_map(wmap: WeightMap, tensors: dict[str, Tensor], *, dtype: torch.dtype,
              source: str) -> tuple[dict[str, Tensor], list[str]]:
    """Our state dict from the checkpoint ``tensors``; returns it and the ignored names.

    Raises ValueError naming every missing tensor and every unexpected leftover.
    """
    needed = [n for r in wmap.rules for n in r.theirs]
    missing = [n for n in needed if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise ValueError(f"{source}: expected tensors missing from the checkpoint: "
                         f"{', '.join(missing[:8])}{more}")
    used = set(needed)
    rest = [n for n in tensors if n not in used]
    ignored = [n for n in rest if any(re.match(rx, n) for rx in wmap.ignorable)]
    leftover = sorted(set(rest) - set(ignored))
    if leftover:
        more = f" (and {len(leftover) - 8} more)" if len(leftover) > 8 else ""
        raise ValueError(f"{source}: unexpected tensors the weight map does not use: "
                         f"{', '.join(leftover[:8])}{more}; this checkpoint does not match the "
                         f"architecture its config.json names")
    state: dict[str, Tensor] = {}
    for r in wmap.rules:
        got = [tensors[n] for n in r.theirs]
        out = r.convert(got) if r.convert is not None else got
        for name, t in zip(r.ours, out, strict=True):
            if not t.is_floating_point():
                raise ValueError(f"{source}: expected floating-point weights for {r.theirs[0]}, "
                                 f"got {t.dtype}")
            state[name] = t.to(dtype)
    return state, sorted(ignored)
