"""Attention JSON: exact round trip, schema checks, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlab.viz import SCHEMA, SCHEMA_VERSION, attention_data, export_json, load_json


def test_round_trip_is_exact_in_the_saved_dtype(tmp_path) -> None:
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(5), size=(2, 3, 4)).astype(np.float32)  # (L, H, Lq=4, Lk=5)
    path = tmp_path / "attn.json"
    text = export_json(w, q_tokens=list("abcd"), k_tokens=["v", "w", "</script>", "y", "z"],
                       layers=[3, 9], heads=[0, 2, 5], metadata={"model": "demo", "n": 1},
                       path=path)
    assert path.read_text(encoding="utf-8") == text
    data = load_json(path)
    assert data.weights.shape == (2, 3, 4, 5) and data.dtype == "float32"
    np.testing.assert_array_equal(data.weights.astype(np.float32), w)
    assert data.k_tokens[2] == "</script>" and data.q_tokens == list("abcd")
    assert data.layers == [3, 9] and data.heads == [0, 2, 5]
    assert data.metadata == {"model": "demo", "n": 1}
    # export(load(export(x))) == export(x)
    again = export_json(data.weights.astype(np.float32), q_tokens=data.q_tokens,
                        k_tokens=data.k_tokens, layers=data.layers, heads=data.heads,
                        metadata=data.metadata)
    assert again == text
    assert load_json(text).shape == (2, 3, 4, 5)  # JSON text works as well as a path


def test_document_layout() -> None:
    doc = json.loads(export_json(np.eye(2), ["a", "b"]))
    assert doc["schema"] == SCHEMA and doc["version"] == SCHEMA_VERSION
    assert doc["axes"] == ["layer", "head", "query", "key"]
    assert doc["shape"] == [1, 1, 2, 2] and doc["weights"] == [[[[1.0, 0.0], [0.0, 1.0]]]]
    assert doc["q_tokens"] == doc["k_tokens"] == ["a", "b"]
    assert doc["layers"] == [0] and doc["heads"] == [0]


def test_precision_rounds() -> None:
    doc = json.loads(export_json(np.array([[1 / 3, 2 / 3]]), precision=3))
    assert doc["weights"] == [[[[0.333, 0.667]]]]


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(schema="other"), r"data: expected an object with schema "
                                             r"'attnlab.attention', got 'other'"),
        (lambda d: d.update(version=99), r"data: expected schema version 1, got 99"),
        (lambda d: d.pop("weights"), r"missing \['weights'\]"),
        (lambda d: d.update(shape=[9, 9, 9, 9]), r"data.shape: expected \[1, 1, 2, 2\]"),
        (lambda d: d.update(q_tokens=["a"]), r"q_tokens: expected 2 labels"),
        (lambda d: d.update(dtype="int8"), r"data.dtype: expected one of"),
        (lambda d: d.update(weights=[[1, 0], [0, 1]]), r"data.weights: expected 4-D"),
    ],
)
def test_load_refuses_bad_documents(mutate, pattern) -> None:
    doc = json.loads(export_json(np.eye(2), ["a", "b"]))
    mutate(doc)
    with pytest.raises(ValueError, match=pattern):
        load_json(json.dumps(doc))


def test_export_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"metadata: expected a JSON-serialisable dict"):
        export_json(np.eye(2), metadata={"x": object()})
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.json"):
        export_json(np.eye(2), path=tmp_path / "a.txt")
    with pytest.raises(ValueError, match=r"source: expected a JSON file or JSON text"):
        load_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"source: expected valid JSON"):
        load_json("{not json")


def test_attention_data_passes_through_and_reshapes() -> None:
    d = attention_data(np.ones((3, 2, 2)) / 2)  # (heads, Lq, Lk)
    assert d.shape == (1, 3, 2, 2) and d.q_tokens == ["0", "1"]
    assert attention_data(d) is d
