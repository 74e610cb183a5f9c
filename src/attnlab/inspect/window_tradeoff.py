"""Global versus local attention, measured on a real model (Luong et al.'s trade-off).

The model runs once with full attention and once per window width w with every layer limited
to a sliding window (``attnlab.masks.sliding_window``: keys i−w..i+w for encoders, i−w..i for
decoders, on top of their causal mask). Nothing is retrained: this measures how much the
pretrained model relies on attention beyond w tokens. For each width:

- ``cosine``       cosine similarity of the mean-pooled last hidden states (the sentence
                   embedding all-MiniLM-L6-v2 is trained to produce) with the full model's;
- ``top1_agree``   fraction of (layer, head, query) whose most attended key is the same;
- ``coverage``     share of the full model's attention mass that falls inside the window —
                   the part local attention can keep at all;
- ``keys``         mean number of keys a query may see (the cost, vs T for full attention).

``global_first=True`` also lets every query see the first token ([CLS], or a decoder's
attention sink), as Longformer's global tokens do (Beltagy et al. 2020): pretrained models
park much attention there, so a window that cuts it off measures that loss as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.functional.masks import Mask, as_mask, materialize, sliding_window
from attnlab.inspect.attention_cache import stack_weights
from attnlab.inspect.heads import PROBE_TEXTS
from attnlab.models.loading import LoadedModel

DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32)
# A longer text than the probes, so that wide windows still differ from full attention.
LONG_TEXT = (
    "Attention lets a model decide, for every word, which other words matter. In the sentence "
    "about the animal that did not cross the street, the word it must be linked to the animal "
    "when the animal was too tired, and to the street when the street was too wide. A model that "
    "only looks at nearby words cannot make that link when the two words are far apart, so local "
    "attention is cheaper but loses exactly the long-range connections that resolve meaning."
)


@dataclass(frozen=True)
class TradeoffRow:
    width: int | None  # None = full attention
    keys: float
    cosine: float
    top1_agree: float
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "keys": round(self.keys, 3), "cosine": round(self.cosine, 6),
                "top1_agree": round(self.top1_agree, 4), "coverage": round(self.coverage, 4)}


def _pooled(h: Tensor) -> Tensor:
    return h[0].mean(0)  # (T, E) -> (E,): mean pooling, as sentence-transformers does


def window_mask(width: int, decoder: bool, global_first: bool = False) -> Mask:
    """Keys i−w..i+w (encoders) or i−w..i (decoders), optionally plus the first token."""
    m = sliding_window(width, 0 if decoder else width)
    return m | as_mask(lambda b, h, q, kv: kv == 0, "first_token") if global_first else m


def tradeoff(lm: LoadedModel, texts: list[str] | None = None, widths: list[int] | None = None,
             *, truncate: bool = False, global_first: bool = False) -> list[TradeoffRow]:
    """One row for full attention and one per width, averaged over ``texts``."""
    if not lm.native:
        raise ValueError("tradeoff: needs attnlab's own model code (bert, roberta, gpt2) to put a "
                         f"window mask into every layer; {lm.name} runs through transformers")
    ws = list(widths) if widths else list(DEFAULT_WIDTHS)
    for w in ws:
        expect_int("widths", w, 0, expected="non-negative ints", got=ws)
    encs = [lm.encode(t, truncate=truncate) for t in (texts or [*PROBE_TEXTS, LONG_TEXT])]
    decoder = lm.kind == "decoder"
    acc: dict[int | None, list[tuple[float, float, float, float]]] = {None: [], **{w: [] for w in ws}}
    for enc in encs:
        full = lm.forward(enc, need_weights=True)
        fw = stack_weights(full.attentions)  # (L, H, T, T)
        T = fw.shape[-1]
        acc[None].append((float(T if not decoder else (T + 1) / 2), 1.0, 1.0, 1.0))
        for w in ws:
            mask = window_mask(w, decoder, global_first)
            out = lm.forward(enc, need_weights=True, mask=mask)
            lw = stack_weights(out.attentions)  # (L, H, T, T)
            allowed = materialize(mask, T, T)[0, 0]  # (T, T) bool
            if decoder:
                allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
            cos = float(F.cosine_similarity(_pooled(full.last_hidden_state),
                                            _pooled(out.last_hidden_state), dim=0))
            agree = float((fw.argmax(-1) == lw.argmax(-1)).float().mean())
            coverage = float((fw * allowed).sum(-1).mean())
            acc[w].append((float(allowed.sum(-1).float().mean()), cos, agree, coverage))
    rows = []
    for width, vals in acc.items():
        m = torch.tensor(vals).mean(0)
        rows.append(TradeoffRow(width, float(m[0]), float(m[1]), float(m[2]), float(m[3])))
    return rows
