"""Capture a real model's attention: an :class:`AttentionCache` indexed by layer and head.

``capture(lm, text)`` runs the model once and keeps every layer's per-head weights with the
token labels; ``cache[layer, head]`` is a (q_len, k_len) matrix, ``cache[layer]`` all heads of
a layer. Decoding with attention kept is :func:`attnlab.inspect.llm.generation_capture.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded, normalize_token


@dataclass
class AttentionCache:
    """Attention of one text: ``weights`` (layers, heads, q_len, k_len) plus tokens."""

    weights: Tensor  # (L, H, Lq, Lk) float32, rows sum to 1 (or 0 where fully masked)
    encoded: Encoded
    hidden_states: Tensor | None = None  # (L + 1, T, E): embeddings, then each layer
    model: str = ""
    kind: str = "encoder"
    q_labels: list[str] | None = None  # set when queries differ from keys (generation)

    def __getitem__(self, index: Any) -> Tensor:
        """``cache[layer]`` (H, Lq, Lk), ``cache[layer, head]`` (Lq, Lk); negatives count from the end."""
        if isinstance(index, tuple):
            if len(index) != 2:
                raise IndexError(f"cache: expected cache[layer] or cache[layer, head], "
                                 f"got {len(index)} indices")
            layer, head = index
            return self.head(layer, head)
        return self.weights[self._layer(index)]

    def _layer(self, layer: int) -> int:
        n = self.num_layers
        return expect_int("layer", layer, -n, n - 1, expected=f"an int in 0..{n - 1}", error=IndexError) % n

    def _head(self, head: int) -> int:
        n = self.num_heads
        return expect_int("head", head, -n, n - 1, expected=f"an int in 0..{n - 1}", error=IndexError) % n

    def head(self, layer: int, head: int) -> Tensor:
        return self.weights[self._layer(layer), self._head(head)]  # (Lq, Lk)

    @property
    def num_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def num_heads(self) -> int:
        return self.weights.shape[1]

    @property
    def tokens(self) -> list[str]:
        """Key labels (= query labels for one forward pass)."""
        return self.encoded.labels

    @property
    def query_labels(self) -> list[str]:
        return self.q_labels if self.q_labels is not None else self.encoded.labels

    def find(self, token: str, occurrence: int = 1) -> int:
        """Position of ``token`` (matched without sub-word markers, case-insensitively).

        ``token`` may also be ``"it#2"`` (second occurrence) or ``"@10"`` (position 10).
        """
        return find_token(self.encoded, token, occurrence)

    def to_numpy(self):
        return self.weights.detach().cpu().numpy()

    def metadata(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "text": self.encoded.text,
                "truncated": self.encoded.truncated}


def find_token(enc: Encoded, token: str, occurrence: int = 1, *, name: str = "focus") -> int:
    """Position of a token named by the user; a ValueError lists the tokens when it is absent."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError(f"{name}: expected a token of the text, got {token!r}")
    t = token.strip()
    if t.startswith("@") and t[1:].isdigit():
        pos = int(t[1:])
        if pos >= len(enc):
            raise ValueError(f"{name}: expected a position in 0..{len(enc) - 1}, got {pos}")
        return pos
    if "#" in t[1:]:
        word, _, nth = t.rpartition("#")
        if nth.isdigit() and int(nth) >= 1:
            t, occurrence = word, int(nth)
    want = normalize_token(t)
    exact = [i for i, lab in enumerate(enc.labels) if lab.strip() == t]
    loose = [i for i, lab in enumerate(enc.tokens) if normalize_token(lab) == want]
    hits = exact or loose
    if len(hits) < occurrence:
        shown = ", ".join(repr(lab) for lab in enc.labels)
        which = f" (occurrence {occurrence}; it appears {len(hits)} time(s))" if hits else ""
        raise ValueError(f"{name}: {token!r} is not a token of the text{which}; the tokens are: {shown}")
    return hits[occurrence - 1]


def stack_weights(attentions: Sequence[Tensor] | None, index: int = 0) -> Tensor:
    """A model's per-layer (B, H, Lq, Lk) weights as one (L, H, Lq, Lk) tensor for batch ``index``."""
    if attentions is None:
        raise ValueError("attentions: expected weights, got None (run with need_weights=True)")
    return torch.stack([a[index] for a in attentions]).float()  # (L, H, Lq, Lk)


def capture(lm: LoadedModel, text: str | Encoded, *, truncate: bool = False, mask: object = None,
            score_mods: Any = None, backend: str = "auto", keep_hidden: bool = True) -> AttentionCache:
    """Run ``lm`` on ``text`` and keep every head's weights (and the hidden states)."""
    enc = text if isinstance(text, Encoded) else lm.encode(text, truncate=truncate)
    out = lm.forward(enc, need_weights=True, mask=mask, score_mods=score_mods, backend=backend)
    hidden = torch.stack([h[0] for h in out.hidden_states]) if keep_hidden else None  # (L+1, T, E)
    return AttentionCache(stack_weights(out.attentions), enc, hidden, lm.name, lm.kind)
