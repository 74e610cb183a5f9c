"""Read the residual stream in the vocabulary: the logit lens and direct logit attribution.

- :func:`logit_lens` (nostalgebraist 2020, "interpreting GPT: the logit lens"): what the model
  would predict if it stopped after layer l — ``unembed(final_norm(resid_post_l))`` at one
  position. Each layer's stream goes through the final norm with its own scale, as the model's
  last layer does; the last row equals the model's logits.
- :func:`direct_logit_attribution` (Elhage et al. 2021, "A Mathematical Framework for
  Transformer Circuits", §"direct path"): the final residual stream is a sum of what the
  embeddings, each head and each MLP wrote; with the final norm's scale frozen at its value on
  the final stream (TransformerLens's ``apply_ln_to_stack``), the norm is linear, so each part's
  share of a logit (or logit difference) is ``norm_lin(part) · W_U[answer]``. The shares add up
  to the logit minus the norm's bias term exactly (tested).

Both reach the model through its hook points (``run_with_cache``) and the CausalLM contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.arguments import expect_int
from attnlab.models.contract import CausalLM, as_causal_lm
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded


def input_ids(lm: LoadedModel, text: str | Encoded | Tensor, name: str = "text") -> Tensor:
    """A text, an encoding or token ids (L,) as a (1, L) batch of ids (no chat template), on the
    model's device."""
    if isinstance(text, Tensor):
        if text.ndim != 1 or text.dtype not in (torch.int64, torch.int32) or text.numel() == 0:
            raise ValueError(f"{name}: expected token ids (L,) or a string, "
                             f"got {text.dtype} {tuple(text.shape)}")
        return text.view(1, -1).long().to(lm.device)  # (1, L)
    enc = text if isinstance(text, Encoded) else lm.encode(text, name=name)
    return torch.tensor([enc.ids], device=lm.device)  # (1, L)


def _position(pos: int, n: int) -> int:
    return expect_int("position", pos, -n, n - 1) % n


def _token(lm: LoadedModel, name: str, t: int | str) -> int:
    if isinstance(t, str):
        ids = lm.tokenizer.piece_ids(t)
        if len(ids) != 1:
            raise ValueError(f"{name}: expected a single token, got {t!r} ({len(ids)} tokens)")
        return ids[0]
    v = as_causal_lm(lm.model).vocab_size
    return expect_int(name, t, 0, v - 1, expected=f"a token id in 0..{v - 1} or a one-token string")


def _final_norm(model: CausalLM) -> nn.Module:
    norm = getattr(model, "final_norm", None)
    if not isinstance(norm, nn.Module):
        raise ValueError(f"model: expected a final norm (final_norm), {type(model).__name__} has none")
    return norm


@dataclass
class LogitLens:
    """Per layer (embeddings first), the log-probabilities at one position."""

    layers: list[str]  # "embed", "0", ..., "L-1"
    log_probs: Tensor  # (L + 1, V) float32
    position: int
    tokens: list[str]  # labels of the input

    def top(self, k: int = 5) -> list[list[tuple[int, float]]]:
        """Per layer, the k most likely (id, probability)."""
        p, i = self.log_probs.exp().topk(k, dim=-1)  # (L + 1, k)
        return [list(zip(i[r].tolist(), p[r].tolist(), strict=True)) for r in range(len(self.layers))]

    def rank(self, token_id: int) -> list[int]:
        """Per layer, the rank of ``token_id`` (0 = the top prediction)."""
        lp = self.log_probs  # (L + 1, V)
        return (lp > lp[:, token_id : token_id + 1]).sum(-1).tolist()

    def to_dict(self, lm: LoadedModel | None = None, k: int = 5) -> dict[str, Any]:
        def label(i: int) -> str:
            return str(i) if lm is None else lm.tokenizer.label(lm.tokenizer.id_to_token(i))

        layers = [{"layer": name, "top": [{"token": label(i), "id": i, "p": round(p, 6)} for i, p in row]}
                  for name, row in zip(self.layers, self.top(k), strict=True)]
        return {"position": self.position, "token": self.tokens[self.position], "layers": layers}


@torch.inference_mode()
def logit_lens(lm: LoadedModel, text: str | Encoded | Tensor, *, position: int = -1) -> LogitLens:
    """The model's prediction at ``position`` read after the embeddings and after each layer."""
    model = as_causal_lm(lm.model, "--model")
    ids = input_ids(lm, text)
    pos = _position(position, ids.shape[1])
    names = [model.hook_name(0, "resid_pre")] + [model.hook_name(i, "resid_post")
                                                  for i in range(model.num_layers)]
    _, cache = model.run_with_cache(ids, names_filter=names, logits_to_keep=1)
    stream = torch.stack([cache[n][0, pos] for n in names])  # (L + 1, E)
    logits = model.unembed(_final_norm(model)(stream)).float()  # (L + 1, V)
    labels = lm.tokenizer.encode_ids(ids[0].tolist(), "").labels
    layers = ["embed"] + [str(i) for i in range(model.num_layers)]
    return LogitLens(layers, logits.log_softmax(-1).cpu(), pos, labels)


