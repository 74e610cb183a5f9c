"""The ``attnlab generate`` job: what cannot be captured or drawn refused before generating, the
generation (streamed), its files (capture, picture, page) and its typed report.

``generate_report(lm, prompt, files=GenerateFiles(png="g.png"))`` checks that the capture fits
in memory and on the page, generates with the recorder on, writes the files and returns a
:class:`GenerationReport`: ``to_dict()`` for JSON, ``blocks()`` for the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attnlab.inspect.llm.batch_generation import BatchGeneration, check_prompts, generate_batch
from attnlab.inspect.llm.generation import (
    Generation,
    OnToken,
    Sampling,
    check_capture,
    fit_prompt,
    generate_text,
)
from attnlab.models.loading import LoadedModel
from attnlab.viz.tables import Block, Table


@dataclass(frozen=True)
class GenerateFiles:
    """Where a generation's attention goes; ``layer``/``head``: the picture's (None: the mean)."""

    png: Path | None = None
    html: Path | None = None
    save_capture: Path | None = None
    layer: int | None = None
    head: int | None = None

    @property
    def wanted(self) -> bool:
        return self.png is not None or self.html is not None or self.save_capture is not None


@dataclass
class GenerationReport:
    generation: Generation
    sampling: Sampling
    weights: str  # "float32", "int8" or "int4"
    files: dict[str, str] = field(default_factory=dict)  # "save_capture" / "png" / "html" -> path

    def to_dict(self) -> dict[str, Any]:
        return (self.generation.to_dict() | {"sampling": asdict(self.sampling), "weights": self.weights}
                | self.files)

    def blocks(self) -> list[str]:
        """After the streamed answer: tokens, stop reason and speed; the capture's size."""
        g, t = self.generation, self.generation.timings
        out = [f"\n{len(g.new_ids)} tokens ({g.stop_reason}); prompt {len(g.prompt)} tokens in "
               f"{t['prefill_s']:.2f} s, {t['tokens_per_s']:.1f} tokens/s, decoded by "
               f"{t.get('decode_kernel', 'torch')}"]
        if g.recorder is not None:
            r = g.recorder
            out.append(f"captured {len(r)} rows x {len(r.layers)} layers x {len(r.heads)} heads "
                       f"= {r.nbytes / 1e6:.1f} MB (fp16)")
        return out

    def write(self, files: GenerateFiles) -> None:
        """The capture (.safetensors), the picture and the page of ``files``; recorded in ``files``."""
        if not files.wanted:
            return
        from attnlab.inspect.llm.capture_file import Capture
        from attnlab.inspect.llm.llm_views import generation_page, generation_png

        cap = Capture.from_generation(self.generation)
        writers = (("save_capture", files.save_capture, cap.save),
                   ("png", files.png, lambda p: generation_png(cap, p, layer=files.layer, head=files.head)),
                   ("html", files.html, lambda p: generation_page(cap, p)))
        for key, path, write in writers:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.files[key] = str(write(path))


def check_view(lm: LoadedModel, files: GenerateFiles, layers: Sequence[int] | None,
               heads: Sequence[int] | None) -> None:
    """The picture's layer and head must be among those captured."""
    for name, v, chosen, n in (("--layer", files.layer, layers, lm.num_layers),
                               ("--head", files.head, heads, lm.num_heads)):
        allowed = list(chosen) if chosen is not None else list(range(n))
        if v is not None and v not in allowed:
            raise ValueError(f"{name}: expected one of the captured {name[2:]}s "
                             f"{allowed if len(allowed) < 12 else f'0..{n - 1}'}, got {v}")


