"""The classifier names planted patterns, clean and mixed with Dirichlet noise (seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.viz import classify_heads, classify_pattern
from attnlab.viz.patterns import LABELS


def planted(kind: str, n: int, causal: bool, column: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A clean (n, n) pattern and the mask it lives under (lower triangle when causal)."""
    p = np.zeros((n, n))
    i = np.arange(n)
    if kind == "self":
        p[i, i] = 1
    elif kind == "previous":
        p[i, np.maximum(i - 1, 0)] = 1
    elif kind == "next":
        p[i, np.minimum(i + 1, n - 1)] = 1
    elif kind == "sink":
        p[:, column] = 1
    elif kind == "local":  # a window of 3 keys back (and 3 forward unless causal)
        for r in range(n):
            p[r, max(0, r - 3): (r if causal else min(n - 1, r + 3)) + 1] = 1
    elif kind == "broad":
        p[:] = 1
    mask = np.tril(np.ones((n, n))) if causal else np.ones((n, n))
    p *= mask
    return p / p.sum(axis=1, keepdims=True), mask


def noisy(p: np.ndarray, mask: np.ndarray, eps: float, alpha: float,
          rng: np.random.Generator) -> np.ndarray:
    """(1 - eps) * pattern + eps * Dirichlet(alpha) noise over the keys each query may see."""
    d = rng.dirichlet(np.full(p.shape[1], alpha), size=p.shape[0]) * mask
    return (1 - eps) * p + eps * d / d.sum(axis=1, keepdims=True)


CASES = [(k, c) for c in (False, True) for k in LABELS if not (c and k == "next")]


@pytest.mark.parametrize(("kind", "causal"), CASES)
def test_clean_planted_patterns(kind: str, causal: bool) -> None:
    for n in (16, 32):
        p, _ = planted(kind, n, causal, column=0 if causal else 5)
        report = classify_pattern(p)
        assert report.label == kind, (n, report.as_dict())
        assert report.top.score > 0.5


@pytest.mark.parametrize(("kind", "causal"), CASES)
@pytest.mark.parametrize("alpha", [1.0, 0.3])  # flat noise, and peaky noise on a few keys
def test_noisy_planted_patterns(kind: str, causal: bool, alpha: float) -> None:
    rng = np.random.default_rng(1234)
    # Realistic levels: up to 40% of every row's mass elsewhere. A 7-key window among 16
    # keys is barely local, so "local" is held to 20% noise at n=16.
    for n in (16, 32, 64):
        for eps in (0.1, 0.2, 0.3, 0.4):
            if kind == "local" and n == 16 and eps > 0.2:
                continue
            for _ in range(3):
                p, mask = planted(kind, n, causal, column=0 if causal else 3)
                report = classify_pattern(noisy(p, mask, eps, alpha, rng))
                assert report.label == kind, (n, eps, report.as_dict())


def test_sink_column_and_scores_are_ranked() -> None:
    p, mask = planted("sink", 20, causal=False, column=7)
    report = classify_pattern(noisy(p, mask, 0.3, 1.0, np.random.default_rng(0)))
    assert report.top.label == "sink" and report.top.column == 7 and report.sink_column == 7
    scores = [s.score for s in report.scores]
    assert scores == sorted(scores, reverse=True)
    assert {s.label for s in report.scores} == set(LABELS)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert report.as_dict()["scores"][0] == {"label": "sink", "score": report.top.score,
                                             "column": 7}


def test_statistics_mean_distance_and_entropy() -> None:
    prev, _ = planted("previous", 10, causal=True)
    r = classify_pattern(prev)
    assert r.mean_distance == pytest.approx(0.9)  # row 0 attends itself, 9 rows at distance 1
    assert r.entropy == pytest.approx(0.0)
    uniform = np.full((10, 10), 0.1)
    u = classify_pattern(uniform)
    assert u.entropy == pytest.approx(1.0) and u.locality == pytest.approx(0.0)


def test_content_head_is_mixed() -> None:
    rng = np.random.default_rng(5)
    p = np.zeros((32, 32))
    p[np.arange(32), rng.integers(0, 32, 32)] = 1  # each query picks an arbitrary key
    mask = np.ones((32, 32))
    assert classify_pattern(noisy(p, mask, 0.3, 1.0, rng)).label == "mixed"


def test_offset_for_decoding_queries() -> None:
    # 2 new queries over 6 cached keys attend their previous token (bottom-right alignment).
    w = np.zeros((2, 6))
    w[0, 3] = w[1, 4] = 1.0
    assert classify_pattern(w).label == "previous"
    assert classify_pattern(w, offset=0).label != "previous"


def test_fully_masked_rows_ignored_and_bad_rows_refused() -> None:
    w = np.eye(4)
    w[2] = 0.0  # a fully masked query
    assert classify_pattern(w).label == "self"
    with pytest.raises(ValueError, match=r"weights: expected post-softmax weights .*row 0 summing"
                                         r" to 2"):
        classify_pattern(np.full((2, 2), 1.0))
    with pytest.raises(ValueError, match=r"weights: expected attention weights >= 0"):
        classify_pattern(np.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="every row all zero"):
        classify_pattern(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 2\)"):
        classify_pattern(np.eye(2), mask=np.ones((3, 3), dtype=bool))


def test_explicit_mask_sets_the_baseline() -> None:
    # A sliding-window head: uniform over its 3-key window. With the window as the baseline
    # it is broad within what it may see; against the full sequence it is local.
    n = 24
    mask = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) <= 1
    w = mask / mask.sum(axis=1, keepdims=True)
    assert classify_pattern(w).label == "local"
    assert classify_pattern(w, mask=mask).locality == pytest.approx(0.0)


def test_classify_heads_shape() -> None:
    w = np.stack([np.stack([np.eye(5), planted("previous", 5, True)[0]])] * 3)  # (3, 2, 5, 5)
    labels = [[r.label for r in row] for row in classify_heads(w)]
    assert labels == [["self", "previous"]] * 3
