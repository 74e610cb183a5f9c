"""Several prompts, or several samples of one prompt, generated together.

One sequence at a time, a decode step of SmolLM2 on a CPU is mostly fixed cost (weights read,
Python per layer); a batch of rows pays it once per step. :func:`generate_batch` renders and
fits every prompt as :func:`~attnlab.inspect.llm.generation.generate_text` does, decodes all
rows in one batch (:func:`~attnlab.inspect.llm.batch_rows.generate_rows`: the shared chat
header prefilled once, the rest left-padded, each row stopping on its own) and, with
``capture``, records every row's attention over its own positions
(:class:`~attnlab.inspect.llm.batch_capture.BatchRecorder`). Each row equals a one-row
generation with the same sampling up to float rounding (tested).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from attnlab.arguments import expect_positive_int
from attnlab.inspect.llm.batch_capture import BatchRecorder
from attnlab.inspect.llm.batch_rows import Row, generate_rows
from attnlab.inspect.llm.generation import Generation, Sampling, eos_ids, fit_prompt
from attnlab.models.loading import LoadedModel

# Rows that differ by more than this many tokens pad the short ones by the difference at every
# step of the batch; past it the batch is refused rather than silently wasting most of its work.
MAX_PAD_TOKENS = 1024


@dataclass
class BatchGeneration:
    generations: list[Generation]  # prompt by prompt, sample by sample
    timings: dict[str, float] = field(default_factory=dict)  # seconds, new_tokens, tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {"rows": len(self.generations), "timings": self.timings,
                "generations": [g.to_dict() for g in self.generations]}


def check_prompts(prompts: object) -> None:
    """A non-empty list of prompts: a lone string would be taken letter by letter."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of prompts, got {prompts!r}")


def row_samplings(sampling: Sampling, samples: int) -> list[Sampling]:
    """Sample s is drawn with seed ``sampling.seed + s``; greedy decoding has one answer."""
    expect_positive_int("samples", samples)
    if sampling.greedy and samples > 1:
        raise ValueError(f"samples: expected 1 with greedy decoding (every sample would be the same "
                         f"answer; sample with a temperature), got {samples}")
    if sampling.seed + samples > 2**63:
        raise ValueError(f"seed: expected seed + samples <= 2**63, got {sampling.seed} + {samples}")
    return [replace(sampling, seed=sampling.seed + s) for s in range(samples)]


def generate_batch(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    system: str | None = None,
    chat: bool = True,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    capture: bool = False,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    truncate: bool = False,
    special_tokens: bool = False,
) -> BatchGeneration:
    """Every prompt ``samples`` times (seeds ``sampling.seed + s``), decoded in one batch."""
    check_prompts(prompts)
    expect_positive_int("max_new_tokens", max_new_tokens)
    plans = row_samplings(sampling, samples)
    encs = [fit_prompt(lm, p, system=system, chat=chat, max_new_tokens=max_new_tokens, truncate=truncate,
                       special_tokens=special_tokens) for p in prompts]
    lengths = [len(e) for e in encs]
    short = [i for i, n in enumerate(lengths) if n < 2]
    if short:  # generate_rows prefills the rows' shared first token(s) once, and each keeps one of its own
        raise ValueError(f"prompts[{short[0]}]: expected at least 2 tokens to decode in a batch (with "
                         f"the chat template every prompt has them), got {lengths[short[0]]}")
    if max(lengths) - min(lengths) > MAX_PAD_TOKENS:
        raise ValueError(f"prompts: expected lengths within {MAX_PAD_TOKENS} tokens of each other (the short "
                         f"ones are padded to the longest at every step), got {min(lengths)} to "
                         f"{max(lengths)}; generate them in separate batches")
    rows = [Row(tuple(e.ids), sampling=s) for e in encs for s in plans]
    stops = eos_ids(lm)
    rec = BatchRecorder(lm.model, len(rows), layers=layers, heads=heads) if capture else None
    t0 = time.perf_counter()
    try:
        got = generate_rows(lm, rows, max_new_tokens=max_new_tokens, stop_ids=stops, recorder=rec)
    finally:
        if rec is not None:
            rec.remove()
    seconds = time.perf_counter() - t0
    gens = []
    for i, (new, reason) in enumerate(got):
        labels = [lm.tokenizer.label(lm.tokenizer.id_to_token(t)) for t in new]
        answer = lm.tokenizer.decode([t for t in new if t not in stops])
        gens.append(Generation(encs[i // len(plans)], new, labels, answer, reason,
                               rec.rows[i] if rec is not None else None, {}, lm.name))
    n_new = sum(len(g.new_ids) for g in gens)
    timings = {"seconds": round(seconds, 4), "new_tokens": n_new,
               "tokens_per_s": round(n_new / seconds, 2) if seconds > 0 else 0.0}
    return BatchGeneration(gens, timings)
