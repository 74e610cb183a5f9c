"""Multi-head attention (Vaswani et al. 2017, §3.2.2), with GQA/MQA and a KV cache.

MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).
Inputs are batch-first: query (B, Lq, E), key (B, Lk, kdim), value (B, Lk, vdim).
``n_kv_heads < num_heads`` shares each K/V head across a group of query heads
(GQA, Ainslie et al. 2023; n_kv_heads = 1 is MQA, Shazeer 2019).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.backends.dispatch import attention
from attnlab.backends.nonfinite import values_finite
from attnlab.functional.attention import ScoreMod
from attnlab.functional.checks import expect_positive_int, expect_probability, expect_tensor
from attnlab.functional.masks import Mask
from attnlab.functional.positional import apply_rotary
from attnlab.modules.fused import fused_call
from attnlab.modules.hooks import HookPoint


@dataclass
class MultiHeadOutput:
    output: Tensor  # (B, Lq, E)
    weights: Tensor | None = None  # (B, H, Lq, Lk), per head, pre-dropout
    lse: Tensor | None = None  # (B, H, Lq)

    def __iter__(self):  # `out, weights = mha(x)` like nn.MultiheadAttention
        return iter((self.output, self.weights))


def _top_left_parts(mask: Mask) -> list[str]:
    """Names of the top-left aligned masks inside ``mask``, combinators included: in
    ``causal() & sliding_window(8)`` the causal part alone already hides the past."""
    p = mask.pattern
    found = [mask.name] if getattr(p, "align", None) == "top-left" else []
    if dataclasses.is_dataclass(p):
        for f in dataclasses.fields(p):  # And/Or hold masks a and b, Not holds a
            sub = getattr(p, f.name)
            if isinstance(sub, Mask):
                found += _top_left_parts(sub)
    return found


def _reads_new_queries_from_zero(mask: Mask, past: int, new: int, device: torch.device) -> bool:
    """Does ``mask`` give the new queries (positions past..past+new-1 of the sequence) other keys
    than the same rows of the whole sequence's mask? A top-left aligned part, a prefix-LM
    (causal from 0) or any mask that numbers the queries from 0 does: the past is then hidden."""
    total = past + new
    b = h = torch.zeros((), dtype=torch.long, device=device)
    kv = torch.arange(total, device=device).view(1, -1)  # (1, Lk)
    rows = torch.arange(new, device=device).view(-1, 1)  # (Lq, 1)
    try:
        as_given = mask.evaluate(b, h, rows, kv, new, total)  # (Lq, Lk), what attention will use
        whole = mask.evaluate(b, h, rows + past, kv, total, total)  # the same rows, in the full sequence
    except (IndexError, RuntimeError):  # a custom mask that cannot be asked about other rows
        return False
    return not bool(torch.equal(as_given.expand(new, total), whole.expand(new, total)))


@functools.lru_cache(maxsize=8)
def _hides_the_past(mask: Mask, past: int, new: int, device: torch.device) -> bool:
    # Every layer of a decode step asks the same question of the same mask: answered once per
    # step instead of evaluating the mask twice in every layer.
    return _reads_new_queries_from_zero(mask, past, new, device)


def _check_cache_mask(mask: object, past: int, new: int, device: torch.device) -> None:
    """With cached keys, queries are the newest positions: a top-left aligned mask would hide
    the past from them (query 0 would see key 0 only), silently. PyTorch's is_causal has the same
    trap; Hugging Face builds its masks from the cache position. Refused here."""
    if not (past and new and isinstance(mask, Mask)):
        return
    try:
        hides = _hides_the_past(mask, past, new, device)
    except (TypeError, RuntimeError):  # unhashable, or fields that do not compare (tensors)
        hides = _reads_new_queries_from_zero(mask, past, new, device)
    if not hides:
        return
    parts = _top_left_parts(mask)
    if parts:
        what = ("is aligned top-left" if parts == [mask.name]
                else f"has top-left aligned parts ({', '.join(parts)})")
        raise ValueError(
            f"mask: {mask.name} {what}, but {past} cached key(s) precede the {new} new "
            f"queries, so they would not see the past; use align='bottom-right' (e.g. "
            f"masks.causal(align='bottom-right'), masks.sliding_window(W, 0, align='bottom-right'))")
    raise ValueError(
        f"mask: {mask.name} numbers the {new} new queries from 0, but {past} cached key(s) precede "
        f"them, so the new queries would get other keys than in the whole sequence; pass a mask "
        f"aligned to the last key (e.g. masks.causal(align='bottom-right')) or a bool tensor "
        f"(Lq, Lk) for the new rows")


class KVCache:
    """Keys and values of the positions seen so far, per layer: (B, Hkv, L, Dh).

    Pass the same cache to successive calls for incremental decoding; each call appends its
    new keys/values. Use a bottom-right aligned causal mask (``causal("bottom-right")``) so
    the new queries see every cached key and the new ones up to themselves.

    Appending writes into room allocated ahead (a quarter more positions, at least
    :data:`MIN_ROOM`, each time it runs out: a decode of n tokens copies the cache O(log n)
    times, not at every step as ``torch.cat`` did; :meth:`holding` reserves a known length);
    ``k``/``v`` are views of the filled part. Views handed out earlier stay
    valid: only positions after them are ever written. Where an in-place write could break
    autograd (keys that require grad) or touch an inference tensor outside inference mode,
    appending concatenates instead. ``k``/``v`` may be assigned (a fork sharing another
    cache's tensors): the next append then copies them into room of its own.
    """

    MIN_ROOM = 16  # positions allocated at least when growing

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self._room: tuple[Tensor, Tensor] | None = None  # (B, Hkv, capacity, Dh) each
        self._views: tuple[Tensor, Tensor] | None = None  # what self.k, self.v were set to here
        self._finite: tuple[Tensor, bool] | None = None  # (a v, whether it holds no NaN/inf)

    @classmethod
    def holding(cls, k: Tensor, v: Tensor, room: int) -> KVCache:
        """A cache holding ``k``, ``v`` (B, Hkv, L, Dh) with room for ``room`` more positions
        allocated now (a batch that knows how long it decodes: no regrowth)."""
        c = cls()
        B, H, L, D = k.shape
        c._room = (k.new_empty(B, H, L + room, D), v.new_empty(B, H, L + room, v.shape[-1]))
        c._room[0][:, :, :L], c._room[1][:, :, :L] = k, v
        c.k, c.v = c._room[0].narrow(2, 0, L), c._room[1].narrow(2, 0, L)
        c._views = (c.k, c.v)
        c._finite = (c.v, values_finite(v))
        return c

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    @property
    def v_finite(self) -> bool | None:
        """Whether ``v`` holds no NaN/inf, from checking each value once as it was appended (so
        attention need not read the whole cache again at every step); None when unknown (``v``
        was assigned). Values changed in place afterwards are not seen."""
        f = self._finite
        return f[1] if f is not None and f[0] is self.v else None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys and values (B, Hkv, L_new, Dh); all of them so far: (B, Hkv, L, Dh)."""
        before = True if self.v is None else self.v_finite
        if before is None and self.v is not None:
            before = values_finite(self.v)
        finite = bool(before) and values_finite(v)  # only the new values are read
        k, v = self._append(k, v)
        self._finite = (v, finite)
        return k, v

    def _append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None or self.v is None:
            self.k, self.v = k, v
            self._room = self._views = None
            return k, v
        if k.shape[:2] != self.k.shape[:2] or k.shape[-1] != self.k.shape[-1]:
            raise ValueError(
                f"cache: expected new keys shaped (B, Hkv, *, Dh) = "
                f"({self.k.shape[0]}, {self.k.shape[1]}, *, {self.k.shape[-1]}), got {tuple(k.shape)}"
            )
        if not self._in_place_ok(k, v):
            self.k = torch.cat([self.k, k], dim=2)  # (B, Hkv, L_old + L_new, Dh)
            self.v = torch.cat([self.v, v], dim=2)
            self._room = self._views = None
            return self.k, self.v
        old, n = self.k.shape[2], self.k.shape[2] + k.shape[2]
        room = self._grow(n)
        # narrow, not [:, :, a:b]: the same views without Python's indexing machinery (per layer, per step)
        room[0].narrow(2, old, n - old).copy_(k)  # (B, Hkv, L_new, Dh) written in place
        room[1].narrow(2, old, n - old).copy_(v)
        self.k, self.v = room[0].narrow(2, 0, n), room[1].narrow(2, 0, n)  # (B, Hkv, L_old + L_new, Dh)
        self._views = (self.k, self.v)
        return self.k, self.v

    def _grow(self, n: int) -> tuple[Tensor, Tensor]:
        """Room for n positions holding k/v in its first positions (allocated when short)."""
        assert self.k is not None and self.v is not None
        room = self._room
        if room is None or not self._room_usable(room, n):
            # a quarter more: copies stay O(1) per position amortised (at most 5n in all), and the
            # first step after a 32k-token prompt reserves 40k positions per layer, not 64k
            cap = n + max(n // 4, self.MIN_ROOM)
            B, H, old, D = self.k.shape
            room = (self.k.new_empty(B, H, cap, D), self.v.new_empty(B, H, cap, self.v.shape[-1]))
            room[0][:, :, :old], room[1][:, :, :old] = self.k, self.v  # (B, Hkv, L_old, Dh)
            finite = self.v_finite
            self._room = room
            self.k, self.v = room[0].narrow(2, 0, old), room[1].narrow(2, 0, old)  # the same values
            self._views = (self.k, self.v)
            if finite is not None:
                self._finite = (self.v, finite)
        return room

    def reserve(self, n: int) -> tuple[Tensor, Tensor]:
        """Room for ``n`` more positions that the caller writes in place (a fused decode step):
        the (B, Hkv, capacity, Dh) buffers whose first ``len(self)`` positions are the cache;
        positions ``len(self)`` to ``len(self) + n - 1`` are the caller's to fill before
        :meth:`advance`. Only in inference mode or without autograd on the cache."""
        if self.k is None or self.v is None:
            raise ValueError("cache: expected keys and values already cached (run the prompt first), "
                             "got none")
        if torch.is_grad_enabled() and (self.k.requires_grad or self.v.requires_grad):
            raise ValueError("cache: expected a cache without autograd to write in place, got one that "
                             "requires grad (run under torch.inference_mode())")
        return self._grow(len(self) + n)

    def advance(self, n: int, finite: bool) -> None:
        """Take in the ``n`` positions written after :meth:`reserve`; ``finite``: whether the
        written values hold no NaN/inf."""
        room, old = self._room, len(self)
        if room is None or old + n > room[0].shape[2] or self._views is None or self._views[0] is not self.k:
            raise ValueError(f"cache: expected advance({n}) after reserve({n}), got a cache of {old} "
                             "positions without that room")
        before = self.v_finite
        if before is None:
            before = values_finite(self.v) if self.v is not None else True
        self.k, self.v = room[0].narrow(2, 0, old + n), room[1].narrow(2, 0, old + n)
        self._views = (self.k, self.v)
        self._finite = (self.v, bool(before) and finite)

    def _in_place_ok(self, k: Tensor, v: Tensor) -> bool:
        assert self.k is not None and self.v is not None
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k.requires_grad
                                        or self.v.requires_grad):
            return False  # a write into a tensor autograd saved would fail its backward
        # torch.cat promotes mixed dtypes; a write would cast silently
        return k.dtype == self.k.dtype and v.dtype == self.v.dtype and k.device == self.k.device

    def _room_usable(self, room: tuple[Tensor, Tensor], n: int) -> bool:
        """Does ``room`` hold n positions, and are k/v still the views written there (not
        tensors assigned since), writable in this mode?"""
        return (n <= room[0].shape[2] and self._views is not None and self._views[0] is self.k
                and self._views[1] is self.v
                and (torch.is_inference_mode_enabled() or not room[0].is_inference()))

    def reset(self) -> None:
        self.k = self.v = None
        self._room = self._views = self._finite = None


class MultiHeadAttention(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        n_kv_heads: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
        qk_norm: tuple[nn.Module, nn.Module] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        expect_positive_int("embed_dim", embed_dim)
        expect_positive_int("num_heads", num_heads)
        if n_kv_heads is None:
            n_kv_heads = num_heads
        expect_positive_int("n_kv_heads", n_kv_heads)
        if num_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads: expected a divisor of num_heads={num_heads}, got {n_kv_heads}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim: expected a multiple of num_heads={num_heads} (or pass head_dim), "
                    f"got {embed_dim}"
                )
            head_dim = embed_dim // num_heads
        expect_positive_int("head_dim", head_dim)
        self.embed_dim, self.num_heads, self.n_kv_heads, self.head_dim = (
            embed_dim, num_heads, n_kv_heads, head_dim)
        self.kdim = embed_dim if kdim is None else expect_positive_int("kdim", kdim)
        self.vdim = embed_dim if vdim is None else expect_positive_int("vdim", vdim)
        self.dropout = expect_probability("dropout", dropout)
        self.scale = scale  # None: 1/sqrt(Dh); Gemma's query_pre_attn_scalar sets its own
        # QK-norm (Dehghani et al. 2023; Gemma 3): a norm over Dh on each head's q and k, before RoPE.
        self.q_norm: nn.Module | None = None if qk_norm is None else qk_norm[0]
        self.k_norm: nn.Module | None = None if qk_norm is None else qk_norm[1]
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, device=device, dtype=dtype)
        self.k_proj = nn.Linear(self.kdim, n_kv_heads * head_dim, bias=bias, device=device, dtype=dtype)
        self.v_proj = nn.Linear(self.vdim, n_kv_heads * head_dim, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_z = HookPoint()  # per-head context (B, H, Lq, Dh): ablate/patch heads here
        # per-head weights (B, H, Lq, Lk), computed when need_weights or a hook listens here: read
        # them as they are computed (e.g. during generation) without keeping every layer's.
        self.hook_pattern = HookPoint()
        # pre-softmax scores (B, H, Lq, Lk), after scale and score_mod, before the mask; a hook
        # listening here runs the layer on the eager backend (the only one that forms them).
        self.hook_scores = HookPoint()

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, n, self.head_dim).transpose(1, 2)  # (B, L, n·Dh) -> (B, n, L, Dh)

    def project_kv(self, key: Tensor, value: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """K = key W^K, V = value W^V split into heads: (B, Hkv, Lk, Dh) each.

        For memory read many times: a decoder's cross-attention (Vaswani et al. §3.2.3) reads the
        same encoder output at every decoding step, so it projects it once and passes ``kv=``.
        """
        value = key if value is None else value
        for name, t, d in (("key", key, self.kdim), ("value", value, self.vdim)):
            expect_tensor(name, t, ndim=3, floating=True)
            if t.shape[-1] != d:
                raise ValueError(f"{name}: expected last dim {d}, got shape {tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key/value: expected (B, Lk, *) with equal B and Lk, "
                             f"got {tuple(key.shape)} and {tuple(value.shape)}")
        k = self.hook_k(self._heads(self.k_proj(key), self.n_kv_heads))  # (B, Hkv, Lk, Dh)
        v = self.hook_v(self._heads(self.v_proj(value), self.n_kv_heads))  # (B, Hkv, Lk, Dh)
        return k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: object = None,
        score_mod: ScoreMod | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
        backend: str = "auto",
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> MultiHeadOutput:
        """Self-attention when ``key`` is None; cross-attention otherwise (value defaults to key).

        ``rotary``: RoPE (Su et al. 2021) cos/sin tables of the new positions, (L, Dh) or
        (B, 1, L, Dh), applied to the projected q and k before k enters the cache (so cached
        keys are stored rotated, as Llama-family models do).
        ``kv``: keys and values already projected by :meth:`project_kv`, (B, Hkv, Lk, Dh) each,
        instead of ``key``/``value`` (cross-attention over a memory projected once).
        """
        if kv is not None:
            return self._attend_projected(query, kv, mask=mask, score_mod=score_mod,
                                          need_weights=need_weights, backend=backend,
                                          extra=(key, value, cache, rotary))
        key = query if key is None else key
        value = key if value is None else value
        for name, t, d in (("query", query, self.embed_dim), ("key", key, self.kdim),
                           ("value", value, self.vdim)):
            expect_tensor(name, t, ndim=3, floating=True)
            if t.shape[-1] != d:
                raise ValueError(f"{name}: expected last dim {d}, got shape {tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"key/value: expected (B, Lk, *) with B={query.shape[0]} and equal Lk, "
                f"got {tuple(key.shape)} and {tuple(value.shape)}"
            )
        H, Hkv, Dh = self.num_heads, self.n_kv_heads, self.head_dim
        # Self-attention without autograd: x [W^Q W^K W^V] in one matmul (modules/fused.py).
        qkv = None if key is not query or value is not query else \
            fused_call(self, "_qkv", (self.q_proj, self.k_proj, self.v_proj), query)  # (B, L, (H + 2·Hkv)·Dh)
        if qkv is not None and rotary is not None and self.q_norm is None:
            B, L, _ = qkv.shape
            qk = qkv[..., : (H + Hkv) * Dh].view(B, L, H + Hkv, Dh).transpose(1, 2)  # (B, H + Hkv, L, Dh)
            q, k = apply_rotary(qk, *rotary).split((H, Hkv), dim=1)  # one rotation for q's and k's heads
            v = qkv[..., (H + Hkv) * Dh :]  # (B, L, Hkv·Dh)
        else:
            if qkv is None:
                q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
            else:
                q, k, v = qkv.split((H * Dh, Hkv * Dh, Hkv * Dh), dim=-1)
            q, k = self._heads(q, H), self._heads(k, Hkv)  # (B, H, Lq, Dh), (B, Hkv, Lk, Dh)
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)  # over Dh, per head
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        # q and k as the scores see them (after QK-norm and RoPE)
        q, k = self.hook_q(q), self.hook_k(k)
        v = self.hook_v(self._heads(v, Hkv))  # (B, Hkv, Lk, Dh)
        if cache is not None:
            _check_cache_mask(mask, len(cache), q.shape[2], q.device)  # before the cache changes
            k, v = cache.update(k, v)  # (B, Hkv, L_past + Lk, Dh)
            return self._attend(q, k, v, mask, score_mod, need_weights, backend, cache.v_finite)
        return self._attend(q, k, v, mask, score_mod, need_weights, backend)

    def _attend_projected(self, query: Tensor, kv: tuple[Tensor, Tensor], *, mask: object,
                          score_mod: ScoreMod | None, need_weights: bool, backend: str,
                          extra: tuple[object, ...]) -> MultiHeadOutput:
        given = [n for n, x in zip(("key", "value", "cache", "rotary"), extra, strict=True)
                 if x is not None]
        if given:
            raise ValueError(f"kv: expected no key, value, cache or rotary alongside projected keys "
                             f"and values, got {', '.join(given)}")
        expect_tensor("query", query, ndim=3, floating=True)
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"query: expected last dim {self.embed_dim}, got shape {tuple(query.shape)}")
        k, v = kv
        want = (query.shape[0], self.n_kv_heads, self.head_dim)
        for name, t in (("kv[0]", k), ("kv[1]", v)):
            if not isinstance(t, Tensor) or t.ndim != 4 or (t.shape[0], t.shape[1], t.shape[3]) != want:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected (B, Hkv, Lk, Dh) with (B, Hkv, Dh) = {want} "
                                 f"(from project_kv), got {got}")
        q = self._heads(self.q_proj(query), self.num_heads)  # (B, H, Lq, Dh)
        if self.q_norm is not None:
            q = self.q_norm(q)
        return self._attend(self.hook_q(q), k, v, mask, score_mod, need_weights, backend)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: object, score_mod: ScoreMod | None,
                need_weights: bool, backend: str, v_finite: bool | None = None) -> MultiHeadOutput:
        """Attention over projected heads, then Concat(head_1..head_h) W^O (§3.2.2). ``v_finite``:
        True when ``v`` is known to hold no NaN/inf (a cache's check of each value as it came)."""
        if self.hook_scores.active:
            score_mod, backend = self._scores_through_hook(score_mod), "eager"
        weigh = need_weights or self.hook_pattern.active
        out = attention(q, k, v, mask=mask, score_mod=score_mod, scale=self.scale, dropout_p=self.dropout,
                        training=self.training, return_weights=weigh, backend=backend, v_finite=v_finite)
        weights = None if out.weights is None else self.hook_pattern(out.weights)  # (B, H, Lq, Lk)
        z = self.hook_z(out.context)  # (B, H, Lq, Dh)
        B, H, Lq, Dh = z.shape
        merged = z.transpose(1, 2).reshape(B, Lq, H * Dh)  # (B, Lq, H·Dh)
        return MultiHeadOutput(self.out_proj(merged), weights if need_weights else None, out.lse)

    def _scores_through_hook(self, score_mod: ScoreMod | None) -> ScoreMod:
        """The score_mod the eager backend calls once on the whole (B, H, Lq, Lk) scores, followed
        by ``hook_scores`` (which may replace them)."""

        def through(s: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            if score_mod is not None:
                s = score_mod(s, b, h, q, kv)
            return self.hook_scores(s)  # (B, H, Lq, Lk)

        return through

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of an ``nn.MultiheadAttention``; the result is batch-first and
        returns per-head weights (torch averages them unless ``average_attn_weights=False``)."""
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"m: expected nn.MultiheadAttention, got {type(m).__name__}")
        if m.bias_k is not None or m.add_zero_attn:
            raise ValueError(
                "m: add_bias_kv / add_zero_attn have no attnlab equivalent; got a module using them")
        w = m.in_proj_weight if m._qkv_same_embed_dim else None
        has_bias = m.in_proj_bias is not None
        p = next(m.parameters())
        new = cls(m.embed_dim, m.num_heads, kdim=m.kdim, vdim=m.vdim, bias=has_bias,
                  dropout=m.dropout, device=p.device, dtype=p.dtype)
        E = m.embed_dim
        with torch.no_grad():
            if w is not None:
                wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
            else:
                wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            new.q_proj.weight.copy_(wq)
            new.k_proj.weight.copy_(wk)
            new.v_proj.weight.copy_(wv)
            new.out_proj.weight.copy_(m.out_proj.weight)
            if has_bias:
                b = m.in_proj_bias
                new.q_proj.bias.copy_(b[:E])
                new.k_proj.bias.copy_(b[E:2 * E])
                new.v_proj.bias.copy_(b[2 * E:])
                new.out_proj.bias.copy_(m.out_proj.bias)
        new.train(m.training)
        return new
