"""What every translator (RNN encoder-decoder or Transformer) offers training and search, and
its files.

Search and training call four methods: ``forward(src, src_lengths, tgt_in)`` (teacher forcing,
``.logits`` (B, Lt, V)), ``encode(src, src_lengths)`` -> a memory with ``index_select``,
``init_state(memory)`` -> a decoder state with ``index_select`` and ``step(y_prev, state,
memory)`` -> ``.logits`` (B, V), ``.state``, ``.weights`` (B, Ls) or None, ``.centres``.

A saved model is two files: ``model.safetensors`` (weights; no pickle) and ``model.json``
(format tag + the model's config). Both are written atomically; loading checks the format
tag, the presence of both files and that every tensor has the expected name and shape, and
says which of these failed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from attnlab.data.io import FormatError, atomic_write_bytes, read_json, write_json

WEIGHTS, CONFIG = "model.safetensors", "model.json"
# model.json format tag -> the model.arch that wrote it (one entry per translator class)
FORMATS: dict[str, str] = {"attnlab.seq2seq/1": "rnn", "attnlab.transformer/1": "transformer"}

M = TypeVar("M", bound="TranslationModel")


class TranslationModel(nn.Module):
    """Base of the translators: the decoding interface and the model folder."""

    FORMAT: ClassVar[str]  # the tag in model.json, e.g. "attnlab.seq2seq/1"
    ARCH: ClassVar[str]  # the model.arch config value that builds this class
    cfg: Any

    @classmethod
    def config_from_dict(cls, d: dict[str, Any]) -> Any:
        raise NotImplementedError

    def encode(self, src: Tensor, src_lengths: Tensor) -> Any:
        raise NotImplementedError

    def init_state(self, memory: Any, *, cache: bool = True) -> Any:
        """The decoder state before the first step. ``cache=False`` asks a model with a KV
        cache to recompute the whole prefix at every step instead (the reference that cached
        decoding must equal); an RNN's state is its own cache and ignores it."""
        raise NotImplementedError

    def step(self, y_prev: Tensor, state: Any, memory: Any) -> Any:
        raise NotImplementedError

    # -- files -------------------------------------------------------------------------
    def weights_bytes(self) -> bytes:
        return st_save({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                       metadata={"format": self.FORMAT})

    def save(self, folder: str | os.PathLike[str]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / WEIGHTS, self.weights_bytes())
        write_json(folder / CONFIG, {"format": self.FORMAT, "config": self.cfg.to_dict()})

    @classmethod
    def load(cls: type[M], folder: str | os.PathLike[str]) -> M:
        folder = Path(folder)
        fmt, meta = read_model_json(folder)
        if fmt != cls.FORMAT:
            what = (f"a model.arch={FORMATS[fmt]} model" if isinstance(fmt, str) and fmt in FORMATS
                    else "a model from another attnlab version; retrain it")
            raise FormatError(f"{folder / CONFIG}: expected model format {cls.FORMAT!r} "
                              f"(model.arch={cls.ARCH}), got {fmt!r} ({what})")
        try:
            model = cls(cls.config_from_dict(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{folder / CONFIG}: invalid model config: {e}") from e
        model.load_state_dict(read_weights(folder / WEIGHTS, model.state_dict()))
        return model


def read_model_json(folder: Path) -> tuple[object, dict[str, Any]]:
    """Check the folder holds a model and return (format tag, model.json contents)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model: expected a model folder, got {str(folder)!r} "
                                f"(no such folder)")
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"model: {folder} is missing {', '.join(missing)}; "
                                f"expected a folder written by `attnlab train`")
    meta = read_json(folder / CONFIG, "model config")
    if not isinstance(meta, dict):
        raise FormatError(f"{folder / CONFIG}: expected a JSON object with a format tag, "
                          f"got {type(meta).__name__}")
    return meta.get("format"), meta


def read_weights(path: Path, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Load a safetensors file and check it holds exactly ``expected``'s names and shapes."""
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: expected a safetensors file, got an error: {e}") from e
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise FormatError(f"{path}: tensors do not match the config (missing {missing[:5]}, "
                          f"unexpected {extra[:5]})")
    for k, v in expected.items():
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype:
            raise FormatError(f"{path}: tensor {k}: expected {v.dtype} {tuple(v.shape)}, got "
                              f"{tensors[k].dtype} {tuple(tensors[k].shape)}")
    return tensors