@dataclass
class Attribution:
    """Each part's direct share of ``logit[answer] - logit[wrong]`` at one position."""

    parts: list[str]  # "embed", "L3H5", "L3 attn bias", "L3 mlp", ...
    values: Tensor  # (n_parts,) float64
    heads: Tensor  # (layers, heads): the per-head values laid out as a grid
    mlp: Tensor  # (layers,)
    constant: float  # the final norm's bias term (not written by any part)
    total: float  # the logit difference the model computed

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        order = self.values.abs().argsort(descending=True)[:k].tolist()
        return {"total": self.total, "constant": self.constant, "sum_of_parts": float(self.values.sum()),
                "top": [{"part": self.parts[i], "value": float(self.values[i])} for i in order]}


def _linearised_norm(norm: nn.Module, final: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(scale s, weight w, bias b, centre) with norm(x) = (centre(x) · s) ⊙ w + b at ``final`` (E,)."""
    if isinstance(norm, nn.LayerNorm):
        var = final.var(-1, unbiased=False)
        s = torch.rsqrt(var + norm.eps)
        w = norm.weight if norm.weight is not None else torch.ones_like(final)
        b = norm.bias if norm.bias is not None else torch.zeros_like(final)
        return s, w, b, True
    scale = getattr(norm, "scale", None)
    if scale is None:
        raise ValueError(f"model: expected a final RMSNorm or LayerNorm, got {type(norm).__name__}")
    weight: Tensor = norm.weight  # type: ignore[assignment]  # RMSNorm's Parameter
    w_eff = weight + float(getattr(norm, "offset", 0.0))  # Gemma's (1 + w)
    return scale(final).squeeze(-1), w_eff, torch.zeros_like(final), False  # scale (..., 1) -> (...)


@torch.inference_mode()
def direct_logit_attribution(lm: LoadedModel, text: str | Encoded | Tensor, answer: int | str,
                             wrong: int | str | None = None, *, position: int = -1) -> Attribution:
    """Split ``logit[answer] - logit[wrong]`` (or ``logit[answer]``) at ``position`` into what the
    embeddings, each head and each MLP wrote directly into the final residual stream."""
    model = as_causal_lm(lm.model, "--model")
    ids = input_ids(lm, text)
    pos = _position(position, ids.shape[1])
    a = _token(lm, "answer", answer)
    rows = [a] if wrong is None else [a, _token(lm, "wrong", wrong)]
    w_u = model.output_embedding(torch.tensor(rows, device=ids.device)).double()  # (1 or 2, E): rows of W_U
    direction = w_u[0] if wrong is None else w_u[0] - w_u[1]  # (E,)
    L = model.num_layers
    names = [model.hook_name(0, "resid_pre")] + [model.hook_name(i, s) for i in range(L)
                                                  for s in ("attn.z", "attn_out", "mlp_out", "resid_post")]
    out, cache = model.run_with_cache(ids, names_filter=names)
    final = cache.site(L - 1, "resid_post")[0, pos].double()  # (E,)
    s, w, b, centre = _linearised_norm(_final_norm(model), final)
    readout = (w.double() * direction) * s.double()  # (E,): d logit / d part, norm frozen

    def share(x: Tensor) -> Tensor:  # (..., E) -> (...), on the CPU (where the result is kept)
        x = x.double()
        return (((x - x.mean(-1, keepdim=True)) if centre else x) @ readout).cpu()

    parts, values = ["embed"], [share(cache[names[0]][0, pos])]
    heads = torch.zeros(L, model.num_heads, dtype=torch.float64, device="cpu")
    mlp = torch.zeros(L, dtype=torch.float64, device="cpu")
    for i in range(L):
        attn = model.attention_module(i)
        z = cache.site(i, "attn.z")[0, :, pos]  # (H, Dh)
        H, Dh = z.shape
        w_o = attn.out_proj.weight.view(-1, H, Dh)  # (E, H·Dh) -> (E, H, Dh)
        per_head = torch.einsum("hd,ehd->he", z.double(), w_o.double())  # (H, E)
        bias = attn.out_proj.bias
        written = per_head.sum(0) + (0 if bias is None else bias.double())  # (E,)
        if not torch.allclose(written, cache.site(i, "attn_out")[0, pos].double(), atol=1e-4, rtol=1e-4):
            raise ValueError(f"model: layer {i}'s attention output is not the sum of its heads (a norm after "
                             f"attention, as in Gemma 3, makes it nonlinear); per-head attribution needs "
                             f"a model whose heads add into the residual stream")
        heads[i] = share(per_head)
        parts += [f"L{i}H{h}" for h in range(H)]
        values += list(heads[i])
        if bias is not None:
            parts.append(f"L{i} attn bias")
            values.append(share(bias))
        mlp[i] = share(cache.site(i, "mlp_out")[0, pos])
        parts.append(f"L{i} mlp")
        values.append(mlp[i])
    logits = out.logits[0, pos].double()  # (V,)
    total = float(logits[rows[0]] - (logits[rows[1]] if len(rows) == 2 else 0.0))
    kept = torch.stack([torch.as_tensor(v, dtype=torch.float64, device="cpu") for v in values])  # (n_parts,)
    return Attribution(parts, kept,
                       heads, mlp, float(b.double() @ direction), total)
