"""What every head of a trained Transformer translator does on one sentence.

``inspect_translation(translator, text)`` translates the text, recomputes every attention
(:class:`~attnlab.training.translator.AttentionMaps`) and describes each head of each site —
``encoder.<l>.self``, ``decoder.<l>.self`` (masked) and ``decoder.<l>.cross`` — with:

- ``pattern`` (self-attention): the positional pattern of
  :func:`attnlab.viz.classify_pattern` (self, previous, next, sink, local, broad or mixed);
- ``monotone`` (cross-attention): the share of target words whose most attended source token
  is not left of the previous word's (``</s>`` left out): 1.0 for reading the source in order;
- ``entropy``: the mean normalised row entropy (0: one key per query, 1: uniform);
- ``focus``: the mean largest weight per row; ``top``: each query's most attended key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlab.data.vocab import EOS
from attnlab.training.translator import AttentionMaps, Translation, Translator

KINDS = (("encoder", "self"), ("decoder", "self"), ("decoder", "cross"))


def _entropy(w: np.ndarray) -> np.ndarray:
    """H(row) in nats for each row of w (Lq, Lk) -> (Lq,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)  # (Lq, Lk)
    return -plogp.sum(-1)


def _head(kind: str, causal: bool, w: np.ndarray, q: list[str], k: list[str]) -> dict[str, Any]:
    """One head's weights (Lq, Lk) -> its description."""
    from attnlab.viz import classify_pattern

    lq, lk = w.shape
    n_keys = np.arange(1, lq + 1) if causal else np.full(lq, lk)  # keys each query may see
    ent = _entropy(w)
    multi = n_keys > 1
    entropy = float((ent[multi] / np.log(n_keys[multi])).mean()) if multi.any() else 0.0
    top = w.argmax(-1)  # (Lq,)
    out: dict[str, Any] = {"entropy": round(entropy, 4), "focus": round(float(w.max(-1).mean()), 4),
                           "top": [[q[i], k[int(j)]] for i, j in enumerate(top)]}
    if kind == "self":
        out["pattern"] = classify_pattern(w, offset=0).label
    else:  # the </s> row's alignment means nothing: leave it out
        words = [j for i, j in enumerate(top) if q[i] != EOS]
        steps = np.diff(np.asarray(words, dtype=np.int64))
        out["monotone"] = round(float((steps >= 0).mean()), 4) if len(steps) else 1.0
    return out


def describe_heads(maps: AttentionMaps) -> list[dict[str, Any]]:
    """One entry per site (stack, layer, kind) with a description per head."""
    sites = []
    for (stack, kind), (_, weights, q, k) in zip(KINDS, maps.sites(), strict=True):
        w = weights.float().numpy()  # (N, H, Lq, Lk)
        causal = stack == "decoder" and kind == "self"
        for layer in range(w.shape[0]):
            sites.append({"site": f"{stack}.{layer}.{kind}", "stack": stack, "layer": layer,
                          "kind": kind, "heads": [_head(kind, causal, w[layer, h], q, k)
                                                  for h in range(w.shape[1])]})
    return sites


def inspect_translation(translator: Translator, text: str, *, beam: int = 1
                        ) -> tuple[dict[str, Any], Translation]:
    """The report (JSON-able) and the translation (with ``.maps``) of ``text``."""
    t = translator.translate(text, beam=beam, attention=True)
    assert t.maps is not None  # attention=True on a Transformer
    cfg = translator.model.cfg
    report = {
        "model": {"arch": "transformer", "folder": str(translator.folder), "layers": cfg.layers,
                  "heads": cfg.heads, "d_model": cfg.d_model, "positions": cfg.positions,
                  "norm": cfg.norm},
        "source": text, "source_tokens": t.source_tokens, "translation": t.text,
        "decoder_tokens": t.maps.decoder_tokens, "target_labels": t.target_labels,
        "unknown": t.unknown, "sites": describe_heads(t.maps),
    }
    return report, t