def generate_report(
    lm: LoadedModel,
    prompt: str,
    *,
    system: str | None = None,
    chat: bool = True,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    truncate: bool = False,
    special_tokens: bool = False,
    weights: str = "float32",
    files: GenerateFiles = GenerateFiles(),
    stream: OnToken | None = None,
    decode_kernel: str = "auto",
) -> GenerationReport:
    """Generate from ``prompt``, capturing attention when ``files`` or ``layers``/``heads`` ask
    for it, and write ``files``. What cannot be held or drawn is refused before generating.
    ``decode_kernel``: see :func:`attnlab.inspect.llm.generation.generate_ids`."""
    capture = files.wanted or layers is not None or heads is not None
    check_view(lm, files, layers, heads)
    if capture:
        n_prompt = len(fit_prompt(lm, prompt, system=system, chat=chat, max_new_tokens=max_new_tokens,
                                  truncate=truncate, special_tokens=special_tokens))
        n_l, n_h = len(layers or range(lm.num_layers)), len(heads or range(lm.num_heads))
        check_capture(lm, n_prompt, max_new_tokens, n_l, n_h)
        if files.html is not None:
            from attnlab.inspect.llm.llm_views import page_limit

            why = page_limit(n_prompt + max_new_tokens - 1, n_l, n_h)
            if why:
                raise ValueError(why.replace(" positions", " positions (prompt + --max-new-tokens)", 1))
    g = generate_text(lm, prompt, system=system, chat=chat, max_new_tokens=max_new_tokens, sampling=sampling,
                      capture=capture, layers=layers, heads=heads, stream=stream, truncate=truncate,
                      special_tokens=special_tokens, decode_kernel=decode_kernel)
    report = GenerationReport(g, sampling, weights)
    report.write(files)
    return report


@dataclass
class BatchReport:
    """Several prompts, or several samples of one, decoded in one batch (``attnlab generate A B``
    or ``--samples N``): the answers and the batch's speed."""

    batch: BatchGeneration
    samples: int
    sampling: Sampling
    weights: str

    def to_dict(self) -> dict[str, Any]:
        out = self.batch.to_dict()
        for i, g in enumerate(out["generations"]):
            g.update(prompt_index=i // self.samples, sample=i % self.samples)
        return out | {"samples": self.samples, "sampling": asdict(self.sampling), "weights": self.weights}

    def blocks(self) -> list[Block]:
        rows = [[str(i // self.samples), str(i % self.samples), g.text, f"{len(g.new_ids)} ({g.stop_reason})"]
                for i, g in enumerate(self.batch.generations)]
        t = self.batch.timings
        table = Table(f"{len(rows)} answers decoded in one batch", ["prompt", "sample", "answer", "tokens"],
                      rows, ruled=True)
        speed = (f"{t['new_tokens']} tokens in {t['seconds']:.2f} s: {t['tokens_per_s']:.1f} tokens/s "
                 f"over all rows (prefill included)")
        out: list[Block] = [table, speed]
        rec = self.batch.generations[0].recorder
        if rec is not None:
            mb = sum(g.recorder.nbytes for g in self.batch.generations if g.recorder is not None) / 1e6
            out.append(f"captured {len(rec.layers)} layers x {len(rec.heads)} heads per row, "
                       f"{mb:.1f} MB in all (fp16)")
        return out


def batch_report(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    system: str | None = None,
    chat: bool = True,
    max_new_tokens: int = 64,
    sampling: Sampling = Sampling(),
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    truncate: bool = False,
    special_tokens: bool = False,
    weights: str = "float32",
) -> BatchReport:
    """Every prompt ``samples`` times in one batch, capturing attention per row when
    ``layers``/``heads`` ask for it (its size checked for every row before decoding)."""
    check_prompts(prompts)
    capture = layers is not None or heads is not None
    if capture:
        n_l, n_h = len(layers or range(lm.num_layers)), len(heads or range(lm.num_heads))
        longest = max(len(fit_prompt(lm, p, system=system, chat=chat, max_new_tokens=max_new_tokens,
                                     truncate=truncate, special_tokens=special_tokens)) for p in prompts)
        check_capture(lm, longest, max_new_tokens, n_l, n_h, rows=len(prompts) * samples)
    got = generate_batch(lm, prompts, samples=samples, system=system, chat=chat,
                         max_new_tokens=max_new_tokens, sampling=sampling, capture=capture, layers=layers,
                         heads=heads, truncate=truncate, special_tokens=special_tokens)
    return BatchReport(got, samples, sampling, weights)
