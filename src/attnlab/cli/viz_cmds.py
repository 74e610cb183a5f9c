"""``attnlab plot-mask`` and ``attnlab render``: pictures of masks and of exported attention."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from attnlab.cli.common import PAGE, check_output, console, print_json, split_ints, split_tokens, user_errors

if TYPE_CHECKING:
    from attnlab.functional.masks import Align

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
PngOpt = Annotated[Path | None, typer.Option("--png", help="write a PNG figure here")]
SvgOpt = Annotated[Path | None, typer.Option("--svg", help="write an SVG figure here")]

MASK_HELP = (
    "mask spec: terms joined by & (and) or | (or), & first; a term may start with ~ (not). "
    "Terms: causal, causal:bottom-right, window:LEFT,RIGHT[,bottom-right], prefix:N, full, "
    "document:ID,ID,... (one segment id per position). Example: 'causal&window:3,0'."
)


# The form of each term, for errors that say how to write it.
FORMS = {"causal": "causal or causal:bottom-right",
         "window": "window:LEFT,RIGHT or window:LEFT,RIGHT,bottom-right (e.g. window:2,0)",
         "prefix": "prefix:N (e.g. prefix:2)", "full": "full (no arguments)",
         "document": "document:ID,ID,... (one segment id per position, e.g. document:0,0,1)"}


def parse_mask(spec: str) -> Any:
    """A :class:`attnlab.functional.masks.Mask` from a spec like ``causal&window:3,0``."""
    from attnlab.functional import masks as M

    def align(rest: list[str]) -> Align:
        a = rest[0] if rest else "top-left"
        if a not in ("top-left", "bottom-right"):  # the message masks.check_align gives
            raise ValueError(f"align: expected 'top-left' or 'bottom-right', got {a!r}")
        return cast("Align", a)

    def term(text: str) -> Any:
        t = text.strip()
        if t.startswith("~"):
            return ~term(t[1:])
        name, _, arg = t.partition(":")
        args = [a.strip() for a in arg.split(",")] if arg else []
        try:
            if name == "causal" and len(args) <= 1:
                return M.causal(align(args))
            if name == "window" and len(args) in (2, 3):
                return M.sliding_window(int(args[0]), int(args[1]), align(args[2:]))
            if name == "prefix" and len(args) == 1:
                return M.prefix_lm(int(args[0]))
            if name == "full" and not args:
                return M.full()
            if name == "document" and args:
                return M.document([int(a) for a in args])
        except ValueError as exc:
            why = (f"expected integers; write {FORMS.get(name, 'window:3,0')}"
                   if "invalid literal for int" in str(exc) else exc)
            raise ValueError(f"--mask: bad term {t!r}: {why}") from None
        if not t:
            raise ValueError(f"--mask: an empty term in {spec!r} (two operators in a row, or one at "
                             f"an end); expected terms joined by single & or |, e.g. causal&window:3,0")
        if name in FORMS:
            raise ValueError(f"--mask: bad term {t!r}: expected {FORMS[name]}")
        raise ValueError(f"--mask: expected a term like causal, window:3,0, prefix:2, full or "
                         f"document:0,0,1; got {t!r}")

    if not spec.strip():
        raise ValueError("--mask: expected a mask spec, got an empty string")
    ors = []
    for part in spec.split("|"):
        terms = [term(t) for t in part.split("&")]
        acc = terms[0]
        for m in terms[1:]:
            acc = acc & m
        ors.append(acc)
    out = ors[0]
    for m in ors[1:]:
        out = out | m
    return out


def _written(png: Path | None, svg: Path | None) -> list[Path]:
    """The figure files asked for, each checked against its option's format."""
    for opt, p, suffix in (("--png", png, ".png"), ("--svg", svg, ".svg")):
        check_output(p, opt, (suffix,))
    return [p for p in (png, svg) if p is not None]


MAX_DRAWN = 512  # positions per axis plot-mask draws: 512 x 512 cells is a readable picture


