"""A decode step of a quantized decoder LLM in one native call (issue 23).

``model(ids, cache=...)`` runs a decode step as ~190 small PyTorch operators per layer and the
Python that issues them: with int4 weights on SmolLM2-135M half the step's time
(``benchmarks/llm/decode_profile.py``). :class:`FastDecoder` hands the whole token to
``csrc/decode_step.cpp``: the embedding, every layer's norms, projections, RoPE, cache write,
attention and MLP, then the final norm and the unembedding, in one call, with the weights
repacked once into 16-row tiles the AVX-512 VNNI instructions read directly (:func:`pack_int4`,
:func:`pack_int8`). Llama-family models and Gemma 3 (norms around each sublayer, QK-norm,
GELU-tanh, sliding-window local layers) are described to the kernel by :func:`layout`.

What differs from ``model(...)``: the activations entering each projection are rounded to 16 bits
per block of 32 (1/32639 of the block's largest value) where torch's kernels round them to
bfloat16; the weights are exactly the model's (int8 rows with their float32 scales, which torch's int8
kernel takes rounded to bfloat16), and every other number is float32. The decode
loop uses it only where nothing can tell: an attnlab Llama or Gemma 3 whose projections are all
int8/int4, no hook anywhere on the model, no mask, score_mods or recorder, one sequence, a CPU,
and the kernel built (:mod:`attnlab.models.native_build`). :func:`fast_decoder` says why not
otherwise.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from attnlab.models.gemma3 import Gemma3
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


class Layer(ctypes.Structure):  # csrc/decode_step.cpp's Layer
    # projections q, k, v, o, gate, up, down; stacked ones leave the later ones empty (N = 0)
    _fields_ = [("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p),
                ("post_attn_norm", ctypes.c_void_p), ("post_mlp_norm", ctypes.c_void_p),
                ("q_norm", ctypes.c_void_p), ("k_norm", ctypes.c_void_p), ("scale", ctypes.c_float),
                ("window", ctypes.c_int32), ("proj", QWeight * 7)]


class Model(ctypes.Structure):  # csrc/decode_step.cpp's Model
    _fields_ = [("E", ctypes.c_int32), ("H", ctypes.c_int32), ("Hkv", ctypes.c_int32),
                ("Dh", ctypes.c_int32), ("I", ctypes.c_int32), ("n_layers", ctypes.c_int32),
                ("V", ctypes.c_int32), ("eps", ctypes.c_float), ("norm_offset", ctypes.c_float),
                ("act", ctypes.c_int32), ("embed_scale", ctypes.c_float), ("softcap", ctypes.c_float),
                ("layers", ctypes.POINTER(Layer)), ("embedding", ctypes.c_void_p),
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
            [torch.zeros(m.out_features, device="cpu") if b is None else b.float()
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
    """Address and version of every tensor: an in-place write or a new tensor changes it (an
    inference tensor has no version: its address alone; writes through ``.data`` go unseen, as
    for the fused stacks of modules/fused.py)."""
    return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in _sources(model))


def _projections(block: Any) -> tuple[Any, ...]:
    """A block's q, k, v, o, gate, up, down projections (Llama and Gemma 3 name them alike)."""
    a, mlp = block.attention, block.mlp
    return a.q_proj, a.k_proj, a.v_proj, a.out_proj, mlp.gate, mlp.up, mlp.down


GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")  # 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))


@dataclass(frozen=True)
class LayerLayout:
    norms: tuple[Any, ...]  # attention, mlp, post-attention, post-mlp, q, k: RMSNorm modules or None
    scale: float  # attention scale
    window: int  # keys a query sees, itself included; 0: all
    rope_base: float | None  # Gemma 3's per-layer RoPE base (its table key); None: Llama's one table


@dataclass(frozen=True)
class Layout:
    """What the kernel needs to know of a model beyond its weights."""

    layers: tuple[LayerLayout, ...]
    eps: float
    norm_offset: float  # RMSNorm's (w + offset)
    act: int  # 0 SiLU, 1 GELU-tanh
    embed_scale: float
    softcap: float  # 0: none


