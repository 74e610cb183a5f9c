"""Induction heads form in two-layer attention-only models, not in one-layer ones.

Olsson et al. 2022 ("In-context Learning and Induction Heads") and Elhage et al. 2021: in a
sequence where a block of tokens appears twice, a model can predict the second copy by
attending from the current token to the token that *followed* its previous occurrence, then
copying it. That needs two heads in series: a previous-token head (layer 0) writes "my
predecessor was A" into each position, and an induction head (layer 1) matches the current
token A against it. One attention-only layer cannot compose heads, so it cannot do this for
blocks at varying offsets (a fixed offset would let it cheat with a positional head, hence
blocks of random length at random places). Training shows a sudden "phase change": loss on the
repeated half drops and the induction score of a layer-1 head jumps together.

Data: random tokens; each sequence holds one block of ``n`` random tokens (n drawn per
sequence) twice, at random places. Measured every ``eval_every`` steps on fresh sequences:
loss, accuracy of the next-token prediction inside the second copy (tokens 2..n, the first is
unpredictable), and per head the *induction score* — on sequences that are a random block
repeated, the mean attention from each position of the second copy to the position just after
that token's first occurrence — and the *previous-token score*.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from attnlab.arguments import expect_positive_int
from attnlab.models.transformer import LMConfig, TransformerLM


@dataclass(frozen=True)
class InductionConfig:
    vocab: int = 64
    seq_len: int = 64
    min_block: int = 8
    max_block: int = 30
    d_model: int = 64
    heads: int = 4
    batch: int = 64
    steps: int = 2500
    lr: float = 3e-3  # 1e-3 had not reached the phase change by step 2000 (measured)
    eval_every: int = 100
    eval_batch: int = 128
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("vocab", "seq_len", "min_block", "d_model", "heads", "batch", "steps", "eval_every",
                     "eval_batch", "threads"):
            expect_positive_int(name, getattr(self, name))
        if not self.min_block <= self.max_block or 2 * self.max_block + 2 > self.seq_len:
            raise ValueError(f"max_block: expected min_block <= max_block and two blocks (+2) to fit in "
                             f"seq_len={self.seq_len}, got {self.min_block}..{self.max_block}")


def sample_batch(cfg: InductionConfig, n_seq: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """ids (N, T) random tokens with one block repeated; scored (N, T) bool: the targets inside
    the second copy that the first copy makes predictable (position t predicts token t + 1)."""
    T = cfg.seq_len
    ids = torch.randint(cfg.vocab, (n_seq, T), generator=g)
    scored = torch.zeros(n_seq, T, dtype=torch.bool)
    lens = torch.randint(cfg.min_block, cfg.max_block + 1, (n_seq,), generator=g)
    for i in range(n_seq):
        n = int(lens[i])
        s1 = int(torch.randint(0, T - 2 * n + 1, (1,), generator=g))
        s2 = int(torch.randint(s1 + n, T - n + 1, (1,), generator=g))
        ids[i, s2: s2 + n] = ids[i, s1: s1 + n]
        scored[i, s2: s2 + n - 1] = True  # predicting tokens 2..n of the copy
    return ids, scored


def head_scores(model: TransformerLM, cfg: InductionConfig, g: torch.Generator) -> dict[str, Tensor]:
    """Induction and previous-token scores (layers, heads) on [block, block] sequences."""
    n = cfg.seq_len // 2
    block = torch.randint(cfg.vocab, (cfg.eval_batch, n), generator=g)
    ids = torch.cat([block, block], dim=1)  # (N, 2n)
    with torch.no_grad():
        w = torch.stack(model(ids, need_weights=True).weights)  # (layers, N, H, 2n, 2n)
    q = torch.arange(n, 2 * n)  # queries in the second copy
    induction = w[:, :, :, q, q - n + 1].mean(dim=(1, 3))  # attend to the token after its first copy
    prev = w[:, :, :, torch.arange(1, 2 * n), torch.arange(0, 2 * n - 1)].mean(dim=(1, 3))
    return {"induction": induction, "previous_token": prev}  # (layers, H) each


@dataclass
class Curve:
    layers: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    repeat_accuracy: list[float] = field(default_factory=list)
    best_induction: list[float] = field(default_factory=list)
    induction: list[list[list[float]]] = field(default_factory=list)  # per eval: (layers, heads)
    previous_token: list[list[list[float]]] = field(default_factory=list)
    seconds: float = 0.0


def _evaluate(model: TransformerLM, cfg: InductionConfig, seed: int
              ) -> tuple[float, float, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)  # the same evaluation sequences at every step
    ids, scored = sample_batch(cfg, cfg.eval_batch, g)
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]  # (N, T-1, V): position t predicts token t + 1
    target, mask = ids[:, 1:], scored[:, :-1]
    loss = float(F.cross_entropy(logits[mask], target[mask]))
    acc = float((logits.argmax(-1) == target)[mask].float().mean())
    return loss, acc, head_scores(model, cfg, g)


def _rounded(x: Tensor) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in x]


def train_one(cfg: InductionConfig, layers: int, *, progress: bool = False,
              log: Callable[[str], None] | None = None) -> Curve:
    """Train an attention-only model of ``layers`` layers; the curve of its metrics."""
    torch.manual_seed(cfg.seed)
    model = TransformerLM(LMConfig(vocab_size=cfg.vocab, d_model=cfg.d_model, heads=cfg.heads,
                                   layers=layers, max_len=cfg.seq_len, positions="learned",
                                   attention_only=True))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    curve = Curve(layers)
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"{layers}-layer", disable=not progress, leave=False)
    for step in bar:
        model.train()
        ids, _ = sample_batch(cfg, cfg.batch, g)
        logits = model(ids).logits[:, :-1]  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            ev_loss, acc, heads = _evaluate(model, cfg, cfg.seed + 2)
            curve.steps.append(step)
            curve.loss.append(round(ev_loss, 5))
            curve.repeat_accuracy.append(round(acc, 5))
            curve.best_induction.append(round(float(heads["induction"].max()), 5))
            curve.induction.append(_rounded(heads["induction"]))
            curve.previous_token.append(_rounded(heads["previous_token"]))
            bar.set_postfix(acc=f"{acc:.2f}", ind=f"{curve.best_induction[-1]:.2f}", refresh=False)
    curve.seconds = round(time.perf_counter() - t0, 1)
    if log:
        log(f"{layers}-layer: repeat accuracy {curve.repeat_accuracy[-1]:.3f}, best induction score "
            f"{curve.best_induction[-1]:.3f} ({curve.seconds} s)")
    return curve


def phase_change_step(curve: Curve, threshold: float = 0.5) -> int | None:
    """The first evaluated step whose repeat accuracy reaches ``threshold``."""
    return next((s for s, a in zip(curve.steps, curve.repeat_accuracy, strict=True) if a >= threshold), None)


def run_induction(cfg: InductionConfig, *, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Both models, same data and seed: the experiment's results (JSON-ready)."""
    from attnlab.threads import apply_threads

    apply_threads(cfg.threads)
    curves = {n: train_one(cfg, n, progress=progress, log=log) for n in (1, 2)}
    summary = []
    for n, c in curves.items():
        final = c.induction[-1]
        layer, head = max(((i, j) for i in range(len(final)) for j in range(len(final[i]))),
                          key=lambda ij: final[ij[0]][ij[1]])
        summary.append({"layers": n, "repeat_accuracy": c.repeat_accuracy[-1], "loss": c.loss[-1],
                        "best_induction": c.best_induction[-1], "best_head": f"L{layer}H{head}",
                        "phase_change_step": phase_change_step(c), "seconds": c.seconds})
    return {"config": asdict(cfg), "summary": summary,
            "curves": {str(n): asdict(c) for n, c in curves.items()}}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| model | repeat accuracy | loss | best induction score (head) | phase change at step | "
             "train s |", "|---|---:|---:|---:|---:|---:|"]
    for s in res["summary"]:
        pc = s["phase_change_step"] if s["phase_change_step"] is not None else "never"
        lines.append(f"| {s['layers']}-layer attention-only | {s['repeat_accuracy']:.3f} | {s['loss']:.3f} | "
                     f"{s['best_induction']:.3f} ({s['best_head']}) | {pc} | {s['seconds']:.0f} |")
    c = res["config"]
    lines += ["", f"Random tokens (vocabulary {c['vocab']}, length {c['seq_len']}), one block of "
              f"{c['min_block']}-{c['max_block']} tokens repeated at random places; {c['steps']} steps "
              f"of batch {c['batch']}, seed {c['seed']}. Repeat accuracy: next-token accuracy on tokens "
              f"2..n of the second copy; induction score: mean attention from the second copy of a "
              f"repeated block to the token after the first occurrence (Olsson et al. 2022); phase "
              f"change: first evaluation with repeat accuracy >= 0.5."]
    return "\n".join(lines) + "\n"


