"""Generate with a decoder LLM and capture its attention inside the real decode loop.

``generate_text(lm, "How do attention heads work?")`` renders the chat template (a ChatML turn
for SmolLM2), prefills the prompt once, then feeds one token per step through the KV cache.
Greedy decoding or seeded sampling (temperature, nucleus top-p: Holtzman et al. 2020); stops
at the end-of-turn token. With ``capture=True`` an :class:`AttentionRecorder` keeps every fed
position's attention row per layer and head as the forward pass computes it (fp16, chosen
layers/heads) — no second forward after generation, unlike tools that recompute.

``mask`` and ``score_mods`` reach every forward pass, prefill and decode alike: this is how
attention knockout (mask keys out) and steering (PASTA-style score_mods) run during generation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int, expect_positive_int
from attnlab.inspect.recorder import AttentionRecorder
from attnlab.models.contract import as_causal_lm
from attnlab.models.fast_decode import choose_decoder
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded

OnToken = Callable[[str], None]


@dataclass(frozen=True)
class Sampling:
    """Greedy (argmax) when ``greedy``; else softmax(logits / temperature) cut to the smallest
    set of tokens whose probability reaches ``top_p``, drawn with a generator seeded by ``seed``."""

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            raise ValueError(f"temperature: expected a number > 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        expect_int("seed", self.seed, 0, 2**63 - 1, expected="an int in 0..2**63-1")


def next_token(logits: Tensor, sampling: Sampling, gen: torch.Generator | None) -> int:
    """One id from (V,) logits. Sampling runs on the CPU with a CPU generator, whatever the
    model's device: the same seed draws the same tokens from the same logits everywhere."""
    if sampling.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.double().cpu() / sampling.temperature, dim=-1)  # (V,)
    if sampling.top_p < 1:
        p, idx = probs.sort(descending=True)
        keep = (p.cumsum(0) - p) < sampling.top_p  # tokens before which mass < top_p: >= 1 kept
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


@dataclass
class Generation:
    prompt: Encoded  # the rendered prompt (chat template applied), tokenised
    new_ids: list[int]
    new_labels: list[str]  # readable label per generated token
    text: str  # decoded answer (without the end-of-turn token)
    stop_reason: str  # "eos" | "max_new_tokens" | "context"
    recorder: AttentionRecorder | None = None
    timings: dict[str, Any] = field(default_factory=dict)  # prefill_s, decode_s, tokens_per_s, decode_kernel
    model: str = ""

    @property
    def labels(self) -> list[str]:
        """Labels of every position: the prompt's tokens, then the generated ones."""
        return self.prompt.labels + self.new_labels

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt.text,
            "prompt_tokens": len(self.prompt),
            "answer": self.text,
            "new_tokens": len(self.new_ids),
            "new_ids": self.new_ids,
            "stop_reason": self.stop_reason,
            "timings": self.timings,
        }
        if self.recorder is not None:
            out["capture"] = {
                "layers": self.recorder.layers,
                "heads": self.recorder.heads,
                "kv_group": self.recorder.kv_group,
                "rows": len(self.recorder),
                "bytes": self.recorder.nbytes,
            }
        return out


def render_prompt(lm: LoadedModel, prompt: str, *, system: str | None = None, chat: bool = True) -> str:
    """The text the model reads: the chat template applied to one user turn, or ``prompt`` raw."""
    if not isinstance(prompt, str) or not prompt.strip():
        given = repr(prompt) if not isinstance(prompt, str) else (
            f"only whitespace ({len(prompt):,} characters)" if prompt else "an empty string")
        raise ValueError(f"prompt: expected some text, got {given}")
    if not chat or lm.chat_template is None:
        return prompt
    from attnlab.models.gguf_tokenizer import ChatTemplate, chat_messages

    template = ChatTemplate(lm.chat_template)
    text = template.render(chat_messages(prompt, system), add_generation_prompt=True)
    if not text.strip():  # the model's template is at fault, not the prompt the user typed
        raise ValueError(f"{template.source}: expected the chat template to write the conversation, "
                         f"got {'no text' if not text else 'only whitespace'}; fix the model's template, "
                         f"or feed the prompt as is (--raw, chat=False)")
    return text


