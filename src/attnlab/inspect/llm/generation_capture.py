"""Greedy decoding with every head's attention recorded: :func:`generate` and its result.

The one decode loop (:func:`attnlab.inspect.llm.generation.generate_ids`) fills an
:class:`~attnlab.inspect.recorder.AttentionRecorder`; :class:`GenerationCapture` is a view of
it that lays the rows out as one causal matrix (an :class:`AttentionCache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.inspect.attention_cache import AttentionCache
from attnlab.inspect.llm.generation import Sampling, eos_ids, generate_ids
from attnlab.inspect.recorder import AttentionRecorder
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded


@dataclass
class GenerationCapture:
    """Greedy decoding with every layer's and head's attention recorded: a view of the
    :class:`~attnlab.inspect.recorder.AttentionRecorder` that the one decode loop
    (:func:`attnlab.inspect.llm.generation.generate_ids`) fills.

    ``steps[0]`` is the prompt's forward pass (L, H, P, P); ``steps[t]`` for t >= 1 is the
    row of the t-th fed token, (L, H, 1, P + t). :meth:`as_cache` lays them out as one
    causal (L, H, N, N) matrix over the prompt and the generated tokens (N = P + fed).
    """

    prompt: Encoded
    new_ids: list[int]
    new_tokens: list[str]
    recorder: AttentionRecorder
    model: str = ""

    @property
    def text(self) -> str:
        return self.prompt.text

    @property
    def steps(self) -> list[Tensor]:
        P, n = len(self.prompt), len(self.recorder)
        first = self.recorder.matrix(0, P)  # (L, H, P, P)
        return [first] + [self.recorder.row(p).float().unsqueeze(2) for p in range(P, n)]  # (L, H, 1, p+1)

    def as_cache(self, lm: LoadedModel) -> AttentionCache:
        fed = self.prompt.ids + self.new_ids[: len(self.recorder) - len(self.prompt)]
        enc = lm.tokenizer.encode_ids(fed, self.prompt.text)
        return AttentionCache(self.recorder.matrix(), enc, None, self.model, "decoder")  # (L, H, N, N)


def generate(lm: LoadedModel, prompt: str | Encoded, *, max_new_tokens: int = 10, stop_at_eos: bool = True,
             truncate: bool = False) -> GenerationCapture:
    """Greedy decoding (argmax each step) with a KV cache, recording every layer's and head's
    attention as it is computed (float32), on the raw text (no chat template)."""
    if lm.kind != "decoder" or not lm.native:
        raise ValueError(f"generate: expected a decoder loaded by attnlab (gpt2, smollm2, a llama GGUF), got "
                         f"{'an' if lm.kind[:1] in 'aeiou' else 'a'} {lm.kind} "
                         f"({lm.model_type}, {lm.engine})")
    enc = prompt if isinstance(prompt, Encoded) else lm.encode(prompt, truncate=truncate, name="prompt")
    recorder = AttentionRecorder(lm.model, dtype=torch.float32)
    try:
        new, _, _ = generate_ids(lm, enc.ids, max_new_tokens=max_new_tokens, sampling=Sampling(),
                                 stop_ids=eos_ids(lm) if stop_at_eos else set(), recorder=recorder)
    finally:
        recorder.remove()
    labels = [lm.tokenizer.label(lm.tokenizer.id_to_token(i)) for i in new]
    return GenerationCapture(enc, new, labels, recorder, lm.name)
