"""Attention sinks and the global/local trade-off on a real LLM (StreamingLLM).

Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks" (§3, Fig. 1,
Table 1): a pretrained decoder parks much of its attention on the first tokens whatever they
say. Evicting them from a sliding window breaks the model (window-only perplexity explodes once
the first token leaves the window); keeping K = 4 "sink" tokens next to the window repairs it.

One teacher-forced forward pass per configuration over the whole text (N tokens), each a
mask_mod on the ``tiled`` backend (the model ANDs it with its causal mask; on a GPU, where tiled
does not run, ``auto``: SDPA with the mask materialised):

- ``full``             query i sees keys 0..i;
- ``window W``         ``sliding_window(W - 1, 0)``: the W most recent keys i-W+1..i, the query's
                       own token included (W = keys per query);
- ``window W + K``     the window plus the first K positions (sinks), i.e. ``longformer(W - 1,
                       range(K))`` under the causal mask (its symmetric global rows only add
                       keys j <= i < K, already sinks): block map = [first key block | window
                       band], so the tiled backend skips every other tile;
- ``recompute W``      (``recompute=M``) the sliding window with re-computation baseline (Table 1,
                       Fig. 3 b): each of the last M tokens predicted by a fresh forward over the
                       W tokens before it (positions 0..W-1), so only those M tokens are scored.

Token t is predicted by query t-1; "beyond the window" means queries i >= W, the first whose
window no longer holds position 0 (where StreamingLLM's window attention fails); for full
attention W is the largest window asked for.

Positions stay absolute (0..N-1), unlike StreamingLLM's cache-relative positions: RoPE scores
depend only on the distance i - j, so a window over absolute positions sees the same relative
offsets as a re-numbered cache except for the sinks, which sit at their true (larger) distance
instead of just before the window.

The sink profile is the share of attention on the first token per layer (mean over heads and
query positions 1.., position 0 trivially attends only to itself), read from each layer's
the ``attn.pattern`` hook points with eager attention, one layer's (B, H, L, L) weights alive at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.arguments import expect_int, expect_nonneg_int
from attnlab.functional.masks import Mask, longformer, sliding_window
from attnlab.models.contract import CausalLM, as_causal_lm
from attnlab.models.loading import LoadedModel

DEFAULT_TOKENS = 2048
DEFAULT_WINDOWS = (256,)
DEFAULT_SINKS = (0, 1, 4)
# CPython's reference-manual chapters shipped in the stdlib (pydoc_data.topics): long English
# prose offline on every install. Sections chosen without overlaps (no chapter inside another).
DEFAULT_SECTIONS = ("execmodel", "import", "assignment", "compound", "customization", "typesseq")
PROFILE_TOKENS = 2048  # the sink profile's eager weights are H·L² per layer: cap L
CHUNK = 512  # positions per logits chunk (V = 49152 for SmolLM2, 262144 for Gemma 3)


def default_text() -> str:
    """The default long text: fixed sections of ``pydoc_data.topics`` (every section if a
    Python version lacks some)."""
    from pydoc_data.topics import topics

    keys = [k for k in DEFAULT_SECTIONS if k in topics] or sorted(topics)
    return "\n\n".join(topics[k] for k in keys)


def streaming_mask(window: int, sinks: int = 0, n_tokens: int | None = None) -> Mask:
    """The mask_mod of ``window W (+ K sinks)``, to be ANDed with the causal mask: the W keys
    i-W+1..i plus keys 0..K-1. ``n_tokens`` clips the sinks to the sequence (K >= N is full)."""
    expect_int("window", window, 1, expected="an int >= 1 (keys per query)")
    expect_nonneg_int("sinks", sinks)
    if sinks == 0:
        return sliding_window(window - 1, 0)
    k = sinks if n_tokens is None else min(sinks, n_tokens)
    return longformer(window - 1, list(range(k)))


def keys_per_query(n_tokens: int, window: int | None, sinks: int = 0) -> Tensor:
    """Keys each query i = 0..N-1 sees: i + 1 (full) or min(i+1, W) + sinks outside the window."""
    i = torch.arange(n_tokens, device="cpu")  # (N,)
    if window is None:
        return i + 1
    outside = (i + 1 - window).clamp(min=0).clamp(max=sinks)  # sinks j < i-W+1
    return (i + 1).clamp(max=window) + outside


@dataclass(frozen=True)
class StreamingRow:
    """One configuration. NLLs are in nats; ``ppl = exp(nll)``; None where nothing was scored."""

    name: str
    window: int | None  # None = full attention
    sinks: int
    recompute: bool
    keys_max: int
    keys_mean: float  # over the scored queries
    nll: float | None  # all scored tokens (None for recompute: only the last M are scored)
    nll_beyond: float | None  # queries i >= W
    nll_last: float | None  # the last M tokens (with recompute=M)
    seconds: float
    nll_tokens: Tensor = field(repr=False)  # (N-1,) per target token 1..N-1 (nan where unscored)

    @staticmethod
    def _ppl(x: float | None) -> float | None:
        return None if x is None else math.exp(x)

    @property
    def ppl(self) -> float | None:
        return self._ppl(self.nll)

    @property
    def ppl_beyond(self) -> float | None:
        return self._ppl(self.nll_beyond)

    @property
    def ppl_last(self) -> float | None:
        return self._ppl(self.nll_last)

    def to_dict(self) -> dict[str, Any]:
        r = lambda x: None if x is None else round(x, 4)  # noqa: E731
        return {"name": self.name, "window": self.window, "sinks": self.sinks,
                "recompute": self.recompute, "keys_max": self.keys_max,
                "keys_mean": round(self.keys_mean, 2), "nll": r(self.nll), "ppl": r(self.ppl),
                "nll_beyond": r(self.nll_beyond), "ppl_beyond": r(self.ppl_beyond),
                "nll_last": r(self.nll_last), "ppl_last": r(self.ppl_last),
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class StreamingResult:
    n_tokens: int
    windows: tuple[int, ...]
    sinks: tuple[int, ...]
    recompute: int
    backend: str
    rows: tuple[StreamingRow, ...]
    sink_profile: tuple[float, ...]  # per layer: share of attention on token 0
    sink_profile_k: tuple[float, ...]  # per layer: share on tokens 0..profile_k-1
    profile_k: int
    profile_tokens: int  # the profile's text length (first tokens of the text)
    profile_seconds: float
    text_start: str

    def row(self, name: str) -> StreamingRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"name: expected one of {[r.name for r in self.rows]}, got {name!r}")

    def to_dict(self, per_token: bool = False) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = r.to_dict()
            if per_token:
                d["nll_tokens"] = [None if math.isnan(x) else round(x, 4) for x in r.nll_tokens.tolist()]
            rows.append(d)
        return {"n_tokens": self.n_tokens, "windows": list(self.windows), "sinks": list(self.sinks),
                "recompute": self.recompute, "backend": self.backend, "rows": rows,
                "sink_profile": {"first_token": [round(x, 4) for x in self.sink_profile],
                                 f"first_{self.profile_k}": [round(x, 4) for x in self.sink_profile_k],
                                 "tokens": self.profile_tokens,
                                 "seconds": round(self.profile_seconds, 3)},
                "text_start": self.text_start}


def text_ids(lm: LoadedModel, source: str | Sequence[int] | Tensor, tokens: int | None) -> Tensor:
    """The first ``tokens`` ids of ``source`` (N,), on the model's device."""
    if isinstance(source, str):
        ids = torch.tensor(lm.tokenizer.piece_ids(source), dtype=torch.long, device=lm.device)
    elif isinstance(source, Tensor):
        ids = source.to(lm.device, torch.long)
    else:
        ids = torch.tensor(list(source), dtype=torch.long, device=lm.device)
    ids = ids.flatten()  # (N,)
    if tokens is not None:
        expect_int("tokens", tokens, 2)
        ids = ids[:tokens]
    if ids.numel() < 2:
        raise ValueError(f"text: expected at least 2 tokens (one to predict), got {ids.numel()}")
    limit = lm.max_tokens
    if ids.numel() > limit:
        raise ValueError(f"tokens: expected at most {limit} (the model's context), got {ids.numel()}")
    return ids


