"""The heads experiment: which heads of a Transformer translator matter (Michel et al. 2019).

1. Ablation: each head of every attention (encoder self, decoder self, cross) is zeroed on its
   own through :func:`head_mask` (its context z_h multiplied by 0) and the test BLEU of the
   ablated translator is compared with the full one (Michel et al. §3, Table 1).
2. Importance: I_h = Σ_batches |∂L/∂ξ_h| at ξ = 1 (Michel et al. eq. 2), L the teacher-forced
   cross-entropy over validation batches, normalised per attention by its l2 norm (§4.1).
3. Pruning: heads are removed in increasing order of importance (one ranking, computed once)
   and BLEU is plotted against the number of heads kept (Michel et al. Fig. 3).

Outputs in ``--out``: ``results.json``, ``table.md``, ``heads_<encoder-self|decoder-self|
decoder-cross>.png`` (BLEU drop, layers x heads), ``pruning.png``; ``model/`` when trained here.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.data.batching import collate, encode_pairs, eval_order
from attnlab.data.io import atomic_write_bytes, atomic_write_text, read_json, write_json
from attnlab.data.tsv import Pair
from attnlab.data.vocab import PAD_ID
from attnlab.models.transformer.heads import ablation_masks, attention_sites, head_mask
from attnlab.threads import apply_threads
from attnlab.training.evaluate import Codec, evaluate_pairs
from attnlab.training.experiments.common import experiment_threads
from attnlab.training.run_config import RunConfig, apply_overrides, preset

DEFAULTS = ["data.train_size=20000", "train.max_steps=1000", "train.eval_every=250",
            "train.checkpoint_every=250", "train.patience=0"]
QUICK = ["train.max_steps=10", "train.eval_every=5", "train.checkpoint_every=5"]
KINDS = {"encoder.self": "encoder-self", "decoder.self": "decoder-self",
         "decoder.cross": "decoder-cross"}


@dataclass
class HeadsResult:
    folder: Path
    baseline_bleu: float
    ablation: list[dict[str, Any]]  # one per (site, head): bleu, drop, importance
    pruning: list[dict[str, Any]]  # one per number of heads kept
    seconds: float


def experiment_config(*, quick: bool = False, overrides: Sequence[str] = (),
                      threads: int = 0) -> RunConfig:
    threads = experiment_threads(threads)
    base = preset("transformer-tiny" if quick else "transformer-numbers")
    return apply_overrides(base, [*([] if quick else DEFAULTS), *(QUICK if quick else []),
                                  *overrides, "train.progress=false", f"train.threads={threads}"])


@contextlib.contextmanager
def _masked(model: nn.Module, *masks: Mapping[str, Tensor]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for m in masks:
            if m:
                stack.enter_context(head_mask(model, m))  # nested hooks multiply
        yield


def bleu(model: nn.Module, pairs: Sequence[Pair], codec: Codec,
         *masks: Mapping[str, Tensor]) -> float:
    with _masked(model, *masks), torch.no_grad():
        return float(evaluate_pairs(model, pairs, codec).metrics["bleu"])  # type: ignore[arg-type]


def ablate(model: nn.Module, pairs: Sequence[Pair], codec: Codec,
           base: Mapping[str, Tensor] | None = None,
           log: Callable[[str], None] | None = None) -> tuple[float, list[dict[str, Any]]]:
    """BLEU with every head zeroed alone, on top of ``base`` masks; (full BLEU, rows)."""
    base = dict(base or {})
    full = bleu(model, pairs, codec, base)
    rows = []
    for site in attention_sites(model):
        for h in range(site.heads):
            b = bleu(model, pairs, codec, base, ablation_masks(model, [(site.name, h)]))
            rows.append({"site": site.name, "layer": site.layer, "head": h, "bleu": b,
                         "drop": round(full - b, 2)})
        if log:
            log(f"ablated the {site.heads} heads of {site.name}")
    return full, rows


def importance(model: nn.Module, pairs: Sequence[Pair], codec: Codec, *,
               batch_size: int = 64) -> dict[str, list[float]]:
    """Michel et al. eq. 2: Σ_batches |∂L/∂ξ_h| at ξ = 1, l2-normalised per attention."""
    data = encode_pairs(pairs, codec.src_tok, codec.tgt_tok, codec.src_vocab, codec.tgt_vocab)
    keep = [i for i in range(len(data)) if data.src[i]]
    xi = {s.name: torch.ones(s.heads, requires_grad=True) for s in attention_sites(model)}
    total = {name: torch.zeros_like(x) for name, x in xi.items()}
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID)
    was_training = model.training
    model.eval()  # no dropout: the importance of the translator that decodes
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only ξ needs a gradient
    try:
        for idx in eval_order([len(data.src[i]) for i in keep], batch_size):
            batch = collate(data, [keep[i] for i in idx])
            with head_mask(model, xi):
                logits = model(batch.src, batch.src_lengths, batch.tgt_in).logits  # (B, Lt, V)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1))
            grads = torch.autograd.grad(loss, list(xi.values()))
            for name, g in zip(xi, grads, strict=True):
                total[name] += g.abs()
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    return {name: (t / t.norm().clamp_min(1e-12)).tolist() for name, t in total.items()}


def prune(model: nn.Module, pairs: Sequence[Pair], codec: Codec,
          scores: Mapping[str, Sequence[float]]) -> list[dict[str, Any]]:
    """BLEU as heads are removed, least important first: one row per number of heads kept."""
    order = sorted(((s, name, h) for name, v in scores.items() for h, s in enumerate(v)),
                   key=lambda t: (t[0], t[1], t[2]))
    total = len(order)
    rows: list[dict[str, Any]] = [{"kept": total, "removed": None,
                                   "bleu": bleu(model, pairs, codec)}]
    for n in range(1, total + 1):
        gone = [(name, h) for _s, name, h in order[:n]]
        b = bleu(model, pairs, codec, ablation_masks(model, gone))
        rows.append({"kept": total - n, "removed": f"{gone[-1][0]}:{gone[-1][1]}", "bleu": b})
    return rows


def run_heads(out: str | os.PathLike[str], *, model_dir: str | os.PathLike[str] | None = None,
              quick: bool = False, overrides: Sequence[str] = (), sentences: int = 300,
              threads: int = 0, log: Callable[[str], None] | None = None) -> HeadsResult:
    """Train (or take ``model_dir``) a Transformer translator; ablate, rank and prune heads."""
    from attnlab.models.translators import load_translator
    from attnlab.training.experiments.common import train_one
    from attnlab.training.run import open_run

    log = log or (lambda _m: None)
    if sentences < 1:
        raise ValueError(f"--sentences: expected >= 1, got {sentences}")
    threads = experiment_threads(threads)  # checked before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if model_dir is None:
        cfg = experiment_config(quick=quick, overrides=overrides, threads=threads)
        model_dir = out / "model"
        log(f"training a Transformer into {model_dir} ...")
        train_one(cfg.to_dict(), str(model_dir), cfg.train.threads)
        apply_threads(cfg.train.threads)
    elif not (Path(model_dir) / "results.json").is_file():
        raise FileNotFoundError(f"--model: {model_dir} holds no finished run (results.json "
                                f"missing); train one with `attnlab train --arch transformer`")
    else:
        apply_threads(threads)
    run = open_run(model_dir)
    if run.cfg.arch != "transformer":
        raise ValueError(f"--model: expected a Transformer run (model.arch=transformer), got "
                         f"model.arch={run.cfg.arch}")
    model = load_translator(model_dir)
    model.eval()
    test, valid = run.splits.test[:sentences], run.splits.valid or run.splits.train[:sentences]
    full, rows = ablate(model, test, run.codec, log=log)
    log("importance scores over the validation split ...")
    scores = importance(model, valid, run.codec)
    for r in rows:
        r["importance"] = round(scores[r["site"]][r["head"]], 4)
    log("pruning ...")
    pruning = prune(model, test, run.codec, scores)
    seconds = time.perf_counter() - started
    trained = read_json(Path(model_dir) / "results.json")
    write_json(out / "results.json", {
        "model": str(model_dir), "sentences": len(test), "baseline_bleu": full,
        "model_test_bleu": trained["test"]["bleu"], "ablation": rows, "pruning": pruning,
        "importance": scores, "config": run.cfg.to_dict()})
    atomic_write_text(out / "table.md", markdown(full, rows, pruning, len(test), seconds))
    for key, name in KINDS.items():
        sel = [r for r in rows if r["site"].split(".")[0] + "." + r["site"].split(".")[2] == key]
        if sel:
            atomic_write_bytes(out / f"heads_{name}.png", heatmap_png(sel, name))
    atomic_write_bytes(out / "pruning.png", pruning_png(pruning))
    return HeadsResult(out, full, rows, pruning, seconds)


def markdown(full: float, rows: list[dict[str, Any]], pruning: list[dict[str, Any]],
             n: int, seconds: float) -> str:
    lines = [f"Test BLEU of the full model on {n} sentences: {full:.2f}", "",
             "| attention | head | BLEU without it | drop | importance |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['site']} | {r['head']} | {r['bleu']:.2f} | {r['drop']:.2f} | "
              f"{r.get('importance', float('nan')):.3f} |" for r in rows]
    lines += ["", "| heads kept | last removed | BLEU |", "|---:|---|---:|"]
    lines += [f"| {p['kept']} | {p['removed'] or '-'} | {p['bleu']:.2f} |" for p in pruning]
    lines += ["", f"Wall time of this invocation: {seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def heatmap_png(rows: list[dict[str, Any]], title: str) -> bytes:
    """BLEU drop per head: layers down, heads across."""
    from matplotlib.figure import Figure  # Agg canvas; pyplot never touched

    layers = sorted({r["layer"] for r in rows})
    heads = max(r["head"] for r in rows) + 1
    grid = [[float("nan")] * heads for _ in layers]
    for r in rows:
        grid[layers.index(r["layer"])][r["head"]] = r["drop"]
    fig = Figure(figsize=(1.2 + 0.9 * heads, 1.2 + 0.7 * len(layers)), dpi=110)
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="Reds", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(heads), [str(h) for h in range(heads)])
    ax.set_yticks(range(len(layers)), [str(la) for la in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{title}: BLEU drop when the head is ablated", fontsize=9)
    fig.colorbar(im, ax=ax)
    return _png(fig)


def pruning_png(pruning: list[dict[str, Any]]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=110)
    ax = fig.add_subplot()
    ax.plot([p["kept"] for p in pruning], [p["bleu"] for p in pruning], marker="o")
    ax.invert_xaxis()
    ax.set_xlabel("heads kept (least important removed first)")
    ax.set_ylabel("test BLEU")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.set_title("Pruning heads by importance (Michel et al. 2019)", fontsize=10)
    return _png(fig)