def user_spans(lm: LoadedModel, text: str, prompt: str, system: str | None,
               special_tokens: bool) -> list[tuple[int, int]]:
    """Where the user's own text (prompt, system message) sits in the rendered ``text``: spans
    whose special-token strings are plain text. Empty when the user may type special tokens
    (``special_tokens``) or typed none. A user who types ``<|im_end|>`` must not close the
    turn and open a forged ``<|im_start|>system`` one (prompt injection)."""
    specials = lm.tokenizer.special_strings()
    typed = [t for t in (prompt, system) if t]
    if special_tokens or not any(s in t for s in specials for t in typed):
        return []
    spans = []
    for name, t in (("prompt", prompt), ("--system", system)):
        if not t:
            continue
        at = text.rfind(t)
        if at < 0:  # the template changed the text: it cannot be read as plain text safely
            raise ValueError(f"{name}: holds special-token text ({', '.join(s for s in specials if s in t)}) "
                             "that the chat template rewrote, so it cannot be kept as plain text; "
                             "remove it, or pass special_tokens=True (--special-tokens) to let it act")
        spans.append((at, at + len(t)))
    return spans


def fit_prompt(lm: LoadedModel, prompt: str, *, system: str | None = None, chat: bool = True,
               max_new_tokens: int = 64, truncate: bool = False, special_tokens: bool = False) -> Encoded:
    """The rendered prompt, tokenised, leaving room in the context for at least one new token.

    ``truncate`` keeps the first tokens of the user's ``prompt`` (not of the rendered text, so
    the chat template and its assistant header survive), leaving room for ``max_new_tokens``.
    Special-token strings typed in ``prompt`` or ``system`` are plain text unless
    ``special_tokens`` (:func:`user_spans`).
    """
    text = render_prompt(lm, prompt, system=system, chat=chat)
    total = len(lm.tokenizer.piece_ids(text))
    if total < lm.max_tokens:
        return lm.encode(text, name="prompt", plain=user_spans(lm, text, prompt, system, special_tokens))
    if not truncate:
        raise ValueError(f"prompt: expected fewer than {lm.max_tokens} tokens (the model's context) to leave "
                         f"room to generate, got {total}; shorten it (attnlab generate --truncate keeps its "
                         f"first tokens)")
    ids = lm.tokenizer.piece_ids(prompt)
    room = max(1, min(max_new_tokens, lm.max_tokens // 2))
    keep = len(ids) - (total - (lm.max_tokens - room))
    if keep < 1:
        raise ValueError(f"--truncate: the chat template and system message alone take {total - len(ids)} of "
                         f"the {lm.max_tokens} tokens; nothing of the prompt fits")
    kept = lm.tokenizer.decode(ids[:keep])
    text = render_prompt(lm, kept, system=system, chat=chat)
    return lm.encode(text, name="prompt", plain=user_spans(lm, text, kept, system, special_tokens))


# Captured attention is N(N+1)/2 x layers x heads fp16 values (inspect/recorder.py): 8,192 positions
# on all 270 heads of SmolLM2 would be 18 GB. Past this, a capture is refused before it starts.
MAX_CAPTURE_BYTES = 2_000_000_000


def capture_limit(n_prompt: int, max_new: int, context: int, n_layers: int, n_heads: int,
                  rows: int = 1) -> str | None:
    """Why capturing attention while generating this much (``rows`` sequences of it, batched)
    cannot be held, or None."""
    n = min(n_prompt + max_new - 1, context)  # positions recorded: generation stops at the context
    need = n * (n + 1) // 2 * n_layers * n_heads * 2 * rows
    if need <= MAX_CAPTURE_BYTES:
        return None
    per = f" x {rows} rows" if rows > 1 else ""
    return (f"--max-new-tokens: capturing attention over up to {n:,} positions (prompt {n_prompt} + "
            f"{max_new:,} new) x {n_layers} layers x {n_heads} heads{per} needs {need / 1e9:.1f} GB (fp16); "
            f"expected at most {MAX_CAPTURE_BYTES / 1e9:.0f} GB: lower --max-new-tokens, or capture "
            f"fewer --layers/--heads (e.g. --layers 0,15,29)")


def check_capture(lm: LoadedModel, n_prompt: int, max_new_tokens: int, n_layers: int | None = None,
                  n_heads: int | None = None, rows: int = 1) -> None:
    """Refuse, before generating, to capture what cannot be held: a prompt of ``n_prompt`` tokens
    and ``max_new_tokens`` more, in ``n_layers`` x ``n_heads`` heads (default: all of them), for
    ``rows`` sequences."""
    n_layers = lm.num_layers if n_layers is None else n_layers
    n_heads = lm.num_heads if n_heads is None else n_heads
    why = capture_limit(n_prompt, max_new_tokens, lm.max_tokens, n_layers, n_heads, rows)
    if why:
        raise ValueError(why)


def eos_ids(lm: LoadedModel) -> set[int]:
    """The ids that end an answer: the model's end-of-sequence ids and the chat's end of turn."""
    ids = set(as_causal_lm(lm.model, "--model").eos_token_ids)
    end_turn = lm.tokenizer.token_id("<|im_end|>")  # ChatML's end of turn
    if end_turn is not None:
        ids.add(end_turn)
    return ids


# inference_mode, not no_grad: no version counters or view tracking on the cache and activations
# (~1.3% of decode time on SmolLM2, measured); the recorded rows are inference tensors.
@torch.inference_mode()
def generate_ids(
    lm: LoadedModel,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    stop_ids: set[int] | None = None,
    mask: object = None,
    score_mods: Any = None,
    recorder: AttentionRecorder | None = None,
    use_cache: bool = True,
    on_token: Callable[[int], None] | None = None,
    on_logits: Callable[[Tensor], None] | None = None,
    backend: str = "auto",
    decode_kernel: str = "auto",
) -> tuple[list[int], str, dict[str, Any]]:
    """The decode loop: returns new ids, the stop reason and timings (with ``decode_kernel``:
    which path decoded, and why not the native one where it did not).

    ``use_cache=False`` re-runs the whole sequence every step (the check that the KV cache
    changes nothing). ``recorder`` turns on weights in the forward passes it hooks.
    ``decode_kernel``: "auto" decodes an int8/int4 Llama or Gemma 3 model through the native kernel
    (:mod:`attnlab.models.fast_decode`) where nothing needs the PyTorch path (no hook, mask,
    score_mods or recorder), "native" insists (an error says why it cannot), "torch" never.
    """
    expect_positive_int("max_new_tokens", max_new_tokens)
    model = as_causal_lm(lm.model, "--model")
    blocker = ("a recorder" if recorder is not None else "a mask" if mask is not None
               else "score_mods" if score_mods is not None else "use_cache=False" if not use_cache
               else f"backend={backend!r}" if backend != "auto" else None)
    # decided now (a "native" that cannot is refused before generating), packed after the prefill
    native, kernel = choose_decoder(lm.model, decode_kernel,
                                    None if blocker is None else f"{blocker} is given", pack=False)
    stop_ids = eos_ids(lm) if stop_ids is None else stop_ids
    room = lm.max_tokens - len(prompt_ids)
    if room < 1:
        raise ValueError(
            f"prompt: expected fewer than {lm.max_tokens} tokens (the model's context) to leave "
            f"room to generate, got {len(prompt_ids)}; shorten it (attnlab generate --truncate keeps its "
            f"first tokens)"
        )
    gen = None if sampling.greedy else torch.Generator().manual_seed(sampling.seed)
    need = recorder.layers if recorder is not None else False
    # Weights go to the recorder's hooks only; logits of the last position only.
    kw: dict[str, Any] = {"mask": mask, "score_mods": score_mods, "backend": backend,
                          "keep_weights": False, "logits_to_keep": 1}
    cache = model.new_cache() if use_cache else None
    seq = list(prompt_ids)
    new: list[int] = []
    dev = model.device
    ids = torch.tensor([seq], device=dev)  # (1, P)
    t0 = time.perf_counter()
    t_prefill = 0.0
    reason = "max_new_tokens"
    for step in range(min(max_new_tokens, room)):
        if step == 1 and kernel == "native":
            native, kernel = choose_decoder(lm.model, decode_kernel)  # packs once, after the prefill
        if step and native is not None and cache is not None:
            last = native.step(new[-1], cache)  # (V,): the whole step in one native call
        else:
            logits = model(ids, cache=cache, need_weights=need, **kw).logits
            assert logits is not None  # a CausalLM always has its language-model head
            last = logits[0, -1]  # (V,)
        if step == 0:
            t_prefill = time.perf_counter() - t0
        if on_logits is not None:
            on_logits(last)  # (V,) the distribution this token is drawn from
        nxt = next_token(last, sampling, gen)
        new.append(nxt)
        seq.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if nxt in stop_ids:
            reason = "eos"
            break
        # Only the new token with a cache (the past lives there); everything without.
        ids = torch.tensor([[nxt]] if use_cache else [seq], device=dev)  # (1, 1) or (1, P + t)
        if recorder is not None and not use_cache:
            raise ValueError("recorder: expected use_cache=True (without a cache rows would repeat)")
    else:
        if len(new) < max_new_tokens:
            reason = "context"
    total = time.perf_counter() - t0
    decode_s = total - t_prefill
    steps = max(len(new) - 1, 1)
    return (
        new,
        reason,
        {
            "prefill_s": round(t_prefill, 4),
            "decode_s": round(decode_s, 4),
            "tokens_per_s": round(steps / decode_s, 2) if decode_s > 0 else 0.0,
            "decode_kernel": kernel,
        },
    )


class TextStream:
    """Incremental detokenisation for printing tokens as they come: decode the whole answer so
    far and emit the new suffix, holding back an incomplete UTF-8 sequence (byte-level BPE may
    split one character over several tokens)."""

    def __init__(self, lm: LoadedModel, write: OnToken, skip: set[int]) -> None:
        self.lm, self.write, self.skip = lm, write, skip
        self.ids: list[int] = []
        self.shown = 0

    def __call__(self, token_id: int) -> None:
        if token_id in self.skip:
            return
        self.ids.append(token_id)
        text = self.lm.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.write(text[self.shown :])
        self.shown = len(text)


def generate_text(
    lm: LoadedModel,
    prompt: str,
    *,
    system: str | None = None,
    chat: bool = True,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    capture: bool = False,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    mask: object = None,
    score_mods: Any = None,
    stream: OnToken | None = None,
    on_logits: Callable[[Tensor], None] | None = None,
    truncate: bool = False,
    special_tokens: bool = False,
    decode_kernel: str = "auto",
) -> Generation:
    """Chat-format ``prompt``, generate, and (``capture``) record attention while generating.
    ``decode_kernel``: see :func:`generate_ids`."""
    if lm.kind != "decoder" or not lm.native:
        raise ValueError(
            f"--model: expected a decoder LLM loaded by attnlab (smollm2, gemma3, a llama GGUF or "
            f"folder, gpt2), got {'an' if lm.kind[:1] in 'aeiou' else 'a'} {lm.kind} ({lm.model_type}, "
            f"{lm.engine})"
        )
    enc = fit_prompt(lm, prompt, system=system, chat=chat, max_new_tokens=max_new_tokens, truncate=truncate,
                     special_tokens=special_tokens)
    stops = eos_ids(lm)
    recorder = AttentionRecorder(lm.model, layers=layers, heads=heads) if capture else None
    streamer = TextStream(lm, stream, stops) if stream is not None else None
    try:
        new, reason, timings = generate_ids(
            lm,
            enc.ids,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            stop_ids=stops,
            mask=mask,
            score_mods=score_mods,
            recorder=recorder,
            on_token=streamer,
            on_logits=on_logits,
            decode_kernel=decode_kernel,
        )
    finally:
        if recorder is not None:
            recorder.remove()
    answer = lm.tokenizer.decode([i for i in new if i not in stops])
    labels = [lm.tokenizer.label(lm.tokenizer.id_to_token(i)) for i in new]
    return Generation(enc, new, labels, answer, reason, recorder, timings, lm.name)