def plot_mask_command(
    mask: Annotated[str, typer.Option("--mask", help=MASK_HELP)] = "causal",
    q_len: Annotated[int, typer.Option("--q-len", help="number of queries")] = 8,
    kv_len: Annotated[int | None, typer.Option("--kv-len", help="number of keys "
                                               "(default: q-len)")] = None,
    tokens: Annotated[str | None, typer.Option("--tokens", help="labels for the key positions, "
                                               "comma- and/or space-separated")] = None,
    png: PngOpt = None,
    svg: SvgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw which keys each query may attend under a mask (True = may attend)."""
    with user_errors(as_json):
        from attnlab.functional.masks import materialize
        from attnlab.viz import mask_plot

        kv = q_len if kv_len is None else kv_len
        for name, n in (("--q-len", q_len), ("--kv-len", kv)):
            if n < 1 or n > MAX_DRAWN:
                raise ValueError(
                    f"{name}: expected 1..{MAX_DRAWN} positions to draw, got {n}; a mask is the same "
                    f"function at any length, so draw a window of it (--q-len/--kv-len <= {MAX_DRAWN}), "
                    f"or count its allowed pairs at full length with attnlab.backends.count_allowed")
        m = parse_mask(mask)
        dense = materialize(m, q_len, kv)[0, 0].numpy()  # (Lq, Lk) bool
        labels = split_tokens(tokens)
        if labels is not None and len(labels) != kv:
            raise ValueError(f"--tokens: expected {kv} labels (one per key position), got {len(labels)}")
        q_labels = k_labels = labels
        if labels is not None and q_len != kv:
            # Bottom-right alignment: the queries are the last q_len of the kv_len positions.
            q_labels, k_labels = labels[-q_len:], labels
        out = _written(png, svg)
        if out:
            fig = mask_plot(dense, q_tokens=q_labels, k_tokens=k_labels, title=m.name)
            from attnlab.viz import save_figure

            for p in out:
                save_figure(fig, p)
        counts = dense.sum(axis=1).tolist()
        if as_json:
            print_json({
                "mask": mask, "name": m.name, "q_len": q_len, "kv_len": kv,
                "visible_per_query": counts,
                "empty_rows": [i for i, c in enumerate(counts) if c == 0],
                "matrix": dense.astype(int).tolist(),
                "written": [str(p) for p in out],
            })
            return
        console.print(f"{m.name}: {q_len} queries x {kv} keys (█ may attend, · masked)",
                   markup=False, highlight=False)
        for i, row in enumerate(dense):
            cells = "".join("█" if v else "·" for v in row)
            console.print(f"{i:>4} {cells}  {counts[i]}", markup=False, highlight=False)
        for p in out:
            console.print(f"wrote {p}", markup=False, highlight=False)


def render_command(
    file: Annotated[Path, typer.Argument(help="attention exported by attnlab.viz.export_json, or a "
                                         "capture saved by attnlab generate --save-capture (.safetensors)")],
    html: Annotated[Path | None, typer.Option("--html", help="write an interactive page")] = None,
    view: Annotated[str, typer.Option("--view", help="HTML view: head or model")] = "head",
    png: PngOpt = None,
    svg: SvgOpt = None,
    layer: Annotated[int | None, typer.Option("--layer", help="layer position")] = None,
    head: Annotated[int | None, typer.Option("--head", help="head position")] = None,
    show_values: Annotated[bool, typer.Option("--values", help="print weights in cells")] = False,
    model: Annotated[str | None, typer.Option("--model", help="a capture: refuse it unless this "
                                              "model made it (e.g. smollm2)")] = None,
    token: Annotated[int | None, typer.Option("--token", help="a capture: --png draws every layer "
                                              "and head of this position's row")] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="a capture: --html is a diff page "
                                                 "against this capture of the same answer")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="--compare: these layers only, "
                                               "e.g. 0,15,29")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Render exported attention JSON: HTML page, PNG/SVG figure, terminal heatmap, patterns.

    Figures: one (layer, head) heatmap when --layer and --head are given (or there is only
    one head), else the layers x heads grid. A capture (.safetensors from attnlab generate
    --save-capture) reopens into the generation page (--html) and the answer's heatmap (--png).
    """
    if file.suffix == ".safetensors":
        from attnlab.cli.capture_render import NAMES, render_capture

        with user_errors(as_json, NAMES):
            render_capture(file, html=html, figs=_written(png, svg), layer=layer, head=head,
                           model=model, as_json=as_json, token=token, compare=compare,
                           layers=None if layers is None else split_ints("--layers", layers))
        return
    with user_errors(as_json, {"source": "FILE"}):  # viz.load_json names its argument "source"
        from attnlab import viz

        for opt, given in (("--model", model), ("--token", token), ("--compare", compare),
                           ("--layers", layers)):
            if given is not None:
                raise ValueError(f"{opt}: expected only with a capture (.safetensors), got it with "
                                 f"the JSON export {str(file)!r}")
        data = viz.load_json(file)
        n_layers, n_heads = data.shape[:2]
        for name, v, n in (("--layer", layer, n_layers), ("--head", head, n_heads)):
            if v is not None and not 0 <= v < n:
                raise ValueError(f"{name}: expected a position in 0..{n - 1}, got {v}")
        if view not in ("head", "model"):
            raise ValueError(f"--view: expected head or model, got {view!r}")
        li, hi = layer or 0, head or 0
        figs = _written(png, svg)
        check_output(html, "--html", PAGE)
        out: list[Path] = []
        if html is not None:
            make = viz.head_view_html if view == "head" else viz.model_view_html
            make(data, path=html, title=f"{file.name}: {view} view")
            out.append(html)
        if figs:
            single = (layer is not None and head is not None) or n_layers * n_heads == 1
            fig = (viz.heatmap(data.weights[li, hi], q_tokens=data.q_tokens, k_tokens=data.k_tokens,
                               title=f"layer {data.layers[li]}, head {data.heads[hi]}")
                   if single else
                   viz.layer_head_grid(data.weights, q_tokens=data.q_tokens, k_tokens=data.k_tokens,
                                       layers=data.layers, heads=data.heads, patterns=True))
            for p in figs:
                viz.save_figure(fig, p)
            out += figs
        reports = viz.classify_heads(data.weights)
        if as_json:
            print_json({
                "file": str(file), "shape": list(data.shape), "layers": data.layers,
                "heads": data.heads, "q_tokens": data.q_tokens, "k_tokens": data.k_tokens,
                "metadata": data.metadata, "written": [str(p) for p in out],
                "patterns": [{"layer": data.layers[a], "head": data.heads[b]} | r.as_dict()
                             for a, row in enumerate(reports) for b, r in enumerate(row)],
            })
            return
        console.print(viz.terminal_heatmap(
            data.weights[li, hi], q_tokens=data.q_tokens, k_tokens=data.k_tokens,
            show_values=show_values,
            title=f"layer {data.layers[li]}, head {data.heads[hi]}: {reports[li][hi].label}"))
        for p in out:
            console.print(f"wrote {p}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plot-mask")(plot_mask_command)
    app.command("render")(render_command)
