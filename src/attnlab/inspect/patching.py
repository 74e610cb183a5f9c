"""Read or patch a real model's attention and see what changes downstream.

Three interventions, all through the model's public hook points or score_mods (nothing is
monkey-patched, nothing stays registered after the call):

- **read scores**: a score_mod that records the pre-softmax scores of each layer and returns
  them unchanged (``record_scores``);
- **ablate a head**: replace its context (the ``attn.z`` hook point, (B, H, Lq, Dh))
  by zeros or by its mean over positions (mean ablation keeps the bias the head adds);
- **replace a pattern**: a score_mod that sets the head's scores to log(pattern), so the
  softmax returns exactly ``pattern`` (rows summing to 1) and the head mixes its values with
  it. The returned weights show the patched pattern.

:func:`patch_effect` runs the model with and without the interventions and reports how far
the output moved: cosine similarity of the mean-pooled sentence embeddings, per-token change
of the last hidden state and, for decoders, the next-token prediction before and after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.models.common import TransformerOutput
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded


@dataclass(frozen=True)
class Ablation:
    layer: int
    head: int
    mode: Literal["zero", "mean"] = "zero"


@dataclass(frozen=True)
class PatternPatch:
    layer: int
    head: int
    pattern: Tensor  # (Lq, Lk), rows sum to 1; zeros are keys the head must not see


def _require_native(lm: LoadedModel, what: str) -> None:
    if not lm.hookable:
        raise ValueError(f"{what}: needs attnlab's own model code (bert, roberta, gpt2, llama) or a "
                         f"transformers model whose attention runs through attnlab; {lm.name} runs through "
                         f"the transformers fallback with eager attention")


def _check_head(lm: LoadedModel, layer: int, head: int, what: str) -> None:
    if not (isinstance(layer, int) and 0 <= layer < lm.num_layers):
        raise ValueError(f"{what}: expected a layer in 0..{lm.num_layers - 1}, got {layer!r}")
    if not (isinstance(head, int) and 0 <= head < lm.num_heads):
        raise ValueError(f"{what}: expected a head in 0..{lm.num_heads - 1}, got {head!r}")


@contextlib.contextmanager
def ablated(lm: LoadedModel, ablations: Sequence[Ablation]) -> Iterator[None]:
    """Within the block, the given heads' outputs are zeroed (or mean-ablated)."""
    _require_native(lm, "ablate")
    by_layer: dict[int, list[Ablation]] = {}
    for a in ablations:
        _check_head(lm, a.layer, a.head, "ablate")
        if a.mode not in ("zero", "mean"):
            raise ValueError(f"ablate: expected mode 'zero' or 'mean', got {a.mode!r}")
        by_layer.setdefault(a.layer, []).append(a)

    def make_hook(items: list[Ablation]):
        def hook(z: Tensor, _hook: object) -> Tensor:  # z: (B, H, Lq, Dh)
            z = z.clone()
            for a in items:
                if a.mode == "zero":
                    z[:, a.head] = 0.0
                else:  # mean over positions: (B, Lq, Dh) -> (B, 1, Dh)
                    z[:, a.head] = z[:, a.head].mean(dim=1, keepdim=True)
            return z
        return hook

    model = lm.model
    with model.hooks([(model.hook_name(layer, "attn.z"), make_hook(items))
                      for layer, items in by_layer.items()]):
        yield


