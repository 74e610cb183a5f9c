"""A generation's captured attention as a file: :class:`Capture` (save / load / views).

One safetensors file holds it: the tensor ``weights`` (layers, heads, T) with every recorded
row of the causal triangle packed position by position (row p over keys 0..p starts at
p(p + 1)/2, T = N(N + 1)/2 for N positions), in the dtype it was recorded in (fp16 by
default), and in the header's metadata one JSON text ``attnlab.capture`` with the labels,
model, prompt, recorded layers/heads, K/V groups and attnlab's version. safetensors reads a
JSON header and raw bytes: loading never unpickles. Saving writes a temporary file beside the
target and renames it over it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.inspect.llm.generation import Generation

FORMAT = "attnlab-capture"
FORMAT_VERSION = 1
META_KEY = "attnlab.capture"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(f"path: expected an attnlab capture (attnlab generate --save-capture), got "
                      f"{str(path)!r}: {why}")


@dataclass
class Capture:
    """Attention recorded while a model generated: ``weights`` (layers, heads, T) packed rows."""

    weights: Tensor  # (Ls, Hs, N(N+1)/2): row p = weights[..., p(p+1)/2 : (p+1)(p+2)/2]
    labels: list[str]  # one per position, or one more (the last generated token has no row)
    prompt_len: int  # positions 0..prompt_len-1 are the prompt (chat template applied)
    model: str
    prompt: str
    layers: list[int]  # the model's indices of the recorded layers / heads
    heads: list[int]
    kv_group: list[int]  # K/V head each recorded head reads (grouped-query attention)
    version: str = ""  # attnlab's version that wrote the file

    @property
    def positions(self) -> int:
        return _positions(self.weights.shape[-1])

    def row(self, pos: int) -> Tensor:
        """Attention of position ``pos`` over keys 0..pos: (layers, heads, pos + 1)."""
        n = self.positions
        expect_int("pos", pos, -n, n - 1, expected=f"a recorded position in 0..{n - 1}", error=IndexError)
        pos %= n
        start = pos * (pos + 1) // 2
        return self.weights[:, :, start : start + pos + 1]  # (Ls, Hs, pos + 1)

    @property
    def rows(self) -> list[Tensor]:
        return [self.row(p) for p in range(self.positions)]

    def answer_rows(self, layer: int | None = None, head: int | None = None) -> Tensor:
        """(answer tokens, N) float32 rows that produced each generated token, for one recorded
        layer/head or averaged over what is not chosen."""
        n, P = self.positions, self.prompt_len
        out = torch.zeros(n - P + 1, n)  # the prompt's last row produced the first answer token
        li = slice(None) if layer is None else [self.layers.index(_chosen(layer, self.layers, "layer"))]
        hi = slice(None) if head is None else [self.heads.index(_chosen(head, self.heads, "head"))]
        for i, p in enumerate(range(P - 1, n)):
            out[i, : p + 1] = self.row(p)[li][:, hi].float().mean(dim=(0, 1))
        return out

    @classmethod
    def from_generation(cls, g: Generation) -> Capture:
        from attnlab import __version__

        rec = g.recorder
        if rec is None or len(rec) == 0:
            raise ValueError("generation: expected attention captured while generating (capture=True), "
                             "got none")
        weights = rec.packed()  # (Ls, Hs, N(N+1)/2)
        return cls(weights, list(g.labels), len(g.prompt), g.model, g.prompt.text, list(rec.layers),
                   list(rec.heads), list(rec.kv_group), __version__)

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "attnlab_version": self.version,
                "model": self.model, "prompt": self.prompt, "prompt_len": self.prompt_len,
                "labels": self.labels, "layers": self.layers, "heads": self.heads,
                "kv_group": self.kv_group, "positions": self.positions,
                "dtype": str(self.weights.dtype).removeprefix("torch.")}

    def save(self, path: str | Path) -> Path:
        """Write the capture to ``path`` (.safetensors), atomically; returns the path."""
        from safetensors.torch import save

        from attnlab.data.io import atomic_write_stream

        p = Path(path)
        if p.suffix != ".safetensors":
            raise ValueError(f"path: expected a file name ending in .safetensors, got {str(path)!r}")
        meta = {META_KEY: json.dumps(self.metadata(), ensure_ascii=False)}
        data = save({"weights": self.weights.contiguous()}, metadata=meta)
        atomic_write_stream(p, lambda f: f.write(data))
        return p

    @classmethod
    def load(cls, path: str | Path, *, model: str | None = None) -> Capture:
        """Read a capture written by :meth:`save`. ``model`` (a name as ``--model`` takes it, or
        the model's own name) must be the model that made it: another one is refused."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path: expected an existing capture file, got {str(path)!r}")
        try:
            with safe_open(str(p), framework="pt") as f:
                header = f.metadata() or {}
                names = list(f.keys())
                weights = f.get_tensor("weights") if names == ["weights"] else None
        except Exception as e:  # safetensors raises its own SafetensorError for a bad header / size
            raise _damaged(p, f"damaged or truncated ({type(e).__name__}: {e})") from None
        if META_KEY not in header or weights is None:
            raise _damaged(p, f"a safetensors file without attnlab's capture metadata (tensors {names})")
        try:
            meta = json.loads(header[META_KEY])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {meta.get('format_version')!r}, this attnlab reads "
                                 f"{FORMAT_VERSION}")
            cap = cls(weights, [str(t) for t in meta["labels"]], int(meta["prompt_len"]),
                      str(meta["model"]), str(meta["prompt"]), [int(i) for i in meta["layers"]],
                      [int(i) for i in meta["heads"]], [int(i) for i in meta["kv_group"]],
                      str(meta.get("attnlab_version", "")))
            _check(cap, int(meta["positions"]))
        except (ValueError, KeyError, TypeError) as e:
            raise _damaged(p, f"inconsistent metadata ({e})") from None
        if model is not None:
            check_model(cap, model)
        return cap

    def page(self, path: str | Path | None = None) -> Any:
        """The offline generation page (hover a token); displays itself in a notebook."""
        from attnlab.inspect.llm.llm_views import page_limit
        from attnlab.viz import generation_view_html

        why = page_limit(self.positions, len(self.layers), len(self.heads))
        if why:
            raise ValueError(why)
        return generation_view_html([r.numpy() for r in self.rows], self.labels, self.prompt_len,
                                    layers=self.layers, heads=self.heads, kv_group=self.kv_group,
                                    title=f"{self.model}: attention while generating", path=path)

    def token_grid(self, pos: int, path: str | Path | None = None) -> Any:
        """Every recorded layer and head of position ``pos``'s row, as small multiples (a figure;
        the row of position p produced token p + 1)."""
        from attnlab.viz import token_heads_grid

        row = self.row(pos)  # (Ls, Hs, pos + 1); checks pos
        p = pos % self.positions
        nxt = f", which produced {self.labels[p + 1]!r}" if p + 1 < len(self.labels) else ""
        return token_heads_grid(row.float().numpy(), self.labels[: p + 1], layers=self.layers,
                                heads=self.heads, path=path,
                                title=f"{self.model}: where position {p} ({self.labels[p]!r}) looked"
                                      f"{nxt}, every layer and head")

    def answer_block(self, layers: list[int] | None = None) -> tuple[Tensor, list[str]]:
        """The answer's attention among its own tokens, with the prompt as one key: a square
        (layers, heads, T + 1, T + 1) float32 matrix and its labels ``["<prompt>", answer...]``.

        Row 0 is the prompt's last position (all its weight is on the prompt); row i is the
        answer token fed at position P + i - 1: its summed weight on the prompt, then its weights
        on the answer tokens before it and itself. Two prompts that led to the same answer give
        matrices of the same shape, so they can be compared cell by cell.
        """
        P, n = self.prompt_len, self.positions
        if layers is not None and (not layers or any(i not in self.layers for i in layers)):
            raise ValueError(f"layers: expected some of the recorded layers {self.layers}, got {layers}")
        li = list(range(len(self.layers))) if layers is None else [self.layers.index(i) for i in layers]
        T = n - P  # answer tokens that were fed back (each has a row)
        out = torch.zeros(len(li), len(self.heads), T + 1, T + 1)
        out[:, :, 0, 0] = 1.0
        for i, p in enumerate(range(P, n), start=1):
            r = self.row(p)[li].float()  # (Ls, Hs, p + 1)
            out[:, :, i, 0] = r[..., :P].sum(-1)
            out[:, :, i, 1 : i + 1] = r[..., P:]
        return out, ["<prompt>", *self.labels[P:n]]

    def compare(self, other: Capture, *, names: tuple[str, str] = ("A", "B"),
                layers: list[int] | None = None, path: str | Path | None = None) -> Any:
        """A diff page of two captures of the same answer (e.g. one answer under two prompts):
        per layer and head, both answer blocks (:meth:`answer_block`) side by side and A - B."""
        from attnlab.viz import compare_view_html

        mine, theirs = self.labels[self.prompt_len : self.positions], \
            other.labels[other.prompt_len : other.positions]
        if mine != theirs or not mine:
            raise ValueError(f"other: expected a capture of the same answer tokens ({len(mine)} fed: "
                             f"{''.join(mine)[:60]!r}), got {len(theirs)} ({''.join(theirs)[:60]!r})")
        if (self.layers, self.heads) != (other.layers, other.heads):
            raise ValueError(f"other: expected the same recorded layers and heads ({self.layers}, "
                             f"{self.heads}), got ({other.layers}, {other.heads})")
        a, labels = self.answer_block(layers)
        b, _ = other.answer_block(layers)
        from attnlab.viz.safety import MAX_HTML_VALUES

        if a.numel() > MAX_HTML_VALUES:
            fit = max(1, MAX_HTML_VALUES // (a.shape[1] * a.shape[2] * a.shape[3]))
            raise ValueError(f"layers: expected at most {MAX_HTML_VALUES:,} values for a diff page, got "
                             f"{a.shape[0]} layers x {a.shape[1]} heads x {a.shape[2]}^2 answer cells; "
                             f"compare at most {fit} layers at a time (layers=[...], --layers)")
        lay = self.layers if layers is None else list(layers)
        return compare_view_html(a.numpy(), b.numpy(), labels, labels, names=names, layers=lay,
                                 heads=self.heads, texts=(self.prompt, other.prompt), path=path,
                                 title=f"{self.model}: the same answer after two prompts, {names[0]} - "
                                       f"{names[1]}")

    def _repr_html_(self) -> str:
        return self.page()._repr_html_()


def check_model(cap: Capture, model: str) -> None:
    """Refuse a capture made by another model than ``model`` (a --model name or a model name)."""
    from attnlab.models.gguf_file import EMBEDDED_LLMS

    # the name a model loads under: embedded ones by their own name, files and folders by theirs
    name = Path(model).name
    wanted = EMBEDDED_LLMS.get(model, name.removesuffix(".gguf"))
    if wanted != cap.model:
        raise ValueError(f"model: expected the model this capture was made with ({cap.model!r}), "
                         f"got {model!r} ({wanted!r})")


def _positions(t: int) -> int:
    """N such that N(N+1)/2 == t."""
    import math

    n = (math.isqrt(8 * t + 1) - 1) // 2
    if n * (n + 1) // 2 != t:
        raise ValueError(f"weights: expected N(N+1)/2 packed values per head, got {t}")
    return n


def _chosen(i: int, recorded: list[int], name: str) -> int:
    if i not in recorded:
        raise ValueError(f"--{name}: expected one of the recorded {name}s {recorded}, got {i}")
    return i


def _check(cap: Capture, positions: int) -> None:
    w = cap.weights
    if w.dtype not in _DTYPES or w.ndim != 3:
        raise ValueError(f"weights: expected (layers, heads, T) in {[str(d) for d in _DTYPES]}, got "
                         f"{tuple(w.shape)} {w.dtype}")
    if w.shape[:2] != (len(cap.layers), len(cap.heads)) or len(cap.kv_group) != len(cap.heads):
        raise ValueError(f"weights: expected {len(cap.layers)} layers x {len(cap.heads)} heads, got "
                         f"{tuple(w.shape[:2])}")
    n = _positions(w.shape[-1])
    if n != positions or len(cap.labels) not in (n, n + 1) or not 1 <= cap.prompt_len <= n:
        raise ValueError(f"positions: expected {positions} rows with {positions} or {positions + 1} "
                         f"labels, got {n} rows and {len(cap.labels)} labels")