def layout(model: nn.Module) -> Layout | str:
    """The model described for the kernel, or why it cannot be."""
    m: Any = cast(Any, model)
    cfg = m.cfg
    if type(model) is Llama:
        act, embed_scale, softcap = 0, 1.0, 0.0
        windows: list[int | None] = [None] * cfg.num_layers
        bases: list[float | None] = [None] * cfg.num_layers
    elif type(model) is Gemma3:
        if cfg.hidden_act not in GELU_TANH:
            return f"the kernel's GeGLU is GELU-tanh, the model's activation is {cfg.hidden_act!r}"
        act, softcap = 1, float(cfg.final_logit_softcapping or 0.0)
        # sqrt(E) rounded to the embeddings' dtype, as Gemma3.embed does (a number: made on the CPU)
        embed_scale = float(torch.tensor(cfg.hidden_size ** 0.5, dtype=m.token_embedding.weight.dtype,
                                         device="cpu"))
        windows = [m.layer_window(i) for i in range(cfg.num_layers)]
        bases = [cfg.rope_local_theta if m.is_local(i) else cfg.rope_theta for i in range(cfg.num_layers)]
    else:
        return f"an attnlab Llama-family or Gemma 3 model is needed, got {type(model).__name__}"
    layers, norms_seen = [], [m.final_norm]
    for block, window, base in zip(m.layers, windows, bases, strict=True):
        a = block.attention
        norms = (block.attention_norm, block.mlp_norm, getattr(block, "post_attention_norm", None),
                 getattr(block, "post_mlp_norm", None), a.q_norm, a.k_norm)
        norms_seen += [n for n in norms if n is not None]
        layers.append(LayerLayout(norms, float(a.scale or cfg.head_dim ** -0.5), window or 0, base))
    eps = {n.eps for n in norms_seen}
    offsets = {float(getattr(n, "offset", 0.0)) for n in norms_seen}
    if len(eps) != 1 or len(offsets) != 1 or None in eps:
        return f"the kernel takes one RMSNorm epsilon and offset, the model has {sorted(map(str, eps))} " \
               f"and {sorted(offsets)}"
    if any(n.weight is None or n.weight.dtype != torch.float32 for n in norms_seen):
        return "float32 norm weights are needed"
    return Layout(tuple(layers), float(eps.pop()), offsets.pop(), act, embed_scale, softcap)


def why_not(model: nn.Module) -> str | None:
    """Why ``model`` cannot decode through the kernel (None: it can)."""
    if any(t.device.type != "cpu" for t in _sources(model)):  # first: a GPU model needs no int8 advice
        return "the kernel runs on the CPU, the model is not there"
    lay = layout(model)
    if isinstance(lay, str):
        return lay
    m: Any = cast(Any, model)
    cfg = m.cfg
    quantized = (Int8Linear, Int4Linear)
    for block in m.layers:
        linears = _projections(block)
        if not all(isinstance(x, quantized) for x in linears):
            return "every projection must be int8 or int4 (--weights int8|int4)"
        if any(x.out_features % TILE or x.in_features % BLOCK for x in linears):
            return f"projection shapes must be multiples of {TILE} rows and {BLOCK} inputs"
    head = getattr(model, "unembed_int8", None)
    if not isinstance(head, Int8Linear):
        return "the unembedding must be int8 rows (--weights int8|int4)"
    if cfg.vocab_size % TILE or cfg.hidden_size % BLOCK:
        return f"the vocabulary must be a multiple of {TILE} and the width of {BLOCK}"
    if cfg.num_heads % cfg.num_kv_heads or cfg.head_dim % 2:
        return "query heads must be a multiple of key/value heads, and the head dimension even"
    emb = m.token_embedding.weight
    if emb.dtype != torch.float32 or not emb.is_contiguous():
        return "a contiguous float32 embedding is needed"
    # the kernel sizes every buffer from the config: the modules must agree with it exactly
    E, I, V, Q, KV = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_heads * cfg.head_dim,
                      cfg.num_kv_heads * cfg.head_dim)
    want = ((Q, E), (KV, E), (KV, E), (E, Q), (I, E), (I, E), (E, I))
    for i, block in enumerate(m.layers):
        got = tuple((x.out_features, x.in_features) for x in _projections(block))
        if got != want:
            return f"layer {i}'s projections are shaped {got}, the config says {want}"
    if (head.out_features, head.in_features) != (V, E) or tuple(emb.shape) != (V, E):
        return f"the embedding and unembedding must be ({V}, {E}) as the config says"
    lib = decode_library()
    return lib if isinstance(lib, str) else None


