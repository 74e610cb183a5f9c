"""A decode step of a quantized Llama-family model in one native call (issue 23).

``model(ids, cache=...)`` runs a decode step as ~190 small PyTorch operators per layer and the
Python that issues them: with int4 weights on SmolLM2-135M half the step's time
(``benchmarks/llm/decode_profile.py``). :class:`FastDecoder` hands the whole token to
``csrc/llama_decode.cpp``: every layer's norms, projections, RoPE, cache write, attention and
MLP, then the unembedding, in one call, with weights repacked once into 16-row tiles the AVX-512
VNNI instructions read directly (:func:`pack_int4`, :func:`pack_int8`).

What differs from ``model(...)``: the activations entering each projection are rounded to int8
per block of 32 (scale max|x|/127, llama.cpp's q8 activations) where torch's kernels round them
to bfloat16; the weights are exactly the model's. The decode loop uses it only where nothing can
tell: an attnlab ``Llama`` whose projections are all int8/int4, no hook anywhere on the model, no
mask, score_mods or recorder, one sequence, a CPU, and the kernel built
(:mod:`attnlab.models.native_build`). :func:`fast_decoder` says why not otherwise.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from attnlab.models.llama import Llama
from attnlab.models.native_build import decode_library
from attnlab.models.quantized import Int8Linear
from attnlab.models.quantized_int4 import Int4Linear, _unpack, packing_block
from attnlab.modules.multihead import KVCache

TILE, BLOCK = 16, 32  # output rows per tile; inputs per quantization block


class QWeight(ctypes.Structure):
    _fields_ = [("fmt", ctypes.c_int32), ("N", ctypes.c_int32), ("K", ctypes.c_int32),
                ("w", ctypes.c_void_p), ("a", ctypes.c_void_p), ("b", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class LlamaLayer(ctypes.Structure):
    # projections q, k, v, o, gate, up, down; stacked ones leave the later ones empty (N = 0)
    _fields_ = [("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p), ("proj", QWeight * 7)]


class LlamaModel(ctypes.Structure):
    _fields_ = [("E", ctypes.c_int32), ("H", ctypes.c_int32), ("Hkv", ctypes.c_int32),
                ("Dh", ctypes.c_int32), ("I", ctypes.c_int32), ("n_layers", ctypes.c_int32),
                ("V", ctypes.c_int32), ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                ("layers", ctypes.POINTER(LlamaLayer)), ("embedding", ctypes.c_void_p),
                ("final_norm", ctypes.c_void_p), ("unembed", QWeight)]


def pack_int4(q: Tensor, d: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``w = d·q + m`` per row and block of 32 into the kernel's tiles.
    q (N, K) in [0, 15]; d, m (N, K/32) -> w uint8 (N/16, K/32, 4, 64), d, m (N/16, K/32, 16)."""
    N, K = q.shape
    T, B = N // TILE, K // BLOCK
    v = q.to(torch.uint8).view(T, TILE, B, 8, 4).permute(0, 2, 3, 1, 4)  # (T, B, chunk, row, 4)
    v = v.reshape(T, B, 4, 2, 64)  # chunk 2j in the low nibble, 2j + 1 in the high one
    w = (v[:, :, :, 0] | (v[:, :, :, 1] << 4)).contiguous()  # (T, B, 4, 64)
    tile = lambda t: t.float().reshape(T, TILE, B).permute(0, 2, 1).contiguous()  # noqa: E731
    return w, tile(d), tile(m)


def pack_int8(q: Tensor) -> tuple[Tensor, Tensor]:
    """int8 rows into the kernel's tiles: q (N, K) -> w (N/16, K/32, 8, 64) and the sum of each
    row's block (N/16, K/32, 16) int32 (the kernel's correction for its unsigned operand)."""
    N, K = q.shape
    T, B = N // TILE, K // BLOCK
    w = q.view(T, TILE, B, 8, 4).permute(0, 2, 3, 1, 4).contiguous()  # (T, B, chunk, row, 4)
    sums = q.view(N, B, BLOCK).sum(-1, dtype=torch.int32).view(T, TILE, B).permute(0, 2, 1).contiguous()
    return w, sums


def _int4_parts(layer: Int4Linear) -> tuple[Tensor, Tensor, Tensor]:
    """An Int4Linear's q (N, K) and its d, m (N, K/32): w = d·q + m, as its kernel computes."""
    block = packing_block()
    assert block is not None  # an Int4Linear exists only where it is known
    sz = layer.scales_zeros.float()  # (G, N, 2)
    d = sz[..., 0].T  # (N, G)
    return _unpack(layer.packed, block), d, sz[..., 1].T - 8 * d


