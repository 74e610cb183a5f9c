"""Where does a focus token look? Top-k attended tokens per layer and head.

For the sentence "The animal didn't cross the street because it was too tired" and the
focus "it", each head's row of "it" says which tokens it draws on. :func:`top_attended` lists
the k largest weights of that row for every (layer, head) and for each layer's mean over heads;
:func:`focused_heads` ranks heads by how sharply the focus looks at one content token (not
itself, not [CLS]/[SEP]), which is where coreference-like heads show up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnlab.arguments import expect_positive_int
from attnlab.inspect.attention_cache import AttentionCache


@dataclass(frozen=True)
class Attended:
    position: int
    token: str
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "token": self.token, "weight": round(self.weight, 6)}


@dataclass(frozen=True)
class HeadTop:
    layer: int
    head: int | None  # None: the mean over the layer's heads
    top: list[Attended]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "head": self.head, "top": [a.to_dict() for a in self.top]}


def _check_k(k: int) -> int:
    return expect_positive_int("k", k)


def _top(row: torch.Tensor, labels: list[str], k: int) -> list[Attended]:
    vals, idx = row.topk(min(k, row.shape[0]))
    return [Attended(int(i), labels[int(i)], float(v)) for v, i in zip(vals, idx, strict=True)]


def top_attended(cache: AttentionCache, focus: int, k: int = 3) -> dict[str, Any]:
    """For query position ``focus``: per layer, the top-k keys of each head and of the mean.

    Returns ``{"focus": {...}, "layers": [{"layer", "mean": HeadTop, "heads": [HeadTop]}]}``
    with dataclasses; :func:`top_attended_dict` gives the JSON form.
    """
    _check_k(k)
    n_q = cache.weights.shape[2]
    if not 0 <= focus < n_q:
        raise ValueError(f"focus: expected a query position in 0..{n_q - 1}, got {focus}")
    labels = cache.tokens
    layers = []
    for layer in range(cache.num_layers):
        rows = cache.weights[layer, :, focus]  # (H, Lk)
        layers.append({
            "layer": layer,
            "mean": HeadTop(layer, None, _top(rows.mean(0), labels, k)),
            "heads": [HeadTop(layer, h, _top(rows[h], labels, k)) for h in range(rows.shape[0])],
        })
    return {"focus": {"position": focus, "token": cache.query_labels[focus]}, "layers": layers}


def top_attended_dict(result: dict[str, Any]) -> dict[str, Any]:
    return {"focus": result["focus"],
            "layers": [{"layer": lay["layer"], "mean": lay["mean"].to_dict()["top"],
                        "heads": [h.to_dict()["top"] for h in lay["heads"]]} for lay in result["layers"]]}


def content_positions(cache: AttentionCache, exclude: tuple[int, ...] = ()) -> list[int]:
    """Positions of ordinary tokens: not special, not in ``exclude``."""
    return [i for i, s in enumerate(cache.encoded.special) if not s and i not in exclude]


def focused_heads(cache: AttentionCache, focus: int, n: int = 5, *,
                  skip_neighbours: bool = True) -> list[dict[str, Any]]:
    """Heads whose row for ``focus`` puts the most weight on a single other content token.

    The focus itself and (by default) its two neighbours are left out: previous- and
    next-token heads are positional and would fill the list (see ``heads.py`` for them).
    """
    near = (focus - 1, focus, focus + 1) if skip_neighbours else (focus,)
    keep = content_positions(cache, exclude=near)
    if not keep:
        return []
    rows = cache.weights[:, :, focus][:, :, keep]  # (L, H, K)
    best, where = rows.max(dim=-1)  # (L, H)
    order = best.flatten().argsort(descending=True)[: _check_k(n)]  # (L, H) -> (L*H,): i = layer*H + head
    out = []
    for flat in order.tolist():
        layer, head = divmod(flat, cache.num_heads)
        pos = keep[int(where[layer, head])]
        out.append({"layer": layer, "head": head, "position": pos, "token": cache.tokens[pos],
                    "weight": round(float(best[layer, head]), 6)})
    return out
