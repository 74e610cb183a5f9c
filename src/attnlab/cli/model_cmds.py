"""``attnlab inspect | compare | heads | tradeoff | serve``: open real pretrained transformers.

Every command loads a local model folder (default: the embedded all-MiniLM-L6-v2), calls one
function of ``attnlab.inspect`` and prints a table (or ``--json``). Heavy imports (viz and
matplotlib, networkx, starlette, transformers) happen only on the paths that need them, so a
plain ``attnlab inspect`` starts fast.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from attnlab.cli.common import (
    FIGURE,
    PAGE,
    ThreadsOpt,
    check_output,
    console,
    err_console,
    load_lm,
    parent_made,
    print_json,
    split_tokens,
    user_errors,
)

if TYPE_CHECKING:  # the CLI imports the inspect package only when a command runs
    from attnlab.inspect.inspection_report import AblationReport, InspectReport, TokenWeight

ModelOpt = Annotated[Path | None, typer.Option("--model", help="local Hugging Face model folder, a .gguf "
                                               "file, or smollm2 / gemma3 (the embedded LLMs); default: the "
                                               "embedded all-MiniLM-L6-v2")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
TruncOpt = Annotated[bool, typer.Option("--truncate", help="cut texts longer than the model's positions")]

# The library names its parameters (k, focus, text...); errors name what the user typed instead.
INSPECT_NAMES = {"k": "--top", "focus": "--focus", "generate": "--generate", "generate_tokens": "--generate",
                 "max_new_tokens": "--generate", "backend": "--backend", "ablate": "--ablate",
                 "text": "TEXT", "prompt": "TEXT"}
COMPARE_NAMES = {"k": "--top", "focus": "--focus", "candidates": "--candidates", "text": "TEXTS",
                 "texts": "TEXTS"}
TEXTS_NAMES = {"text": "TEXTS", "texts": "TEXTS", "widths": "--widths"}
SERVE_NAMES = {"max_chars": "--max-chars", "host": "--host", "port": "--port"}


def _w(x: float) -> str:
    return f"{x:.3f}"


def _tops(items: list[TokenWeight]) -> str:
    return ", ".join(f"{t.token} {_w(t.weight)}" for t in items)


def inspect_command(
    text: Annotated[str | None, typer.Argument(
        help="text to inspect (default: \"The animal didn't cross the street because it was too "
             "tired\")")] = None,
    model: ModelOpt = None,
    focus: Annotated[str | None, typer.Option(help="token whose attention is analysed, e.g. it (it#2: "
                                              "second one, @5: position 5)")] = None,
    layer: Annotated[int | None, typer.Option(help="layer to draw (with --head: one head)")] = None,
    head: Annotated[int | None, typer.Option(help="head to draw")] = None,
    top: Annotated[int, typer.Option(help="attended tokens listed per layer")] = 3,
    html: Annotated[Path | None, typer.Option(help="write the interactive page here (.html)")] = None,
    view: Annotated[str, typer.Option(help="page: head (BertViz-style lines) or model (all heads)")] = "head",
    png: Annotated[Path | None, typer.Option(
        help="write a heatmap (--layer/--head) or the grid (.png/.svg)")] = None,
    export: Annotated[Path | None, typer.Option(
        help="write every weight as attnlab.attention JSON (.json) for other tools")] = None,
    flow: Annotated[bool, typer.Option("--flow", help="also compute attention flow for the focus")] = False,
    generate_tokens: Annotated[int, typer.Option("--generate", help="decoders: greedy-generate N tokens "
                                                 "first and inspect the whole sequence")] = 0,
    ablate: Annotated[list[str] | None, typer.Option(help="LAYER:HEAD to zero; prints the effect")] = None,
    backend: Annotated[str, typer.Option(help="also run this attention backend (sdpa, tiled, ...) in the "
                                         "model and report its difference from eager")] = "auto",
    truncate: TruncOpt = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Where does each head look? Top attended tokens for a focus token, rollout, pictures."""
    from attnlab.cli.translator_inspect import inspect_translator, is_translator_folder

    if model is not None and is_translator_folder(model):  # a Transformer trained by attnlab train
        inspect_translator(text, model, png=png, html=html, as_json=as_json, unsupported={
            "--focus": focus is not None, "--layer": layer is not None, "--head": head is not None,
            "--export": export is not None, "--flow": flow, "--generate": generate_tokens > 0,
            "--ablate": bool(ablate), "--backend": backend != "auto", "--truncate": truncate})
        return
    with user_errors(as_json, INSPECT_NAMES):
        from attnlab.inspect.inspection import check_head, inspect_text
        from attnlab.inspect.inspection_report import HeadWeights

        if layer is not None and head is None and png is None and html is None:
            raise ValueError("--layer: expected with --head (one head's weights) or --png/--html "
                             "(that layer drawn), got --layer alone")
        check_output(html, "--html", PAGE)
        check_output(png, "--png", FIGURE)
        check_output(export, "--export", (".json",))
        lm = load_lm(model, threads=threads)
        check_head(lm, layer, head)
        res = inspect_text(lm, text, focus=focus, k=top, truncate=truncate, generate_tokens=generate_tokens,
                           flow=flow, backend=backend)
        rep, cache = res.report, res.cache  # rep is frozen: each part asked for is added with replace
        if ablate:
            rep = replace(rep, ablation=_ablate(lm, cache.encoded, ablate))
        if layer is not None and head is not None:
            rep = replace(rep, head=HeadWeights(layer, head, [[round(float(x), 6) for x in row]
                                                              for row in cache.head(layer, head)]))
        if html is not None:
            from attnlab.inspect.views import inspect_page

            best = rep.focused_heads[0] if rep.focused_heads else None
            lay = layer if layer is not None else (best.layer if best else 0)
            heads = [head] if head is not None else ([best.head] if best else None)
            parent_made(html)
            inspect_page(cache, view=view, layer=lay, heads=heads, path=html)
            rep = replace(rep, html=str(html))
        if png is not None:
            from attnlab.inspect.views import inspect_png

            parent_made(png)
            inspect_png(cache, png, layer=layer, head=head)
            rep = replace(rep, png=str(png))
        if export is not None:
            from attnlab.inspect.inspection import export_attention

            parent_made(export)
            export_attention(cache, export)
            rep = replace(rep, export=str(export))
    if as_json:
        print_json(rep.to_dict())
        return
    _print_inspect(rep, cache, layer, head)