def _ptr(norm: Any) -> int | None:
    return None if norm is None else norm.weight.data_ptr()


class FastDecoder:
    """A model's weights packed for the kernel; :meth:`step` decodes one token."""

    def __init__(self, model: nn.Module, lib: ctypes.CDLL | None = None) -> None:
        found = decode_library() if lib is None else lib
        if isinstance(found, str):
            raise ValueError(f"decode kernel: unavailable here: {found}")
        lay = layout(model)
        if isinstance(lay, str):
            raise ValueError(f"model: {lay}")
        self.lib, self.layout = found, lay
        self._lock = threading.Lock()  # one scratch buffer: one step at a time
        # a weak reference: the decoders cache (keyed weakly by the model) must not keep it alive
        self._model = weakref.ref(model)
        cfg = self.model.cfg
        self.fingerprint = _fingerprint(model)
        layers = []
        self._keep: list[object] = []  # everything the structures point into
        for block, ll in zip(self.model.layers, lay.layers, strict=True):
            q, k, v, o, gate, up, down = _projections(block)
            proj = [*_stacked([q, k, v]), *_stacked([o]), *_stacked([gate, up]), *_stacked([down])]
            self._keep.append(proj)
            layers.append(Layer(*(_ptr(n) for n in ll.norms), ll.scale, ll.window,
                                (QWeight * 7)(*(QWeight() if p is None else p.struct() for p in proj))))
        self.layers = (Layer * len(layers))(*layers)
        head = _Packed([self.model.unembed_int8])
        self._keep.append(head)
        emb = self.model.token_embedding.weight  # contiguous: why_not checked it
        self.struct = Model(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                            cfg.intermediate_size, cfg.num_layers, cfg.vocab_size, lay.eps, lay.norm_offset,
                            lay.act, lay.embed_scale, lay.softcap, self.layers, emb.data_ptr(),
                            self.model.final_norm.weight.data_ptr(), head.struct())
        self.ref = ctypes.byref(self.struct)
        self.max_positions = int(cfg.max_positions)
        # device="cpu" throughout: the kernel reads these addresses whatever torch's default device
        self.scratch = torch.empty(int(found.decode_scratch(self.ref, self.max_positions)), device="cpu")
        n = cfg.num_layers
        # per step, set in place: each layer's cache addresses and capacity, RoPE rows
        self._k, self._v = (ctypes.c_void_p * n)(), (ctypes.c_void_p * n)()
        self._caps = (ctypes.c_int64 * n)()
        self._cos, self._sin = (ctypes.c_void_p * n)(), (ctypes.c_void_p * n)()
        self.vocab = int(cfg.vocab_size)

    @property
    def model(self) -> Any:  # Llama or Gemma3: the attributes the layout checked
        m = self._model()
        if m is None:
            raise ValueError("model: the model this decoder was packed from is gone")
        return m

    def _table(self, base: float | None, pos: int) -> tuple[Tensor, Tensor]:
        """The model's cos/sin table (N, Dh) for ``base`` (None: Llama's one), grown past ``pos``."""
        m, at = self.model, torch.tensor([pos], device="cpu")
        if base is None:
            if m._rope is None or m._rope[0].shape[0] <= pos:
                m.rope(at)
            table = m._rope
        else:
            if base not in m._rope or m._rope[base][0].shape[0] <= pos:
                m.rope(at, base)
            table = m._rope[base]
        cos, sin = table
        if not (cos.is_contiguous() and sin.is_contiguous() and cos.dtype == torch.float32
                and cos.device.type == "cpu"):
            raise ValueError("rope: expected contiguous float32 cos/sin tables on the CPU")
        return cos, sin

    def step(self, token: int, cache: Sequence[KVCache]) -> Tensor:
        """Logits (V,) of the token after ``token``, whose keys/values are appended to ``cache``.
        One step at a time per decoder (the pointer arrays and the scratch buffer are shared)."""
        n_layers = len(self.layers)
        if len(cache) != n_layers:
            raise ValueError(f"cache: expected {n_layers} KVCache (one per layer), got {len(cache)}")
        pos = len(cache[0])
        if pos >= self.max_positions:
            raise ValueError(f"cache: expected fewer than {self.max_positions} positions, got {pos}")
        if not 0 <= token < self.vocab:
            raise ValueError(f"token: expected an id in [0, {self.vocab}), got {token}")
        with self._lock:  # ctypes lets go of the GIL during the call: nothing shared may change
            for i, c in enumerate(cache):
                if len(c) != pos:
                    raise ValueError(f"cache[{i}]: expected {pos} positions like cache[0], got {len(c)}")
                k, v = c.reserve(1)  # (1, Hkv, capacity, Dh) each
                dense = k.is_contiguous() and v.is_contiguous()
                if k.shape[0] != 1 or not dense or k.dtype != torch.float32 or v.dtype != torch.float32:
                    raise ValueError(f"cache[{i}]: expected one sequence of contiguous float32 keys/values, "
                                     f"got {tuple(k.shape)} {k.dtype}")
                self._k[i], self._v[i], self._caps[i] = k.data_ptr(), v.data_ptr(), k.shape[2]
            tables = {b: self._table(b, pos) for b in {ll.rope_base for ll in self.layout.layers}}
            for i, ll in enumerate(self.layout.layers):
                cos, sin = tables[ll.rope_base]
                self._cos[i], self._sin[i] = cos[pos].data_ptr(), sin[pos].data_ptr()
            logits = torch.empty(self.vocab, device="cpu")  # (V,)
            finite = self.lib.decode_step(self.ref, token, pos, self._k, self._v, self._caps, self._cos,
                                          self._sin, logits.data_ptr(), self.scratch.data_ptr(),
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


def blocked(model: nn.Module) -> str | None:
    """Why the kernel cannot decode ``model`` now (None: it can); packs nothing."""
    why = why_not(model)
    if why is None and any(m.training for m in model.modules()):
        why = "the model is in training mode"
    if why is None and hooked(model):
        why = "a hook is registered on the model (hooks see the PyTorch path only)"
    return why


def fast_decoder(model: nn.Module) -> FastDecoder | str:
    """The model's packed kernel weights (packed once, again after its weights change), or why
    the kernel cannot decode it now."""
    why = blocked(model)
    if why is not None:
        return why
    dec = _DECODERS.get(model)
    if dec is None or dec.fingerprint != _fingerprint(model) or dec.layout != layout(model):
        dec = _DECODERS[model] = FastDecoder(model)  # new, new weights, or a changed config
    return dec


DECODE_KERNELS = ("auto", "native", "torch")


def check_decode_kernel(value: object, name: str = "decode_kernel") -> str:
    if value not in DECODE_KERNELS:
        raise ValueError(f"{name}: expected one of {', '.join(DECODE_KERNELS)}, got {value!r}")
    return str(value)


def choose_decoder(model: nn.Module, kernel: str, blocker: str | None = None,
                   name: str = "decode_kernel", *, pack: bool = True) -> tuple[FastDecoder | None, str]:
    """The decoder a decode loop should use and why: ``kernel`` "torch" never uses the native
    one, "auto" where it can, "native" or an error saying why not. ``blocker``: the caller's own
    reason the PyTorch path is needed (a mask, a recorder). ``pack=False`` decides without packing
    the weights: (None, "native") where the kernel will decode (a loop packs after its prefill,
    whose fused stacks move the layers' buffers and would make a packed copy stale)."""
    if check_decode_kernel(kernel, name) == "torch":
        return None, "torch (asked for)"
    why = blocker or (fast_decoder(model) if pack else blocked(model))
    if why is None or isinstance(why, FastDecoder):
        return (why or None), "native"
    if kernel == "native":
        raise ValueError(f"{name}: 'native' cannot decode this run: {why}; use 'auto' or 'torch'")
    return None, f"torch ({why})"