def seeds_markdown(runs: dict[int, dict[str, Any]], accuracy: float = 0.8, score: float = 0.5) -> str:
    """One row per seed (``runs``: seed -> run_induction's result) and how many seeds reach the
    issue's marks: 2-layer repeat accuracy > ``accuracy``, best induction score > ``score``."""
    lines = ["| seed | 2-layer repeat accuracy | best induction score (head) | phase change at step | "
             "1-layer repeat accuracy |", "|---:|---:|---:|---:|---:|"]
    hits = 0
    for seed, res in runs.items():
        one, two = (next(s for s in res["summary"] if s["layers"] == n) for n in (1, 2))
        pc = two["phase_change_step"] if two["phase_change_step"] is not None else "never"
        lines.append(f"| {seed} | {two['repeat_accuracy']:.3f} | {two['best_induction']:.3f} "
                     f"({two['best_head']}) | {pc} | {one['repeat_accuracy']:.3f} |")
        hits += two["repeat_accuracy"] > accuracy and two["best_induction"] > score
    steps = next(iter(runs.values()))["config"]["steps"]
    lines += ["", f"{hits} of {len(runs)} seeds reach 2-layer repeat accuracy > {accuracy} with an "
              f"induction score > {score} within {steps} steps."]
    return "\n".join(lines) + "\n"


def plot_png(res: dict[str, Any]) -> bytes:
    """Repeat accuracy and best induction score against steps, one line per model."""
    import io

    from matplotlib.figure import Figure  # Agg canvas; pyplot never touched

    fig = Figure(figsize=(9.6, 3.8), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    for name, c in res["curves"].items():
        ax1.plot(c["steps"], c["repeat_accuracy"], marker=".", label=f"{name}-layer")
        ax2.plot(c["steps"], c["best_induction"], marker=".", label=f"{name}-layer")
    for ax, title in ((ax1, "accuracy on the repeated block"), (ax2, "best head's induction score")):
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Induction heads: the two-layer phase change (Olsson et al. 2022)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