def _ablate(lm, enc, specs: list[str]) -> AblationReport:
    from attnlab.inspect.inspection_report import AblationReport
    from attnlab.inspect.patching import Ablation, patch_effect

    abl = []
    for s in split_tokens(specs) or []:
        parts = s.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"--ablate: expected LAYER:HEAD (e.g. 3:1), got {s!r}")
        abl.append(Ablation(int(parts[0]), int(parts[1])))
    return AblationReport([[a.layer, a.head] for a in abl], patch_effect(lm, enc, ablate=abl))


def _print_inspect(rep: InspectReport, cache, layer: int | None, head: int | None) -> None:
    m = rep.model
    console.print(f"[bold]{m.name}[/] ({m.model_type} {m.kind}, {m.layers} layers x "
                  f"{m.heads} heads, {m.engine})", highlight=False)
    if rep.generated is not None:
        console.print(f"generated: {rep.generated.text!r}", highlight=False, markup=False)
    toks = "  ".join(f"{i}:{t}" for i, t in enumerate(rep.tokens))
    console.print(f"tokens: {toks}", highlight=False, markup=False)
    if rep.truncated:
        err_console.print(f"note: truncated {rep.total_tokens} tokens to {len(rep.tokens)}")
    if rep.focus is not None:
        f = rep.focus
        t = Table(title=f"Where {f.token!r} (position {f.position}) looks", title_justify="left")
        t.add_column("layer", justify="right")
        t.add_column("mean over heads")
        t.add_column("most focused head")
        for lay in rep.top_attended:
            heads = lay.heads
            h = max(range(len(heads)), key=lambda i: heads[i][0].weight)
            t.add_row(str(lay.layer), _tops(lay.mean), f"h{h}: {_tops(heads[h][:2])}")
        console.print(t)
        if rep.focused_heads:
            console.print("heads looking at one other (non-adjacent) token: " + ", ".join(
                f"L{h.layer}H{h.head} {h.token} {_w(h.weight)}" for h in rep.focused_heads), highlight=False)
        console.print(f"rollout (Abnar & Zuidema 2020): {_tops(rep.rollout)}", highlight=False)
        if rep.flow is not None:
            console.print(f"flow (max-flow, Abnar & Zuidema 2020): {_tops(rep.flow)}", highlight=False)
    elif layer is None:  # only the tokens so far: say what to ask for
        console.print("no --focus: add --focus TOKEN (e.g. --focus it) to see where that token "
                      "looks, or --layer L --head H for one head's weights", highlight=False,
                      markup=False)
    if rep.backend_check is not None:
        b = rep.backend_check
        console.print(f"backend {b.backend}: max |Δ last hidden state| vs eager = "
                      f"{b.max_abs_diff_vs_eager:.2e}", highlight=False)
    if rep.ablation is not None:
        a, nt = rep.ablation, rep.ablation.effect.next_token
        extra = f", next token {nt['before']!r} -> {nt['after']!r}" if nt else ""
        console.print(f"ablating {a.heads}: sentence cosine {a.effect.sentence_cosine:.6f}, max |Δh| "
                      f"{a.effect.max_abs_change:.4g}{extra}", highlight=False)
    if layer is not None and head is not None:
        from attnlab.inspect.views import terminal_head

        console.print(terminal_head(cache, layer, head))
    for path in (rep.html, rep.png, rep.export):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


