"""One call per user-facing job, returning JSON-ready dicts: shared by the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.inspect.analysis import focused_heads, top_attended, top_attended_dict
from attnlab.inspect.attention_cache import AttentionCache, capture, find_token
from attnlab.inspect.attention_rollout import rollout
from attnlab.inspect.inspection_report import (
    BackendCheck,
    Focus,
    FocusedHead,
    Generated,
    InspectReport,
    LayerTop,
    ModelInfo,
    TokenWeight,
    token_weights,
)
from attnlab.inspect.llm.generation_capture import generate
from attnlab.models.loading import LoadedModel

SEED_TEXT = "The animal didn't cross the street because it was too tired"
SEED_TEXT_B = "The animal didn't cross the street because it was too wide"
SEED_FOCUS = "it"


@dataclass(frozen=True)
class InspectResult:
    cache: AttentionCache
    report: InspectReport  # its focus.position is the focus token's index


def check_head(lm: LoadedModel, layer: int | None, head: int | None) -> None:
    if (layer is None) != (head is None) and head is not None:
        raise ValueError("--head: expected --layer too (e.g. --layer 3 --head 1)")
    if layer is not None and not 0 <= layer < lm.num_layers:
        raise ValueError(f"--layer: expected 0..{lm.num_layers - 1}, got {layer}")
    if head is not None and not 0 <= head < lm.num_heads:
        raise ValueError(f"--head: expected 0..{lm.num_heads - 1}, got {head}")


def _rollout_top(cache: AttentionCache, focus: int, k: int) -> list[dict[str, Any]]:
    if cache.weights.shape[-1] != cache.weights.shape[-2]:
        return []
    row = rollout(cache.weights)[focus]  # (T,)
    idx = row.argsort(descending=True)[:k].tolist()
    return [{"position": j, "token": cache.tokens[j], "weight": round(float(row[j]), 6)} for j in idx]


def inspect_text(lm: LoadedModel, text: str | None = None, *, focus: str | None = None, k: int = 3,
                 truncate: bool = False, generate_tokens: int = 0, flow: bool = False,
                 backend: str = "auto") -> InspectResult:
    """Capture ``text`` (default: "The animal didn't cross the street because it was too tired")
    and analyse ``focus`` (default "it" for it).

    ``generate_tokens`` > 0 (decoders): greedy-decode that many tokens first and inspect the
    prompt plus the continuation, with each step's attention.
    """
    if text is None:
        text = SEED_TEXT
        focus = SEED_FOCUS if focus is None else focus
    generated = None
    enc = lm.encode(text, truncate=truncate)
    _check_capture_size(lm, len(enc), generate_tokens)
    if generate_tokens:
        gen = generate(lm, enc, max_new_tokens=generate_tokens)
        cache = gen.as_cache(lm)
        generated = Generated(gen.new_tokens, gen.new_ids, lm.tokenizer.decode(gen.new_ids))
    else:
        cache = capture(lm, enc, keep_hidden=True)
    enc = cache.encoded
    check = None if backend == "auto" else _backend_check(lm, cache, backend)
    pos = None if focus is None else find_token(enc, focus)
    # The focus parts stay empty (and out of to_dict) without a focus token.
    tops: list[LayerTop] = []
    heads: list[FocusedHead] = []
    roll: list[TokenWeight] = []
    flow_top: list[TokenWeight] | None = None
    if pos is not None:
        tops = [LayerTop(lay["layer"], token_weights(lay["mean"]), [token_weights(h) for h in lay["heads"]])
                for lay in top_attended_dict(top_attended(cache, pos, k))["layers"]]
        heads = [FocusedHead(**h) for h in focused_heads(cache, pos, n=5)]
        roll = token_weights(_rollout_top(cache, pos, k + 2))
        if flow:
            flow_top = _flow_top(cache, pos, k + 2)
    report = InspectReport(ModelInfo.from_dict(lm.describe()), text, enc.labels, enc.special,
                           enc.truncated, enc.total_tokens, list(cache.weights.shape), generated,
                           backend_check=check, focus=None if pos is None else Focus(enc.labels[pos], pos),
                           top_attended=tops, focused_heads=heads, rollout=roll, flow=flow_top)
    return InspectResult(cache, report)


MAX_CAPTURE_BYTES = 2_000_000_000  # every layer's and head's (T, T) weights are held at once


def _check_capture_size(lm: LoadedModel, n_text: int, generate_tokens: int) -> None:
    """Refuse before running what could not be held: an LLM's context (8192 for SmolLM2) x 30
    layers x 9 heads of float32 weights is 72 GB."""
    n = min(n_text + generate_tokens, lm.max_tokens)  # generation stops at the context
    need = lm.num_layers * lm.num_heads * n * n * 4
    if need > MAX_CAPTURE_BYTES:
        what = (f"generate_tokens: {n_text} text tokens + {generate_tokens:,} generated"
                if generate_tokens else f"text: {n_text:,} tokens")
        raise ValueError(f"{what} x {lm.num_layers} layers x {lm.num_heads} heads of weights need "
                         f"{need / 1e9:.1f} GB; expected at most {MAX_CAPTURE_BYTES / 1e9:.0f} GB: "
                         "inspect a shorter text or generate fewer tokens")


def _backend_check(lm: LoadedModel, cache: AttentionCache, backend: str) -> BackendCheck:
    if cache.hidden_states is None:
        raise ValueError("--backend: expected a plain forward pass, not --generate")
    # Weights come from the eager kernel (the only one that returns them); the chosen
    # backend runs the same pretrained model and must give the same hidden states.
    out = lm.forward(cache.encoded, need_weights=False, backend=backend)
    diff = float((out.last_hidden_state[0] - cache.hidden_states[-1]).abs().max())
    return BackendCheck(backend, diff)


def _flow_top(cache: AttentionCache, focus: int, k: int) -> list[TokenWeight]:
    from attnlab.inspect.flow import attention_flow

    row = attention_flow(cache.weights, queries=[focus])[0]
    idx = row.argsort(descending=True)[:k].tolist()
    return [TokenWeight(cache.tokens[j], round(float(row[j]), 6), j) for j in idx]


def head_patterns(cache: AttentionCache) -> list[list[dict[str, Any]]]:
    """The viz classifier's label and top score for every head."""
    from attnlab.viz.patterns import classify_heads

    return [[{"label": r.label, "score": round(r.top.score, 4)} for r in row]
            for row in classify_heads(cache.weights.double().numpy())]


def export_attention(cache: AttentionCache, path: str | Path, precision: int | None = 6) -> Path:
    """Every weight, in viz's ``attnlab.attention`` JSON schema (``attnlab.viz.load_json`` reads it)."""
    from attnlab.viz import export_json

    export_json(cache.weights.double().numpy(), cache.tokens, q_tokens=cache.query_labels,
                metadata=cache.metadata(), precision=precision, path=path)
    return Path(path)