class _Packed:
    """Rows of several layers stacked into one kernel weight (q/k/v; gate/up)."""

    def __init__(self, layers: Sequence[Any]) -> None:  # Int4Linear or Int8Linear, one kind
        kinds = {type(m) for m in layers}
        if kinds == {Int4Linear}:
            parts = [_int4_parts(m) for m in layers]
            q, d, m = (torch.cat(p) for p in zip(*parts, strict=True))
            self.fmt, tensors = 4, pack_int4(q, d, m)
        elif kinds == {Int8Linear}:
            w, sums = pack_int8(torch.cat([m.qweight for m in layers]))
            scale = torch.cat([m.scale for m in layers]).float().contiguous()
            self.fmt, tensors = 8, (w, scale, sums)
        else:
            raise ValueError(f"weights: expected int8 or int4 layers of one kind, got "
                             f"{sorted(k.__name__ for k in kinds)}")
        biases = [m.bias for m in layers]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [torch.zeros(m.out_features) if b is None else b.float()
             for m, b in zip(layers, biases, strict=True)])
        self.tensors = tensors
        self.N, self.K = sum(m.out_features for m in layers), layers[0].in_features

    def struct(self) -> QWeight:
        w, a, b = self.tensors
        return QWeight(self.fmt, self.N, self.K, w.data_ptr(), a.data_ptr(), b.data_ptr(),
                       None if self.bias is None else self.bias.data_ptr())


def _stacked(layers: Sequence[Any]) -> list[_Packed | None]:
    """One kernel weight for ``layers`` stacked by rows (one pass over x) and None for each of the
    others, or one each where their formats differ (a GGUF mixing int4 and int8 rows)."""
    if len({type(m) for m in layers}) == 1:
        return [_Packed(layers), *([None] * (len(layers) - 1))]
    return [_Packed([m]) for m in layers]


def _sources(model: nn.Module) -> list[Tensor]:
    """Every tensor the packed copy was made from or points into (to see a change)."""
    return [t for t in (*model.parameters(), *model.buffers()) if t is not None]


def _fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in _sources(model))


def _projections(block: Any) -> tuple[Any, ...]:
    """A LlamaBlock's q, k, v, o, gate, up, down projections."""
    a, mlp = block.attention, block.mlp
    return a.q_proj, a.k_proj, a.v_proj, a.out_proj, mlp.gate, mlp.up, mlp.down


def why_not(model: nn.Module) -> str | None:
    """Why ``model`` cannot decode through the kernel (None: it can)."""
    if type(model) is not Llama:
        return f"an attnlab Llama-family model is needed, got {type(model).__name__}"
    cfg = model.cfg
    quantized = (Int8Linear, Int4Linear)
    blocks: Any = model.layers
    for block in blocks:
        a, linears = block.attention, _projections(block)
        if not all(isinstance(m, quantized) for m in linears):
            return "every projection must be int8 or int4 (--weights int8|int4)"
        if any(m.out_features % TILE or m.in_features % BLOCK for m in linears):
            return f"projection shapes must be multiples of {TILE} rows and {BLOCK} inputs"
        if a.q_norm is not None or (a.scale is not None and a.scale != cfg.head_dim ** -0.5):
            return "attention with q/k norms or its own scale is not in the kernel"
    head = getattr(model, "unembed_int8", None)
    if not isinstance(head, Int8Linear) or cfg.vocab_size % TILE or cfg.hidden_size % BLOCK:
        return "the unembedding must be int8 rows (--weights int8|int4)"
    if cfg.num_heads % cfg.num_kv_heads or cfg.head_dim % 2:
        return "query heads must be a multiple of key/value heads, and the head dimension even"
    if any(t.device.type != "cpu" for t in _sources(model)):
        return "the kernel runs on the CPU"
    read = [model.token_embedding.weight, model.final_norm.weight]  # the kernel reads these in place
    read += [n.weight for b in blocks for n in (b.attention_norm, b.mlp_norm)]
    if any(t is None or t.dtype != torch.float32 for t in read):
        return "float32 embeddings and norm weights are needed"
    lib = decode_library()
    return lib if isinstance(lib, str) else None


