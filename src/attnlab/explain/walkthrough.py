"""Compute attention step by step, in float64, keeping every intermediate.

Q·Kᵀ -> scaling -> softmax -> weighted sum of V, for tiny inputs a person can follow.
The numbers come from attnlab's own eager backend, so the walkthrough shows exactly what the
library computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from attnlab.backends.dispatch import attention
from attnlab.explain.examples import Example, SeedClaim


@dataclass
class ClaimCheck:
    claim: SeedClaim
    exact: list[float]
    agrees: bool  # exact values round to what the seed prints

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.claim.what, "row": self.claim.row, "printed": list(self.claim.values),
                "exact": self.exact, "decimals": self.claim.decimals, "agrees": self.agrees}


@dataclass
class Walkthrough:
    q_tokens: list[str]
    k_tokens: list[str]
    q: list[list[float]]  # (Lq, D)
    k: list[list[float]]  # (Lk, D)
    v: list[list[float]]  # (Lk, Dv)
    raw_scores: list[list[float]]  # Q·Kᵀ, (Lq, Lk)
    scale: float
    scores: list[list[float]]  # raw · scale
    weights: list[list[float]]  # softmax over keys
    context: list[list[float]]  # weights · V, (Lq, Dv)
    title: str = ""
    story: str = ""
    source: str = ""
    value_labels: list[str] | None = None
    checks: list[ClaimCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "checks"}
        d["checks"] = [c.to_dict() for c in self.checks]
        return d


def _matrix(name: str, x: object) -> torch.Tensor:
    try:
        t = torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a list of equal-length lists of numbers, got {x!r}") from e
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or 0 in t.shape:
        raise ValueError(
            f"{name}: expected a non-empty 2-D matrix (tokens x dims), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite numbers, got {t.tolist()}")
    return t


def walk(q: object, k: object, v: object | None = None, *, scale: float | bool = True,
         q_tokens: list[str] | None = None, k_tokens: list[str] | None = None) -> Walkthrough:
    """Attention over small matrices.  q (Lq, D), k (Lk, D), v (Lk, Dv) (v defaults to k).

    ``scale``: True for 1/sqrt(D), False for none, or a number.
    """
    qt, kt = _matrix("q", q), _matrix("k", k)
    vt = kt if v is None else _matrix("v", v)
    if qt.shape[1] != kt.shape[1]:
        raise ValueError(f"k: expected {qt.shape[1]} dims per row (as q), got shape {tuple(kt.shape)}")
    if vt.shape[0] != kt.shape[0]:
        raise ValueError(f"v: expected {kt.shape[0]} rows (one per key), got shape {tuple(vt.shape)}")
    if scale is True:
        s = 1.0 / math.sqrt(qt.shape[1])
    elif scale is False:
        s = 1.0
    else:
        s = float(scale)
    qn = q_tokens or [f"q{i}" for i in range(qt.shape[0])]
    kn = k_tokens or [f"k{j}" for j in range(kt.shape[0])]
    for name, toks, n in (("q_tokens", qn, qt.shape[0]), ("k_tokens", kn, kt.shape[0])):
        if len(toks) != n:
            raise ValueError(f"{name}: expected {n} labels (one per row), got {len(toks)}")
    raw = qt @ kt.T  # (Lq, Lk)
    out = attention(qt, kt, vt, scale=s, return_weights=True, backend="eager")
    assert out.weights is not None
    for what, t in (("the scores q·kᵀ", raw * s), ("the weights", out.weights), ("the context", out.context)):
        if not bool(torch.isfinite(t).all()):  # float64 overflow: 1e308 · 1e308, say
            raise ValueError(f"q/k/v: {what} overflow float64 (largest finite 1.8e308); use smaller "
                             f"numbers")
    return Walkthrough(
        q_tokens=list(qn), k_tokens=list(kn), q=qt.tolist(), k=kt.tolist(), v=vt.tolist(),
        raw_scores=raw.tolist(), scale=s, scores=(raw * s).tolist(),
        weights=out.weights.tolist(), context=out.context.tolist(),
    )


def check_claims(w: Walkthrough, claims: tuple[SeedClaim, ...]) -> list[ClaimCheck]:
    """Compare each value the article prints with the exact one, at the article's precision."""
    table = {"scores": w.scores, "weights": w.weights, "context": w.context}
    out = []
    for c in claims:
        exact = table[c.what][c.row]
        tol = 0.5 * 10 ** (-c.decimals) + 1e-9
        agrees = len(exact) == len(c.values) and all(
            abs(e - s) <= tol for e, s in zip(exact, c.values, strict=True))
        out.append(ClaimCheck(c, exact, agrees))
    return out


def walk_example(ex: Example, *, scale: float | bool | None = None) -> Walkthrough:
    """Run a built-in example; ``scale=None`` follows the article (scaled or not)."""
    w = walk(ex.q, ex.k, ex.v, scale=ex.scaled if scale is None else scale,
             q_tokens=list(ex.q_tokens), k_tokens=list(ex.k_tokens))
    w.title, w.story, w.source = ex.title, ex.story, ex.source
    w.value_labels = list(ex.value_labels) if ex.value_labels else None
    # Seed numbers only make sense with the seed's own scaling.
    if scale is None or scale == ex.scaled:
        w.checks = check_claims(w, ex.claims)
    return w


@dataclass
class Perturbation:
    row: int
    dim: int
    delta: float
    before: Walkthrough
    after: Walkthrough

    def shift(self) -> list[float]:
        """Change of the perturbed query's weights, per key."""
        b, a = self.before.weights[self.row], self.after.weights[self.row]
        return [x - y for x, y in zip(a, b, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "dim": self.dim, "delta": self.delta,
                "query_before": self.before.q[self.row], "query_after": self.after.q[self.row],
                "weights_before": self.before.weights[self.row],
                "weights_after": self.after.weights[self.row], "shift": self.shift()}


def perturb(w: Walkthrough, query: str | int, dim: int, delta: float) -> Perturbation:
    """Nudge one query coordinate and recompute where it routes (the tutorial's exercise).

    Only the query changes (keys and values stay), even when the example had Q = K = V.
    """
    if isinstance(query, str) and not query.lstrip("-").isdigit():
        if query not in w.q_tokens:
            raise ValueError(f"perturb: expected a query token among {w.q_tokens}, got {query!r}")
        row = w.q_tokens.index(query)
    else:
        row = int(query)
        if not 0 <= row < len(w.q):
            raise ValueError(f"perturb: expected a query row in [0, {len(w.q) - 1}], got {row}")
    if not 0 <= dim < len(w.q[0]):
        raise ValueError(f"perturb: expected a dim in [0, {len(w.q[0]) - 1}], got {dim}")
    q2 = [list(r) for r in w.q]
    q2[row][dim] += delta
    after = walk(q2, w.k, w.v, scale=w.scale, q_tokens=w.q_tokens, k_tokens=w.k_tokens)
    return Perturbation(row, dim, delta, w, after)