def token_nll(model: CausalLM, ids: Tensor, **kw: Any) -> Tensor:
    """Per-target NLL (B, L-1) of a teacher-forced pass; logits in chunks (never (L, V) at once)."""
    out = model(ids, logits_to_keep=1, **kw)
    h = out.hidden_states[-1]  # (B, L, E) final-norm output
    parts = []
    for c in range(0, ids.shape[1] - 1, CHUNK):
        logits = model.unembed(h[:, c: c + CHUNK][:, : ids.shape[1] - 1 - c]).float()  # (B, C, V)
        tgt = ids[:, c + 1: c + 1 + logits.shape[1]]  # (B, C)
        parts.append(F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none"))  # (B, C)
    return torch.cat(parts, dim=1)  # (B, L-1)


def _mean(x: Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def default_backend(model: CausalLM) -> str:
    """"tiled" on the CPU (its block map skips a window's empty tiles), "auto" elsewhere (tiled
    is CPU-only; auto gives those calls to SDPA)."""
    return "tiled" if model.device.type == "cpu" else "auto"


def recompute_nll(model: CausalLM, ids: Tensor, window: int, last: int, *, backend: str | None = None,
                  batch: int = 16) -> Tensor:
    """Sliding window with re-computation: NLL (last,) of tokens N-last..N-1, token t predicted
    from a fresh forward over ids[t-W:t] at positions 0..W-1."""
    n = ids.numel()
    backend = default_backend(model) if backend is None else backend
    ts = torch.arange(n - last, n, device=ids.device)  # (M,) targets
    ctx = ts.view(-1, 1) - window + torch.arange(window, device=ids.device)  # (M, W) context positions
    out = []
    for c in range(0, last, batch):
        x = ids[ctx[c: c + batch]]  # (b, W)
        h = model(x, backend=backend, logits_to_keep=1).last_hidden_state[:, -1]  # (b, E)
        logits = model.unembed(h).float()  # (b, V)
        out.append(F.cross_entropy(logits, ids[ts[c: c + batch]], reduction="none"))  # (b,)
    return torch.cat(out)


def sink_profile(model: CausalLM, ids: Tensor, k: int = 1) -> tuple[list[float], list[float]]:
    """Per layer: mean share of attention (over heads and queries 1..L-1) on token 0 and on
    tokens 0..k-1, under full causal attention (eager weights via the attn.pattern hooks)."""
    first: list[float] = []
    first_k: list[float] = []

    def hook(w: Tensor, _hook: object) -> None:  # w (B, H, L, L)
        rows = w[0, :, 1:] if w.shape[2] > 1 else w[0]  # (H, L-1, L)
        first.append(float(rows[..., 0].double().mean()))
        first_k.append(float(rows[..., :k].double().sum(-1).mean()))

    with model.hooks([(model.hook_name(i, "attn.pattern"), hook) for i in range(model.num_layers)]):
        # (T,) -> (1, T): one sequence
        model(ids.view(1, -1), keep_weights=False, backend="eager", logits_to_keep=1)
    return first, first_k


def _check_ints(name: str, values: Sequence[int], lo: int) -> tuple[int, ...]:
    vals = tuple(values)
    for v in vals or (None,):  # none at all is refused too (None is no int)
        expect_int(name, v, lo, expected=f"one or more ints >= {lo}", got=list(vals))
    return tuple(dict.fromkeys(vals))


@torch.no_grad()
def streaming_experiment(lm: LoadedModel, source: str | Sequence[int] | Tensor | None = None, *,
                         tokens: int | None = DEFAULT_TOKENS, windows: Sequence[int] = DEFAULT_WINDOWS,
                         sinks: Sequence[int] = DEFAULT_SINKS, recompute: int = 0,
                         backend: str | None = None, profile: bool = True) -> StreamingResult:
    """Perplexity under full / window W / window W + K sinks attention (StreamingLLM, Xiao et
    al. 2023), one teacher-forced pass each over the first ``tokens`` tokens of ``source`` (text
    or ids; default :func:`default_text`), plus the per-layer sink profile and, with
    ``recompute=M``, the sliding-window-with-re-computation baseline on the last M tokens.
    ``backend`` None: :func:`default_backend` (tiled on the CPU). Per-token NLLs are kept on the CPU."""
    model = as_causal_lm(lm.model, "model")
    backend = default_backend(model) if backend is None else backend
    wins = _check_ints("windows", windows, 1)
    ks = _check_ints("sinks", sinks, 0)
    if max(ks) >= min(wins):
        raise ValueError(f"sinks: expected each K < window ({min(wins)}), got {list(ks)}")
    ids = text_ids(lm, default_text() if source is None else source, tokens)  # (N,)
    n = ids.numel()
    expect_nonneg_int("recompute", recompute)
    if recompute and recompute > n - max(wins):
        raise ValueError(f"recompute: expected at most N - window = {n - max(wins)} tokens (each needs "
                         f"a full window before it), got {recompute}")
    x = ids.view(1, -1)  # (1, N)
    model(x[:, :8], backend=backend, logits_to_keep=1)  # warm-up: rope tables, first-call costs
    q = torch.arange(n - 1, device="cpu")  # (N-1,) query of each target

    def row(name: str, w: int | None, k: int, nll: Tensor, secs: float, rec: bool = False) -> StreamingRow:
        keys = keys_per_query(n, w, k)[:-1]  # (N-1,) keys of the scoring queries
        scored = ~nll.isnan()
        beyond = scored & (q >= (w if w is not None else max(wins)))
        last = nll[n - 1 - recompute:] if recompute else nll[:0]
        return StreamingRow(name, w, k, rec, int(keys.max()), float(keys[scored].double().mean()),
                            None if rec else _mean(nll), None if rec else _mean(nll[beyond]),
                            _mean(last), secs, nll)

    rows = []
    configs: list[tuple[str, int | None, int]] = [("full", None, 0)]
    configs += [(f"window {w}" + (f" + {k} sinks" if k else ""), w, k) for w in wins for k in ks]
    for name, w, k in configs:
        mask = None if w is None else streaming_mask(w, k, n)
        t0 = time.perf_counter()
        nll = token_nll(model, x, mask=mask, backend=backend)[0].cpu()  # (N-1,)
        rows.append(row(name, w, k, nll, time.perf_counter() - t0))
    if recompute:
        for w in wins:
            t0 = time.perf_counter()
            part = recompute_nll(model, ids, w, recompute, backend=backend).cpu()  # (M,)
            at = torch.arange(n - 1 - recompute, n - 1, device="cpu")  # (M,) their targets
            nll = torch.full((n - 1,), math.nan, device="cpu").index_copy_(0, at, part)  # (N-1,)
            rows.append(row(f"recompute {w}", w, 0, nll, time.perf_counter() - t0, rec=True))
    first: list[float] = []
    first_k: list[float] = []
    pk, p_secs, p_n = max(1, max(ks)), 0.0, min(n, PROFILE_TOKENS)
    if profile:
        t0 = time.perf_counter()
        first, first_k = sink_profile(model, ids[:p_n], pk)
        p_secs = time.perf_counter() - t0
    text = lm.tokenizer.decode(ids[:24].tolist())
    return StreamingResult(n, wins, ks, recompute, backend, tuple(rows), tuple(first), tuple(first_k),
                           pk, p_n if profile else 0, p_secs, text)


def _smooth(y: Any, width: int) -> Any:
    """Centred moving mean ignoring nan (unscored tokens): numpy (N,) in and out."""
    import numpy as np

    ok = ~np.isnan(y)
    w = max(1, min(width, len(y)))
    s = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])  # (N+1,) prefix sums
    c = np.concatenate([[0], np.cumsum(ok)])  # (N+1,) prefix counts
    lo = np.clip(np.arange(len(y)) - w // 2, 0, len(y))
    hi = np.clip(lo + w, 0, len(y))
    return np.where(ok, (s[hi] - s[lo]) / np.maximum(c[hi] - c[lo], 1), np.nan)


def streaming_png(res: StreamingResult, path: str | Path, *, smooth: int = 64) -> Path:
    """Per-position smoothed NLL of each configuration (dashed line: the first window edge) and
    the sink profile (share of attention on token 0 per layer)."""
    from attnlab.viz.figure import check_path, new_figure, save_figure

    p = check_path(path, "png")
    fig = new_figure(11, 4.2)
    grid = fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, :2])
    pos = torch.arange(1, res.n_tokens).numpy()
    for r in res.rows:
        y = _smooth(r.nll_tokens.double().numpy(), smooth)
        ppl = r.ppl_last if r.recompute else r.ppl
        ax.plot(pos, y, lw=1.8 if r.recompute else 1.0, label=f"{r.name} (ppl {ppl:.1f})")
    for w in res.windows:
        ax.axvline(w + 1, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="token position", ylabel=f"NLL (nats, moving mean of {smooth})",
           title="StreamingLLM: window vs window + sinks")
    ax.legend(fontsize=7)
    bx = fig.add_subplot(grid[0, 2])
    if res.sink_profile:
        bx.bar(range(len(res.sink_profile)), res.sink_profile, color="tab:red")
        bx.set_ylim(0, 1)
    bx.set(xlabel="layer", ylabel="attention on token 0", title="sink profile (full attention)")
    return save_figure(fig, p)