def pattern_score_mods(lm: LoadedModel, patches: Sequence[PatternPatch]) -> dict[int, Any]:
    """score_mods that make each patched head's softmax return its given pattern."""
    _require_native(lm, "replace pattern")
    by_layer: dict[int, list[PatternPatch]] = {}
    for p in patches:
        _check_head(lm, p.layer, p.head, "replace pattern")
        if not isinstance(p.pattern, Tensor) or p.pattern.ndim != 2:
            raise ValueError(f"pattern: expected a (q_len, k_len) tensor, got {type(p.pattern).__name__}")
        sums = p.pattern.sum(-1)
        if bool((p.pattern < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ValueError("pattern: expected non-negative rows that sum to 1 (a softmax output)")
        by_layer.setdefault(p.layer, []).append(p)

    def make(items: list[PatternPatch]):
        def score_mod(scores: Tensor, b, h, q, kv) -> Tensor:  # scores: (B, H, Lq, Lk)
            out = scores.clone()
            for p in items:
                if p.pattern.shape != scores.shape[-2:]:
                    raise ValueError(f"pattern: expected shape {tuple(scores.shape[-2:])} for layer "
                                     f"{p.layer}, got {tuple(p.pattern.shape)}")
                # softmax(log P) = P / ΣP = P: zeros become -inf and get exact zero weight.
                out[:, p.head] = torch.log(p.pattern.to(scores.dtype))
            return out
        return score_mod

    return {layer: make(items) for layer, items in by_layer.items()}


def record_scores(lm: LoadedModel, enc: Encoded) -> tuple[Tensor, TransformerOutput]:
    """Every layer's pre-softmax scores (L, H, Lq, Lk) (after scaling, before masking)."""
    _require_native(lm, "record scores")
    seen: dict[int, Tensor] = {}

    def make(layer: int):
        def score_mod(scores: Tensor, b, h, q, kv) -> Tensor:
            seen[layer] = scores[0].detach().clone()  # (H, Lq, Lk)
            return scores
        return score_mod

    out = lm.forward(enc, need_weights=True, score_mods={i: make(i) for i in range(lm.num_layers)})
    return torch.stack([seen[i] for i in range(lm.num_layers)]), out


@dataclass
class PatchEffect:
    """How far an intervention moved the model's output."""

    sentence_cosine: float  # cos(mean-pooled last hidden state before, after)
    token_cosine: list[float]  # per token
    max_abs_change: float  # of the last hidden state
    next_token: dict[str, Any] | None = None  # decoders: top prediction before/after, KL
    baseline: TransformerOutput | None = field(default=None, repr=False)
    patched: TransformerOutput | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"sentence_cosine": self.sentence_cosine, "token_cosine": self.token_cosine,
                "max_abs_change": self.max_abs_change, "next_token": self.next_token}


def patch_effect(lm: LoadedModel, text: str | Encoded, *, ablate: Sequence[Ablation] = (),
                 patterns: Sequence[PatternPatch] = ()) -> PatchEffect:
    """Run ``text`` clean and patched; compare the outputs."""
    _require_native(lm, "patch")
    if not ablate and not patterns:
        raise ValueError("patch: expected at least one ablation or pattern, got none")
    enc = text if isinstance(text, Encoded) else lm.encode(text)
    base = lm.forward(enc, need_weights=True)
    mods = pattern_score_mods(lm, patterns) if patterns else None
    with ablated(lm, ablate):
        new = lm.forward(enc, need_weights=True, score_mods=mods)
    a, b = base.last_hidden_state[0], new.last_hidden_state[0]  # (T, E)
    tok_cos = F.cosine_similarity(a, b, dim=-1)  # (T,)
    sent = F.cosine_similarity(a.mean(0), b.mean(0), dim=0)
    nt = None
    if base.logits is not None and new.logits is not None:
        pa, pb = base.logits[0, -1].log_softmax(-1), new.logits[0, -1].log_softmax(-1)  # (V,)
        ia, ib = int(pa.argmax()), int(pb.argmax())
        nt = {"before": lm.tokenizer.label(lm.tokenizer.id_to_token(ia)),
              "after": lm.tokenizer.label(lm.tokenizer.id_to_token(ib)),
              "p_before": float(pa[ia].exp()), "p_after_of_before": float(pb[ia].exp()),
              "kl": float(F.kl_div(pb, pa, log_target=True, reduction="sum"))}
    return PatchEffect(float(sent), [float(x) for x in tok_cos], float((a - b).abs().max()), nt, base, new)
