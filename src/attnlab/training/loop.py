"""The training loop: teacher forcing, Adam, validation BLEU, early stopping, checkpoints.

Determinism: the model is initialised from ``train.seed``; the batch order of every epoch is
a function of (seed, epoch); dropout draws from torch's RNG, which the checkpoint saves. So a
run killed at any moment and resumed with ``resume=True`` ends with the same bytes as one
that never stopped (same machine, same ``train.threads``; a subprocess test checks it).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from attnlab.data.batching import collate, encode_pairs, epoch_order
from attnlab.data.io import write_json
from attnlab.data.vocab import PAD_ID
from attnlab.models.seq2seq.model import Seq2Seq
from attnlab.training.checkpoint import Progress, fault, load_checkpoint, save_checkpoint
from attnlab.training.config import RunConfig
from attnlab.training.evaluate import evaluate_pairs
from attnlab.training.run import Run, create_run, open_run

Log = Callable[[str], None]


@dataclass
class TrainResult:
    folder: Path
    progress: Progress
    results: dict[str, Any]

    @property
    def tokens_per_second(self) -> float:
        return self.results["tokens_per_second"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: RunConfig | None, out: str | os.PathLike[str], *, resume: bool = False,
          log: Log | None = None) -> TrainResult:
    """Train into ``out`` (a new folder, or the run to resume). Returns the final results."""
    log = log or (lambda _msg: None)
    out = Path(out)
    if resume and (out / "run.json").is_file():
        run = open_run(out, cfg)
    elif cfg is None:
        raise ValueError("cfg: expected a RunConfig (or resume=True with an existing run), "
                         "got None")
    else:
        run = create_run(cfg, out)
    spec = run.cfg.train
    if spec.threads:
        torch.set_num_threads(spec.threads)
    seed_everything(spec.seed)
    model = Seq2Seq(run.cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=spec.lr_decay, patience=spec.lr_patience)
    prog = load_checkpoint(out, model, opt, sched) if resume else None
    if prog is not None:
        log(f"resumed at step {prog.step} (epoch {prog.epoch}, batch {prog.batch_in_epoch})")
    prog = prog or Progress()
    if not prog.stopped:
        _loop(run, model, opt, sched, prog)
    return _finish(run, prog, log)


def _loop(run: Run, model: Seq2Seq, opt: torch.optim.Optimizer,
          sched: torch.optim.lr_scheduler.ReduceLROnPlateau, prog: Progress) -> None:
    spec, codec = run.cfg.train, run.codec
    data = encode_pairs(run.splits.train, codec.src_tok, codec.tgt_tok, codec.src_vocab,
                        codec.tgt_vocab)
    lengths = [len(s) for s in data.src]
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID, reduction="sum",
                                  label_smoothing=spec.label_smoothing)
    vocab = run.cfg.model.tgt_vocab_size
    started = time.perf_counter()
    bar = tqdm(total=spec.max_steps, initial=prog.step, disable=not spec.progress,
               file=sys.stderr, unit="step", dynamic_ncols=True, leave=False)
    try:
        while not prog.stopped:
            if prog.epoch >= spec.max_epochs:
                prog.stopped = "max_epochs"
                break
            batches = epoch_order(lengths, spec.batch_size, spec.seed, prog.epoch)
            while prog.batch_in_epoch < len(batches) and not prog.stopped:
                batch = collate(data, batches[prog.batch_in_epoch])
                t0 = time.perf_counter()
                model.train()
                logits = model(batch.src, batch.src_lengths, batch.tgt_in).logits  # (B, Lt, V)
                n_tok = batch.n_target_tokens
                loss = loss_fn(logits.reshape(-1, vocab), batch.tgt_out.reshape(-1))
                opt.zero_grad(set_to_none=True)
                (loss / n_tok).backward()  # mean over target tokens
                nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
                opt.step()
                prog.step += 1
                prog.batch_in_epoch += 1
                loss_value = loss.detach().item()
                prog.window_loss += loss_value
                prog.window_tokens += n_tok
                prog.train_tokens += n_tok
                prog.train_seconds += time.perf_counter() - t0
                fault("step", prog.step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value / n_tok:.3f}",
                                tok_s=f"{prog.train_tokens / max(prog.train_seconds, 1e-9):.0f}",
                                bleu=f"{max(prog.best_bleu, 0):.1f}", refresh=False)
                _after_step(run, model, opt, sched, prog, started)
            if not prog.stopped:
                prog.epoch += 1
                prog.batch_in_epoch = 0
    finally:
        bar.close()


def _after_step(run: Run, model: Seq2Seq, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.ReduceLROnPlateau, prog: Progress,
                started: float) -> None:
    spec = run.cfg.train
    if prog.step >= spec.max_steps:
        prog.stopped = "max_steps"
    elif spec.time_limit and time.perf_counter() - started > spec.time_limit * 60:
        prog.stopped = "time_limit"
    if prog.step % spec.eval_every == 0 or prog.stopped:
        _validate(run, model, opt, sched, prog)
    if prog.step % spec.checkpoint_every == 0 or prog.step % spec.eval_every == 0 \
            or prog.stopped:
        save_checkpoint(run.folder, model, opt, sched, prog)


def _validate(run: Run, model: Seq2Seq, opt: torch.optim.Optimizer,
              sched: torch.optim.lr_scheduler.ReduceLROnPlateau, prog: Progress) -> None:
    spec = run.cfg.train
    res = evaluate_pairs(model, run.splits.valid, run.codec, batch_size=spec.eval_batch_size,
                         ratio=spec.max_len_ratio)
    bleu, chrf = res.metrics["bleu"], res.metrics["chrf"]
    prog.history.append({"step": prog.step, "epoch": prog.epoch,
                         "train_loss": round(prog.window_loss / max(prog.window_tokens, 1), 5),
                         "valid_bleu": bleu, "valid_chrf": chrf,
                         "valid_exact": res.metrics["exact"], "lr": opt.param_groups[0]["lr"]})
    prog.window_loss, prog.window_tokens = 0.0, 0
    if bleu is None:  # no validation split: keep the latest model, never stop early
        model.save(run.folder)
        return
    score = bleu + chrf / 1000  # BLEU, ties (e.g. no 4-grams at all: BLEU 0) broken by chrF
    sched.step(score)
    if score > prog.best_score:
        prog.best_score, prog.best_bleu, prog.best_step, prog.bad_evals = score, bleu, prog.step, 0
        model.save(run.folder)  # the best model is what translate / evaluate load
    else:
        prog.bad_evals += 1
        if spec.patience and prog.bad_evals >= spec.patience and not prog.stopped:
            prog.stopped = "early_stopping"


def _finish(run: Run, prog: Progress, log: Log) -> TrainResult:
    """Score the best model on the test split; write results.json."""
    best = Seq2Seq.load(run.folder)
    spec, data = run.cfg.train, run.cfg.data
    res = evaluate_pairs(best, run.splits.test, run.codec, batch_size=spec.eval_batch_size,
                         ratio=spec.max_len_ratio, edges=data.buckets)
    results = {
        "test": res.metrics, "test_by_length": res.buckets, "stopped": prog.stopped,
        "steps": prog.step, "epochs": prog.epoch, "best_step": prog.best_step,
        "best_valid_bleu": prog.best_bleu, "train_tokens": prog.train_tokens,
        "train_seconds": round(prog.train_seconds, 2),
        "tokens_per_second": round(prog.train_tokens / max(prog.train_seconds, 1e-9), 1),
        "history": prog.history, "threads": torch.get_num_threads(),
        "config": run.cfg.to_dict(),
    }
    write_json(run.folder / "results.json", results)
    log(f"stopped ({prog.stopped}) at step {prog.step}; best valid BLEU {prog.best_bleu:.2f} "
        f"at step {prog.best_step}; test BLEU {res.metrics['bleu']:.2f}")
    return TrainResult(run.folder, prog, results)


