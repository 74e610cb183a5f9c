"""Every rank must make the same call: one gather of each rank's call signature, before any
other message, and the same error on every rank when they differ.

Ranks that disagree on anything the exchanges depend on do not fail cleanly by themselves:
different dtypes make gloo abort the process (a size check inside its transport), a different
``layout`` or ``mode`` sends the ranks into different collectives that wait for each other
until the process group's timeout (30 minutes by default), and different masks, score_mods or
scales give silently wrong rows. So each rank first describes its call (shapes, dtypes, layout,
mode, scale, fingerprints of the mask and score_mod, or the error its own checks raised) in a
fixed-size buffer, all ranks gather the buffers (waiting at most ``timeout``), and every rank
raises the same error when they differ.

The fingerprints evaluate the mask and score_mod at a fixed sample of global positions (the
diagonal band, where windows differ, and pseudo-random pairs): two different functions that
agree on every sampled position pass unnoticed — a check, not a proof.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnlab.functional.masks import Mask

SIGNATURE_BYTES = 2048  # one rank's description, JSON, zero-padded
_ERROR_CHARS = 600  # a local error travels to the other ranks cut to this length
_BAND = 64  # keys q - 63 .. q around each sampled row: the diagonal band, where windows differ
_ROWS = 32  # sampled rows for the band
_PAIRS = 4096  # pseudo-random (b, h, q, kv) pairs anywhere


def sample_positions(batch: int, heads: int, q_total: int, kv_total: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(N,) index tensors b, h, q, kv in global positions, the same on every rank."""
    g = torch.Generator().manual_seed(20240101)
    rows = torch.randint(0, q_total, (_ROWS,), generator=g)
    band_q = rows.repeat_interleave(_BAND)
    band_kv = (band_q - torch.arange(_BAND).repeat(_ROWS)).clamp(0, kv_total - 1)
    q = torch.cat([band_q, torch.randint(0, q_total, (_PAIRS,), generator=g)])
    kv = torch.cat([band_kv, torch.randint(0, kv_total, (_PAIRS,), generator=g)])
    b = torch.randint(0, batch, (q.numel(),), generator=g)
    h = torch.randint(0, heads, (q.numel(),), generator=g)
    return b, h, q, kv


def _digest(x: Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def mask_fingerprint(mask: Mask | None, sample: tuple[Tensor, Tensor, Tensor, Tensor],
                     q_total: int, kv_total: int) -> str:
    if mask is None:
        return "none"
    b, h, q, kv = sample
    got = mask.evaluate(b, h, q, kv, q_total, kv_total)
    return _digest(torch.as_tensor(got).to(torch.bool).expand(q.shape))


def score_mod_fingerprint(score_mod: Callable[..., Tensor] | None,
                          sample: tuple[Tensor, Tensor, Tensor, Tensor]) -> str:
    if score_mod is None:
        return "none"
    b, h, q, kv = sample
    s = torch.linspace(-3.0, 3.0, q.numel(), dtype=torch.float64)
    with torch.no_grad():
        got = torch.as_tensor(score_mod(s, b, h, q, kv)).to(torch.float64).expand(q.shape)
    return _digest(got.to(torch.float32))  # float32: bit noise of float64 math is not a difference


def _encode(sig: dict[str, Any]) -> Tensor:
    raw = json.dumps(sig, sort_keys=True).encode()
    if len(raw) > SIGNATURE_BYTES:  # only an error message can be long: it was cut already
        raw = raw[:SIGNATURE_BYTES]
    buf = torch.zeros(SIGNATURE_BYTES, dtype=torch.uint8)
    buf[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return buf


def _decode(buf: Tensor) -> dict[str, Any]:
    raw = bytes(buf.tolist()).rstrip(b"\0")
    try:
        out: dict[str, Any] = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        out = {"error": "its call description was unreadable (a different attnlab version?)"}
    return out


def wait_all(works: list[Any], timeout: timedelta, what: str) -> None:
    """Wait for ``works`` at most ``timeout``; a peer that never answers is an error, not a hang."""
    for w in works:
        try:
            w.wait(timeout=timeout)
        except RuntimeError as e:
            if "timed out" not in str(e).lower():
                raise
            raise TimeoutError(
                f"ring_attention: {what}: no answer from the other ranks within "
                f"{timeout.total_seconds():g} s (timeout=); did every rank call ring_attention "
                f"with the same arguments?") from e


def agree(signature: dict[str, Any], local_error: BaseException | None, group: Any, rank: int,
          world: int, timeout: timedelta) -> None:
    """Gather every rank's ``signature`` (or its local error) and raise the same error on every
    rank unless all are equal. The rank whose own checks failed re-raises its own error."""
    mine = dict(signature)
    if local_error is not None:
        mine = {"error": f"{type(local_error).__name__}: {local_error}"[:_ERROR_CHARS]}
    buf = _encode(mine)
    got = [torch.empty_like(buf) for _ in range(world)]
    wait_all([dist.all_gather(got, buf, group=group, async_op=True)], timeout,
             "comparing the ranks' arguments")
    sigs = [_decode(g) for g in got]
    if local_error is not None:
        raise local_error
    failed = [(r, s["error"]) for r, s in enumerate(sigs) if "error" in s]
    if failed:
        r, msg = failed[0]
        raise ValueError(f"ring_attention: rank {r} refused its arguments ({msg}); every rank "
                         f"must make the same call")
    for key in ORDER:
        values = [s.get(key) for s in sigs]
        if any(v != values[0] for v in values):
            desc = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            what = "shards of the same shape" if key == "shapes" else f"the same {key}"
            raise ValueError(f"{_NAMES.get(key, key)}: expected {what} on every rank, got {desc}")


ORDER = ("shapes", "dtypes", "layout", "mode", "scale", "mask", "score_mod")
_NAMES = {"shapes": "q/k/v", "dtypes": "q/k/v dtype", "mask": "mask (fingerprint)",
          "score_mod": "score_mod (fingerprint)"}
