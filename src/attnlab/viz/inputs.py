"""Array and label checks shared by every view: errors name the argument, expected and given.

Inputs are array-likes. torch tensors are accepted by duck typing (``detach``/``cpu``/``numpy``)
so that this package never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from attnlab.viz.safety import printable


def to_numpy(name: str, x: Any) -> np.ndarray:
    """``np.asarray`` that also takes tensors that need grad, live on a device or are bfloat16."""
    if hasattr(x, "detach") and callable(x.detach):
        x = x.detach()
        if hasattr(x, "cpu"):
            x = x.cpu()
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float8_e4m3fn"):
            x = x.float()  # numpy has no bfloat16
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected an array-like, got {type(x).__name__} ({exc})") from exc


def as_weights(name: str, x: Any, ndim: int | tuple[int, ...] = 2,
               *, nonnegative: bool = False) -> np.ndarray:
    """A finite float64 array with ``ndim`` dimensions (one of them when a tuple)."""
    arr = to_numpy(name, x)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name}: expected a {want} array, got {arr.ndim}-D shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/inf "
            f"(first at index {first}: {arr[first]})"
        )
    if nonnegative and (arr < -1e-9).any():
        first = tuple(int(i) for i in np.argwhere(arr < -1e-9)[0])
        raise ValueError(
            f"{name}: expected attention weights >= 0, got {arr[first]} at index {first}"
        )
    return arr


def as_stack(name: str, x: Any) -> np.ndarray:
    """Weights as (layers, heads, q_len, k_len): 2-D is one head, 3-D is (heads, Lq, Lk)."""
    arr = as_weights(name, x, (2, 3, 4))
    while arr.ndim < 4:
        arr = arr[None]  # (Lq, Lk) -> (1, Lq, Lk) -> (1, 1, Lq, Lk)
    return arr


def as_bool_mask(name: str, x: Any) -> np.ndarray:
    """A dense (Lq, Lk) boolean mask, True = may attend; singleton leading dims are dropped."""
    arr = to_numpy(name, x)
    if arr.dtype != np.bool_:
        raise ValueError(
            f"{name}: expected a bool array (True = may attend), got dtype {arr.dtype}; "
            f"materialise the mask first, e.g. materialize(mask, q_len, kv_len)[0, 0]"
        )
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]  # (1, 1, Lq, Lk) from materialize() -> (Lq, Lk)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D (q_len, kv_len) array, got shape {arr.shape}; "
            f"select one batch element and head, e.g. {name}[b, h]"
        )
    return arr


def as_labels(name: str, labels: Sequence[Any] | None, n: int, what: str,
              *, default_prefix: str = "") -> list[str]:
    """``n`` display labels: given strings made printable, or ``0..n-1`` when None."""
    if labels is None:
        return [f"{default_prefix}{i}" for i in range(n)]
    if isinstance(labels, str | bytes):
        raise ValueError(f"{name}: expected a sequence of {n} strings, got a single {type(labels).__name__}")
    try:
        items = list(labels)
    except TypeError as exc:
        raise ValueError(
            f"{name}: expected a sequence of {n} strings, got {type(labels).__name__}"
        ) from exc
    if len(items) != n:
        raise ValueError(f"{name}: expected {n} labels ({what}), got {len(items)}")
    return [printable(str(t)) for t in items]


def raw_labels(name: str, labels: Sequence[Any] | None, n: int, what: str) -> list[str]:
    """Like :func:`as_labels` but keeps the exact text (for JSON/HTML, which escape it later)."""
    if labels is None:
        return [str(i) for i in range(n)]
    if isinstance(labels, str | bytes):
        raise ValueError(f"{name}: expected a sequence of {n} strings, got a single {type(labels).__name__}")
    items = [str(t) for t in labels]
    if len(items) != n:
        raise ValueError(f"{name}: expected {n} labels ({what}), got {len(items)}")
    return items


def pick_tokens(tokens: Sequence[Any] | None, q_tokens: Sequence[Any] | None,
                k_tokens: Sequence[Any] | None) -> tuple[Sequence[Any] | None, Sequence[Any] | None]:
    """``tokens`` labels both axes (self-attention); ``q_tokens``/``k_tokens`` override one side."""
    return (q_tokens if q_tokens is not None else tokens,
            k_tokens if k_tokens is not None else tokens)


def as_indices(name: str, values: Sequence[Any] | None, n: int, what: str) -> list[int]:
    """Integer labels for ``n`` layers/heads (their original indices after slicing)."""
    if values is None:
        return list(range(n))
    items = list(values)
    if len(items) != n or not all(isinstance(v, int | np.integer) for v in items):
        raise ValueError(f"{name}: expected {n} integers ({what}), got {items!r}")
    return [int(v) for v in items]


def axis_labels(tokens: Sequence[Any] | None, q_tokens: Sequence[Any] | None,
                k_tokens: Sequence[Any] | None, shape: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """Printable labels for the query rows and key columns of a (..., Lq, Lk) weights array;
    errors name the argument the labels came from."""
    lq, lk = shape[-2], shape[-1]
    qt, kt = pick_tokens(tokens, q_tokens, k_tokens)
    qlab = as_labels("q_tokens" if q_tokens is not None else "tokens", qt, lq,
                     f"one per query row of weights, shape {shape}")
    klab = as_labels("k_tokens" if k_tokens is not None else "tokens", kt, lk,
                     f"one per key column of weights, shape {shape}")
    return qlab, klab