class FastDecoder:
    """A Llama model's weights packed for the kernel; :meth:`step` decodes one token."""

    def __init__(self, model: Llama, lib: ctypes.CDLL | None = None) -> None:
        found = decode_library() if lib is None else lib
        if isinstance(found, str):
            raise ValueError(f"decode kernel: unavailable here: {found}")
        self.lib = found
        self._lock = threading.Lock()  # one scratch buffer: one step at a time
        self.model = model
        cfg = model.cfg
        self.fingerprint = _fingerprint(model)
        layers = []
        self._keep: list[object] = []  # everything the structures point into
        blocks: Any = model.layers
        for block in blocks:
            q, k, v, o, gate, up, down = _projections(block)
            proj = [*_stacked([q, k, v]), *_stacked([o]), *_stacked([gate, up]), *_stacked([down])]
            self._keep.append(proj)
            layers.append(LlamaLayer(block.attention_norm.weight.data_ptr(), block.mlp_norm.weight.data_ptr(),
                                     (QWeight * 7)(*(QWeight() if p is None else p.struct() for p in proj))))
        self.layers = (LlamaLayer * len(layers))(*layers)
        head = _Packed([cast(Int8Linear, model.unembed_int8)])
        self._keep.append(head)
        emb = model.token_embedding.weight
        if not emb.is_contiguous():
            raise ValueError("token_embedding: expected a contiguous (V, E) weight")
        self.struct = LlamaModel(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                 cfg.intermediate_size, cfg.num_layers, cfg.vocab_size, cfg.rms_norm_eps,
                                 cfg.head_dim ** -0.5, self.layers, emb.data_ptr(),
                                 model.final_norm.weight.data_ptr(), head.struct())
        self.ref = ctypes.byref(self.struct)
        self.max_positions = int(cfg.max_positions)
        self.scratch = torch.empty(int(found.llama_decode_scratch(self.ref, self.max_positions)))
        n = cfg.num_layers
        # per step: each layer's cache addresses and capacity (positions), set in place
        self._k, self._v = (ctypes.c_void_p * n)(), (ctypes.c_void_p * n)()
        self._caps = (ctypes.c_int64 * n)()
        self.vocab = int(cfg.vocab_size)

    def _rope_row(self, pos: int) -> tuple[int, int]:
        """Addresses of cos/sin (Dh,) at ``pos`` in the model's table (grown by the model)."""
        if self.model._rope is None or self.model._rope[0].shape[0] <= pos:
            self.model.rope(torch.tensor([pos]))
        assert self.model._rope is not None
        cos, sin = self.model._rope
        if not (cos.is_contiguous() and sin.is_contiguous() and cos.dtype == torch.float32):
            raise ValueError("rope: expected contiguous float32 cos/sin tables")
        row = pos * cos.stride(0) * 4
        return cos.data_ptr() + row, sin.data_ptr() + row

    def step(self, token: int, cache: Sequence[KVCache]) -> Tensor:
        """Logits (V,) of the token after ``token``, whose keys/values are appended to ``cache``."""
        pos = len(cache[0])
        if pos >= self.max_positions:
            raise ValueError(f"cache: expected fewer than {self.max_positions} positions, got {pos}")
        if not 0 <= token < self.vocab:
            raise ValueError(f"token: expected an id in [0, {self.vocab}), got {token}")
        for i, c in enumerate(cache):
            if len(c) != pos:
                raise ValueError(f"cache[{i}]: expected {pos} positions like cache[0], got {len(c)}")
            k, v = c.reserve(1)  # (1, Hkv, capacity, Dh) each
            if k.shape[0] != 1 or not (k.is_contiguous() and v.is_contiguous()) or k.dtype != torch.float32:
                raise ValueError(f"cache[{i}]: expected one sequence of contiguous float32 keys/values, "
                                 f"got {tuple(k.shape)} {k.dtype}")
            self._k[i], self._v[i], self._caps[i] = k.data_ptr(), v.data_ptr(), k.shape[2]
        cos, sin = self._rope_row(pos)
        logits = torch.empty(self.vocab)  # (V,)
        with self._lock:
            finite = self.lib.llama_decode_step(self.ref, token, pos, self._k, self._v, self._caps, cos, sin,
                                                logits.data_ptr(), self.scratch.data_ptr(),
                                                torch.get_num_threads())
        for c in cache:
            c.advance(1, bool(finite))
        return logits


_DECODERS: weakref.WeakKeyDictionary[nn.Module, FastDecoder] = weakref.WeakKeyDictionary()


def hooked(model: nn.Module) -> bool:
    """Does any hook listen on the model (any module's, or a global one)?"""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


def fast_decoder(model: nn.Module) -> FastDecoder | str:
    """The model's packed kernel weights (packed once, again after its weights change), or why
    the kernel cannot decode it now."""
    why = why_not(model)
    if why is None and model.training:
        why = "the model is in training mode"
    if why is None and hooked(model):
        why = "a hook is registered on the model (hooks see the PyTorch path only)"
    if why is not None:
        return why
    dec = _DECODERS.get(model)
    if dec is None or dec.fingerprint != _fingerprint(model):
        dec = _DECODERS[model] = FastDecoder(cast(Llama, model))
    return dec


DECODE_KERNELS = ("auto", "native", "torch")


def check_decode_kernel(value: object, name: str = "decode_kernel") -> str:
    if value not in DECODE_KERNELS:
        raise ValueError(f"{name}: expected one of {', '.join(DECODE_KERNELS)}, got {value!r}")
    return str(value)


def choose_decoder(model: nn.Module, kernel: str, blocker: str | None = None,
                   name: str = "decode_kernel") -> tuple[FastDecoder | None, str]:
    """The decoder a decode loop should use and why: ``kernel`` "torch" never uses the native
    one, "auto" where it can, "native" or an error saying why not. ``blocker``: the caller's own
    reason the PyTorch path is needed (a mask, a recorder)."""
    if check_decode_kernel(kernel, name) == "torch":
        return None, "torch (asked for)"
    why = blocker or fast_decoder(model)
    if isinstance(why, FastDecoder):
        return why, "native"
    if kernel == "native":
        raise ValueError(f"{name}: 'native' cannot decode this run: {why}; use 'auto' or 'torch'")
    return None, f"torch ({why})"
