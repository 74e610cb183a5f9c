"""Find heads with known jobs by running built-in probe texts (after TransformerLens' and
Clark et al. 2019 "What Does BERT Look At?").

Probes: a few natural sentences (or the user's texts) and sequences of random word tokens —
one repeated twice (``x1..xn x1..xn``), two others of the same length and different tokens.
Scores, each in [0, 1] and averaged over probes and over the query rows they apply to:

- ``previous``   weight on the token just before the query (Clark et al. §3);
- ``duplicate``  on the repeated sequence: weight from the second copy of a token on its first;
- ``induction``  (decoders) from the second copy of x_j to x_{j+1} in the first copy — the
                 "look at what followed last time" head (Olsson et al. 2022);
- ``cls`` / ``sep``  (encoders) weight on [CLS] / on [SEP] tokens (Clark et al. §3.2);
- ``sink``       (decoders) weight on the first token, the attention sink (Xiao et al. 2023);
- ``positional`` 1 − total-variation distance between the head's patterns on two random
                 sequences of the same length: 1 means the pattern ignores content entirely;
- ``broad``      mean row entropy / log(number of visible keys): 1 is uniform attention.

Every head also gets the viz pattern classifier's label on the first natural probe.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from attnlab.inspect.attention_cache import AttentionCache, capture
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded

PROBE_TEXTS = (
    "The animal didn't cross the street because it was too tired.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The keys to the old cabinet in the hall are on the kitchen table.",
    "A small dog chased the red ball across the garden and then fell asleep under a tree.",
)
RANDOM_LEN = 16  # tokens per random sequence (the repeated probe has twice as many)
# A head is reported as "detected" for a job when its score reaches this.
THRESHOLDS = {"previous": 0.4, "duplicate": 0.3, "induction": 0.3, "cls": 0.5, "sep": 0.5,
              "sink": 0.5, "positional": 0.9, "broad": 0.85}


@dataclass
class HeadScores:
    kind: str
    scores: dict[str, Tensor]  # detector -> (L, H)
    patterns: list[list[str]]  # viz classifier label per (layer, head)
    probes: list[str]
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))

    def top(self, detector: str, n: int = 3) -> list[dict[str, Any]]:
        if detector not in self.scores:
            raise ValueError(f"detector: expected one of {list(self.scores)}, got {detector!r}")
        s = self.scores[detector]
        H = s.shape[1]
        order = s.flatten().argsort(descending=True)[:n].tolist()  # (L, H) -> (L*H,): i = layer*H + head
        return [{"layer": i // H, "head": i % H, "score": round(float(s.flatten()[i]), 4)} for i in order]

    def detected(self, detector: str) -> list[dict[str, Any]]:
        t = self.thresholds[detector]
        return [h for h in self.top(detector, n=self.scores[detector].numel()) if h["score"] >= t]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "detectors": list(self.scores), "thresholds": self.thresholds,
                "probes": self.probes,
                "scores": {d: [[round(float(x), 4) for x in row] for row in s]
                           for d, s in self.scores.items()},
                "patterns": self.patterns,
                "top": {d: self.top(d, 3) for d in self.scores},
                "detected": {d: self.detected(d) for d in self.scores}}


def _word_ids(lm: LoadedModel) -> list[int]:
    """Vocabulary ids of whole, alphabetic words (no sub-word pieces, no specials)."""
    tok = lm.tokenizer
    out = []
    for t, i in tok.vocab().items():
        body = t[1:] if tok.byte_level and t.startswith("Ġ") else t
        if tok.byte_level and not t.startswith("Ġ"):
            continue
        if len(body) >= 3 and re.fullmatch(r"[a-z]+", body):
            out.append(i)
    if len(out) < 2 * RANDOM_LEN:
        raise ValueError(f"heads: the vocabulary has too few whole-word tokens ({len(out)}) for the "
                         f"random probes")
    return sorted(out)


def _probe(lm: LoadedModel, ids: list[int], name: str) -> Encoded:
    pre, post = lm.tokenizer.special_frame()
    full = pre + ids + post
    special = [True] * len(pre) + [False] * len(ids) + [True] * len(post)
    return lm.tokenizer.encode_ids(full, name, special)


def _row_mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean(0) if values else torch.tensor(0.0)


def _previous(w: Tensor, content: list[int]) -> Tensor:
    pairs = [(i, i - 1) for i in content if i - 1 in content]
    return _row_mean([w[:, :, i, j] for i, j in pairs])  # (L, H)


def _entropy(w: Tensor, rows: list[int], causal: bool) -> Tensor:
    vals = []
    for i in rows:
        n = i + 1 if causal else w.shape[-1]
        if n < 2:
            continue
        p = w[:, :, i, :n].clamp_min(1e-12)  # (L, H, n)
        vals.append(-(p * p.log()).sum(-1) / torch.log(torch.tensor(float(n))))
    return _row_mean(vals)


def detect_heads(lm: LoadedModel, texts: list[str] | None = None, *, seed: int = 0) -> HeadScores:
    """Score every head for each job over the probe texts (``texts`` replace the natural ones)."""
    naturals = list(texts) if texts else list(PROBE_TEXTS)
    encs = [lm.encode(t, truncate=True, name="text") for t in naturals]
    for t, e in zip(naturals, encs, strict=True):
        if sum(not s for s in e.special) < 2:  # previous-token and entropy scores need two tokens
            raise ValueError(f"texts: expected probe texts of at least two tokens, got {t!r} "
                             f"({len(e)} token(s): {e.labels})")
    caches = [capture(lm, e, keep_hidden=False) for e in encs]
    words = _word_ids(lm)
    rng = random.Random(seed)  # fixed seed: the same probes, the same scores, every run
    seq, other1, other2 = (rng.sample(words, RANDOM_LEN) for _ in range(3))
    rep = capture(lm, _probe(lm, seq + seq, "repeated random tokens"), keep_hidden=False)
    r1 = capture(lm, _probe(lm, other1, "random tokens 1"), keep_hidden=False)
    r2 = capture(lm, _probe(lm, other2, "random tokens 2"), keep_hidden=False)
    scores = score_heads(caches, rep, r1, r2, decoder=lm.kind == "decoder")
    probes = [*naturals, "repeated random tokens", "random tokens 1", "random tokens 2"]
    return HeadScores(lm.kind, scores, _patterns(caches[0].weights), probes)


def _content(c: AttentionCache) -> list[int]:
    return [i for i, s in enumerate(c.encoded.special) if not s]


def score_heads(naturals: list[AttentionCache], repeated: AttentionCache, r1: AttentionCache,
                r2: AttentionCache, *, decoder: bool) -> dict[str, Tensor]:
    """The detector scores, each (L, H), from captured probes (pure function of the weights).

    ``repeated`` holds a random sequence twice (x1..xn x1..xn, n = half its content tokens);
    ``r1`` and ``r2`` two different random sequences of the same length.
    """
    if r1.weights.shape != r2.weights.shape:
        raise ValueError(f"r2: expected the shape of r1 {tuple(r1.weights.shape)}, "
                         f"got {tuple(r2.weights.shape)}")
    everything = (*naturals, r1, r2)
    scores: dict[str, Tensor] = {}
    scores["previous"] = _row_mean([_previous(c.weights, _content(c)) for c in everything])
    content = _content(repeated)
    n = len(content) // 2
    second = content[n: 2 * n]  # positions of the second copy; p - n is the first copy's
    scores["duplicate"] = _row_mean([repeated.weights[:, :, p, p - n] for p in second])
    if decoder:
        scores["induction"] = _row_mean([repeated.weights[:, :, p, p - n + 1] for p in second])
        scores["sink"] = _row_mean([c.weights[:, :, 1:, 0].mean(-1) for c in everything
                                    if c.weights.shape[-1] > 1])
    else:
        cls = [c for c in everything if c.encoded.special and c.encoded.special[0]]
        if cls:
            scores["cls"] = _row_mean([c.weights[:, :, :, 0].mean(-1) for c in cls])
        seps = [(c, [i for i, s in enumerate(c.encoded.special) if s and i != 0]) for c in everything]
        seps = [(c, sp) for c, sp in seps if sp]
        if seps:
            scores["sep"] = _row_mean([c.weights[:, :, :, sp].sum(-1).mean(-1) for c, sp in seps])
    tv = 0.5 * (r1.weights - r2.weights).abs().sum(-1)  # (L, H, T): per query row
    scores["positional"] = 1.0 - tv.mean(-1)
    scores["broad"] = _row_mean([_entropy(c.weights, _content(c), decoder) for c in everything])
    return {k: v.float() for k, v in scores.items()}


def _patterns(weights: Tensor) -> list[list[str]]:
    from attnlab.viz.patterns import classify_heads  # lazy: viz pulls in matplotlib

    return [[r.label for r in row] for row in classify_heads(weights.double().numpy())]