def compare_command(
    texts: Annotated[list[str], typer.Argument(help="TEXT_A TEXT_B")],
    focus: Annotated[str, typer.Option(help="the token whose attention is compared, e.g. it")] = "it",
    candidates: Annotated[list[str] | None, typer.Option(
        help="tokens the focus may attend (--candidates animal street, or animal,street); "
             "default: content tokens in both texts")] = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option(help="heads listed")] = 5,
    html: Annotated[Path | None, typer.Option(help="write the compare page here (.html)")] = None,
    png: Annotated[Path | None, typer.Option(
        help="write the focus rows of the top heads (.png/.svg)")] = None,
    truncate: TruncOpt = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Rank heads by how far the focus token's attention moved between two texts."""
    with user_errors(as_json, COMPARE_NAMES):
        if top < 1:
            raise ValueError(f"--top: expected a positive int, got {top}")
        # `--candidates animal street`: click hands "street" to the positional texts; take it back.
        cands = split_tokens(candidates) or []
        if len(texts) > 2 and candidates:
            cands += texts[2:]
            texts = texts[:2]
        if len(texts) != 2:
            raise ValueError(f"texts: expected two texts (TEXT_A TEXT_B), got {len(texts)}")
        from attnlab.inspect.comparison import compare

        check_output(html, "--html", PAGE)
        check_output(png, "--png", FIGURE)
        lm = load_lm(model, threads=threads)
        cmp = compare(lm, texts[0], texts[1], focus, cands or None, truncate=truncate)
        rep: dict[str, Any] = {"model": lm.describe()} | cmp.to_dict(top)
        if html is not None:
            from attnlab.inspect.views import compare_page

            parent_made(html)
            compare_page(cmp, path=html)
            rep["html"] = str(html)
        if png is not None:
            from attnlab.inspect.views import compare_png

            parent_made(png)
            compare_png(cmp, png, top=min(top, 3))
            rep["png"] = str(png)
    if as_json:
        print_json(rep)
        return
    c = cmp.candidates
    t = Table(title=f"Attention from {focus!r}: A = {texts[0]!r}, B = {texts[1]!r}", title_justify="left")
    for col in ("layer", "head", "A", "B", "shift" if len(c) == 2 else "moved", "toward"):
        t.add_column(col, justify="right" if col in ("layer", "head") else "left")
    for h in rep["heads"]:
        fmt = lambda d: "  ".join(f"{k} {_w(v)}" for k, v in d.items())  # noqa: E731
        score = h["shift"] if h["shift"] is not None else h["moved"]
        t.add_row(str(h["layer"]), str(h["head"]), fmt(h["a"]), fmt(h["b"]), f"{score:+.3f}",
                  h["toward"] or "")
    console.print(t)
    b = cmp.best
    if b.shift is not None:
        console.print(f"best: layer {b.layer} head {b.head} moves {abs(b.shift):.3f} of the attention "
                      f"from {focus!r} towards {b.toward(c)!r}", highlight=False)
    for key in ("html", "png"):
        if key in rep:
            console.print(f"wrote {rep[key]}", highlight=False)


