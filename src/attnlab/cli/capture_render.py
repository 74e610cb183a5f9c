"""``attnlab render CAPTURE.safetensors``: a saved generation capture reopened into its pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnlab.cli.common import console, print_json

# The library's names -> the options and argument of `attnlab render`.
NAMES = {"path": "FILE", "model": "--model", "layer": "--layer", "head": "--head", "other": "--compare",
         "layers": "--layers"}


def render_capture(file: Path, *, html: Path | None, figs: list[Path], layer: int | None,
                   head: int | None, model: str | None, as_json: bool, token: int | None = None,
                   compare: Path | None = None, layers: list[int] | None = None) -> None:
    """Load ``file`` (checked against ``model`` when given), write the generation page and the
    answer's heatmap, print a summary."""
    from attnlab.inspect.llm.capture_file import Capture
    from attnlab.inspect.llm.llm_views import generation_page, generation_png

    if html is not None and html.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--html: expected a file name ending in .html, got {str(html)!r}")
    cap = Capture.load(file, model=model)
    for name, v, recorded in (("--layer", layer, cap.layers), ("--head", head, cap.heads)):
        if v is not None and v not in recorded:
            raise ValueError(f"{name}: expected one of the recorded {name[2:]}s {recorded}, got {v}")
    if token is not None:
        if not figs:
            raise ValueError("--token: expected --png or --svg to draw every head of that position, "
                             "got neither")
        if not -cap.positions <= token < cap.positions:
            raise ValueError(f"--token: expected a recorded position in 0..{cap.positions - 1}, got {token}")
    out: list[Path] = []
    if compare is not None:
        if html is None:
            raise ValueError("--compare: expected --html to write the diff page to, got none")
        try:
            other = Capture.load(compare, model=cap.model)
        except ValueError as e:  # its errors name FILE's parameters: say which file
            raise ValueError(f"--compare: {str(e).partition(': ')[2]}") from None
        cap.compare(other, names=(file.stem, compare.stem), layers=layers, path=html)
        out.append(html)
    elif html is not None:
        out.append(generation_page(cap, html))
    for p in figs:
        if token is not None:
            from attnlab.viz import save_figure

            out.append(save_figure(cap.token_grid(token), p))
        else:
            out.append(generation_png(cap, p, layer=layer, head=head))
    rep: dict[str, Any] = {
        "file": str(file), "model": cap.model, "prompt": cap.prompt, "positions": cap.positions,
        "prompt_len": cap.prompt_len, "layers": cap.layers, "heads": cap.heads,
        "dtype": str(cap.weights.dtype).removeprefix("torch."), "attnlab_version": cap.version,
        "written": [str(p) for p in out],
    }
    if as_json:
        print_json(rep)
        return
    console.print(f"{cap.model}: {cap.positions} positions (prompt {cap.prompt_len}) x "
                  f"{len(cap.layers)} layers x {len(cap.heads)} heads, written by attnlab "
                  f"{cap.version or '?'}", markup=False, highlight=False)
    console.print("answer: " + "".join(cap.labels[cap.prompt_len:]), markup=False, highlight=False)
    for p in out:
        console.print(f"wrote {p}", markup=False, highlight=False)
