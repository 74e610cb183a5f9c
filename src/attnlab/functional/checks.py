"""Argument checks that fail early with a message naming the argument, expected and given; a bad
value raises :class:`ArgumentError` (a ValueError carrying ``.name``), a bad type TypeError."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The integer checks and the typed error live where the CLI and viz/ reach them without torch.
from attnlab.arguments import ArgumentError as ArgumentError
from attnlab.arguments import expect_int as expect_int
from attnlab.arguments import expect_nonneg_int as expect_nonneg_int
from attnlab.arguments import expect_positive_int as expect_positive_int


def expect_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    floating: bool = False,
) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ArgumentError(
                name, f"{name}: expected {want} dims, got {x.ndim} (shape {tuple(x.shape)})"
            )
    if min_ndim is not None and x.ndim < min_ndim:
        raise ArgumentError(
            name, f"{name}: expected at least {min_ndim} dims, got {x.ndim} (shape {tuple(x.shape)})"
        )
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def expect_last_dim(name: str, x: Tensor, size: int, what: str) -> None:
    if x.shape[-1] != size:
        raise ArgumentError(
            name, f"{name}: expected last dim {size} ({what}), got shape {tuple(x.shape)}"
        )


def expect_same(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    """Same dtype and device as the reference tensor: no silent casts or copies."""
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (as {ref_name}), got {x.dtype}")
    if x.device != ref.device:
        raise ArgumentError(
            name, f"{name}: expected device {ref.device} (as {ref_name}), got {x.device}"
        )


def expect_probability(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ArgumentError(name, f"{name}: expected a float in [0, 1), got {value!r}")
    return float(value)


def as_index_tensor(name: str, values: object, *, ndim: Sequence[int] = (1,)) -> Tensor:
    """Lengths / segment ids: an integer tensor or a list of ints."""
    t = values if isinstance(values, Tensor) else torch.as_tensor(values)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integers, got dtype {t.dtype}")
    if t.ndim not in tuple(ndim):
        raise ArgumentError(name, f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    return t.long()
