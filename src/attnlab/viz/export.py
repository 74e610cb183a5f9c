"""Attention data as JSON for other tools, and the data model the HTML views embed.

Schema (``"schema": "attnlab.attention"``, ``"version": 1``)::

    {"schema": "attnlab.attention", "version": 1,
     "axes": ["layer", "head", "query", "key"],
     "shape": [L, H, Lq, Lk], "dtype": "float32",
     "layers": [0, 1, ...],        # original layer indices (after any slicing)
     "heads": [0, 1, ...],         # original head indices
     "q_tokens": [...], "k_tokens": [...],
     "weights": [[[[...]]]],       # nested lists, shape above
     "metadata": {...}}            # free JSON object: model name, sentence, ...

Round trip: ``load_json(export_json(x)).weights`` equals ``x`` exactly in the saved dtype
(floats are written with ``repr``, which Python reads back bit for bit), unless ``precision``
rounds them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.viz.inputs import as_indices, as_stack, pick_tokens, raw_labels

SCHEMA = "attnlab.attention"
SCHEMA_VERSION = 1
AXES = ("layer", "head", "query", "key")
_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class AttentionData:
    """Weights (layers, heads, Lq, Lk) with their tokens, indices and free-form metadata."""

    weights: np.ndarray  # (L, H, Lq, Lk)
    q_tokens: list[str]
    k_tokens: list[str]
    layers: list[int]
    heads: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float64"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.weights.shape)  # type: ignore[return-value]

    def to_dict(self, precision: int | None = None) -> dict[str, Any]:
        w = self.weights if precision is None else np.round(self.weights, precision)
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "axes": list(AXES),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layers": list(self.layers),
            "heads": list(self.heads),
            "q_tokens": list(self.q_tokens),
            "k_tokens": list(self.k_tokens),
            "weights": w.astype(np.float64).tolist(),
            "metadata": self.metadata,
        }


def attention_data(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> AttentionData:
    """Check and bundle attention for export or the HTML views.

    ``weights``: (Lq, Lk), (heads, Lq, Lk) or (layers, heads, Lq, Lk); stored as 4-D.
    ``layers``/``heads`` are the original indices of the slices given (default 0..n-1).
    Passing an :class:`AttentionData` returns it unchanged.
    """
    if isinstance(weights, AttentionData):
        return weights
    src_dtype = str(getattr(weights, "dtype", "float64")).removeprefix("torch.")
    w = as_stack("weights", weights)  # (L, H, Lq, Lk)
    n_layers, n_heads, lq, lk = w.shape
    qt, kt = pick_tokens(tokens, q_tokens, k_tokens)
    meta = dict(metadata or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata: expected a JSON-serialisable dict, got {exc}") from exc
    return AttentionData(
        weights=w,
        q_tokens=raw_labels("q_tokens" if q_tokens is not None else "tokens", qt, lq,
                            f"one per query of weights, shape {w.shape[2:]}"),
        k_tokens=raw_labels("k_tokens" if k_tokens is not None else "tokens", kt, lk,
                            f"one per key of weights, shape {w.shape[2:]}"),
        layers=as_indices("layers", layers, n_layers, "one per layer of weights"),
        heads=as_indices("heads", heads, n_heads, "one per head of weights"),
        metadata=meta,
        dtype=src_dtype if src_dtype in _DTYPES else "float64",
    )


def export_json(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    metadata: dict[str, Any] | None = None,
    precision: int | None = None,
    indent: int | None = None,
    path: str | Path | None = None,
) -> str:
    """Attention as JSON text (schema in the module docstring); also written to ``path``."""
    data = attention_data(weights, tokens, q_tokens=q_tokens, k_tokens=k_tokens,
                          layers=layers, heads=heads, metadata=metadata)
    text = json.dumps(data.to_dict(precision), ensure_ascii=False, allow_nan=False,
                      indent=indent)
    if path is not None:
        p = Path(path)
        if p.suffix.lower() != ".json":
            raise ValueError(f"path: expected a file name ending in .json, got {str(path)!r}")
        p.write_text(text, encoding="utf-8")
    return text


def from_dict(obj: Any) -> AttentionData:
    """Read a parsed ``attnlab.attention`` document, checking schema, version and shapes."""
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"data: expected an object with schema {SCHEMA!r}, got {got!r}")
    if obj.get("version") != SCHEMA_VERSION:
        raise ValueError(
            f"data: expected schema version {SCHEMA_VERSION}, got {obj.get('version')!r}"
        )
    missing = [k for k in ("weights", "q_tokens", "k_tokens") if k not in obj]
    if missing:
        raise ValueError(f"data: expected keys weights, q_tokens, k_tokens, missing {missing}")
    dtype = obj.get("dtype", "float64")
    if dtype not in _DTYPES:
        raise ValueError(f"data.dtype: expected one of {_DTYPES}, got {dtype!r}")
    try:
        w = np.asarray(obj["weights"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data.weights: expected nested lists of numbers ({exc})") from exc
    if w.ndim != 4:
        raise ValueError(f"data.weights: expected 4-D (layer, head, query, key), got {w.shape}")
    if "shape" in obj and list(obj["shape"]) != list(w.shape):
        raise ValueError(f"data.shape: expected {list(w.shape)} (the weights), got {obj['shape']}")
    data = attention_data(w.astype(dtype), q_tokens=obj["q_tokens"], k_tokens=obj["k_tokens"],
                          layers=obj.get("layers"), heads=obj.get("heads"),
                          metadata=obj.get("metadata") or {})
    return data


def load_json(source: str | Path) -> AttentionData:
    """Load exported attention from a file path, or from JSON text (a str starting with ``{``)."""
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text = source
    else:
        p = Path(source)
        if not p.is_file():
            raise ValueError(f"source: expected a JSON file or JSON text, got {str(source)!r}")
        text = p.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"source: expected valid JSON, got {exc}") from exc
    return from_dict(obj)