def heads_command(
    texts: Annotated[list[str] | None, typer.Argument(help="probe texts (default: built-in)")] = None,
    model: ModelOpt = None,
    png: Annotated[Path | None, typer.Option(help="each detector's layers x heads scores (.png)")] = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Detect previous-token, duplicate, induction, [CLS]/[SEP]/sink, positional and broad heads."""
    with user_errors(as_json, TEXTS_NAMES):
        from attnlab.inspect.heads import detect_heads

        check_output(png, "--png", FIGURE)
        lm = load_lm(model, threads=threads)
        hs = detect_heads(lm, list(texts) if texts else None)
        rep = {"model": lm.describe()} | hs.to_dict()
        if png is not None:
            from attnlab.inspect.views import heads_png

            parent_made(png)
            rep["png"] = str(heads_png(hs.scores, png, model=lm.name))
    if as_json:
        print_json(rep)
        return
    t = Table(title=f"{lm.name}: head detection over {len(hs.probes)} probes", title_justify="left")
    for col in ("job", "threshold", "heads at or above it", "top 3"):
        t.add_column(col)
    for d in hs.scores:
        det = rep["detected"][d]
        shown = ", ".join(f"L{h['layer']}H{h['head']}" for h in det[:8]) + (" ..." if len(det) > 8 else "")
        t.add_row(d, f"{hs.thresholds[d]:.2f}", f"{len(det)}: {shown}" if det else "0",
                  ", ".join(f"L{h['layer']}H{h['head']} {h['score']:.2f}" for h in rep["top"][d]))
    console.print(t)
    # Heads as rows, layers as columns: models have more heads than a terminal has room for.
    g = Table(title="pattern label per head (viz classifier, first probe)", title_justify="left")
    g.add_column("head", justify="right")
    for layer in range(lm.num_layers):
        g.add_column(f"L{layer}")
    for h in range(lm.num_heads):
        g.add_row(str(h), *(row[h] for row in hs.patterns))
    console.print(g)
    if "png" in rep:
        console.print(f"wrote {rep['png']}", highlight=False)


def tradeoff_command(
    texts: Annotated[list[str] | None, typer.Argument(help="texts (default: built-in probes)")] = None,
    widths: Annotated[list[str] | None, typer.Option(help="window half-widths, e.g. 1,2,4,8")] = None,
    global_first: Annotated[bool, typer.Option("--global-first", help="every query also sees the first "
                                               "token (Longformer-style global token)")] = False,
    model: ModelOpt = None,
    truncate: TruncOpt = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Run the model with sliding-window attention of several widths; report drift from full."""
    with user_errors(as_json, TEXTS_NAMES):
        ws = []
        for w in split_tokens(widths) or []:
            if not w.isdigit():
                raise ValueError(f"--widths: expected non-negative integers (e.g. 1,2,4), got {w!r}")
            ws.append(int(w))
        from attnlab.inspect.window_tradeoff import tradeoff

        lm = load_lm(model, threads=threads)
        too_wide = [w for w in ws if w > lm.max_tokens]
        if too_wide:  # wider than every text is full attention (and 1e20 overflows the mask's ints)
            raise ValueError(f"--widths: expected half-widths up to {lm.max_tokens} (the model's "
                             f"positions; full attention is always measured), got {too_wide[0]}")
        rows = tradeoff(lm, list(texts) if texts else None, ws or None, truncate=truncate,
                        global_first=global_first)
        rep = {"model": lm.describe(), "global_first": global_first, "rows": [r.to_dict() for r in rows]}
    if as_json:
        print_json(rep)
        return
    extra = " + global first token" if global_first else ""
    t = Table(title=f"{lm.name}: local (sliding-window{extra}) vs global attention", title_justify="left")
    for col in ("window", "keys/query", "embedding cosine", "top-1 agree", "mass kept"):
        t.add_column(col, justify="right")
    for r in rep["rows"]:
        t.add_row("full" if r["width"] is None else f"±{r['width']}", f"{r['keys']:.1f}",
                  f"{r['cosine']:.4f}", f"{r['top1_agree']:.3f}", f"{r['coverage']:.3f}")
    console.print(t)


def serve_command(
    host: Annotated[str, typer.Option(
        help="address to bind (keep 127.0.0.1 unless you mean it)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8765,
    model: ModelOpt = None,
    max_chars: Annotated[int, typer.Option(help="longest text accepted")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="print the address as one JSON line")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """A local page to type sentences and explore the head, model and compare views."""
    with user_errors(as_json, SERVE_NAMES):
        if not 0 < port < 65536:
            raise ValueError(f"--port: expected 1..65535, got {port}")
        from attnlab.inspect.server.app import create_app

        lm = load_lm(model, threads=threads)
        app = create_app(lm, max_chars=max_chars, host=host, port=port)
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"warning: binding {host}: anyone who can reach it can use this page")
    shown = "localhost" if host == "127.0.0.1" else host
    if as_json:  # one line, so that a script can read the address before the server blocks
        sys.stdout.write(json.dumps({"url": f"http://{shown}:{port}/", "host": host, "port": port,
                                     "model": lm.describe()["name"]}) + "\n")
        sys.stdout.flush()
    else:
        console.print(f"attnlab serve: http://{shown}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", **app.state.uvicorn_settings)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
    app.command("compare")(compare_command)
    app.command("heads")(heads_command)
    app.command("tradeoff")(tradeoff_command)
    app.command("serve")(serve_command)
