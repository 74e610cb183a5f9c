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

from attnlab.data.batching import EncodedPairs, collate, encode_pairs, epoch_order
from attnlab.data.io import read_json, write_json
from attnlab.data.vocab import PAD_ID
from attnlab.models.translation import TranslationModel
from attnlab.models.translators import build_translator, load_translator
from attnlab.training.checkpoint import Progress, fault, load_checkpoint, save_checkpoint
from attnlab.training.data_parallel import DataParallel, from_env
from attnlab.training.evaluate import evaluate_pairs
from attnlab.training.run import Run, create_run, open_run
from attnlab.training.run_config import RunConfig, TrainSpec
from attnlab.training.schedule import Scheduler, after_step, after_validation, make_scheduler

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
    out = Path(out)
    dp = from_env()  # under torchrun: this rank's place in the job (data_parallel.py)
    log = (log or (lambda _msg: None)) if dp.main else (lambda _msg: None)
    run = _open(cfg, out, resume, dp)
    spec = run.cfg.train
    if spec.threads:
        from attnlab.threads import apply_threads

        apply_threads(spec.threads)
    seed_everything(spec.seed)
    model = build_translator(run.cfg.model)  # model.arch: rnn (Seq2Seq) | transformer
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = make_scheduler(opt, spec.schedule, warmup=spec.warmup, lr_decay=spec.lr_decay,
                           lr_patience=spec.lr_patience)
    prog = load_checkpoint(out, model, opt, sched, rank=dp.rank, world=dp.world) if resume else None
    if prog is not None:
        log(f"resumed at step {prog.step} (epoch {prog.epoch}, batch {prog.batch_in_epoch})")
    else:
        if run.splits.report is not None:  # a new run: say what its data became
            log(run.splits.report.summary())
        if dp.active:
            torch.manual_seed(spec.seed + dp.rank)  # each rank its own dropout stream (weights: DDP syncs)
    prog = prog or Progress()
    if prog.stopped and _budget_left(prog, spec):
        log(f"continuing: the run had stopped ({prog.stopped}), but the budget now allows more")
        prog.stopped = ""
    if not prog.stopped:
        _loop(run, model, opt, sched, prog, dp)
    return _finish(run, prog, log, dp)


def _budget_left(prog: Progress, spec: TrainSpec) -> bool:
    """Whether a finished run's reason to stop still holds after --resume changed its budget
    (train.max_steps, max_epochs, patience: RESUMABLE keys); without this, raising
    train.max_steps on a finished run would only rescore it."""
    if prog.stopped == "max_steps":
        return prog.step < spec.max_steps
    if prog.stopped == "max_epochs":
        return prog.epoch < spec.max_epochs
    if prog.stopped == "early_stopping":
        return spec.patience == 0 or prog.bad_evals < spec.patience
    return prog.stopped == "time_limit"  # the clock is per process: a resume gets a new one


def _open(cfg: RunConfig | None, out: Path, resume: bool, dp: DataParallel) -> Run:
    """Create or reopen the run folder: rank 0 writes, the others read what it wrote."""
    if cfg is None and not (resume and (out / "run.json").is_file()):
        raise ValueError("cfg: expected a RunConfig (or resume=True with an existing run), "
                         "got None")
    error, run = None, None
    if dp.main:
        try:
            run = open_run(out, cfg) if resume and (out / "run.json").is_file() else \
                create_run(cfg, out)  # type: ignore[arg-type]  # cfg checked above
        except (OSError, ValueError) as e:
            if not dp.active:
                raise
            error = f"{type(e).__name__}: {e}"
    dp.agree(error)  # every rank raises rank 0's error, none waits for it
    return run if run is not None else open_run(out)


def _loop(run: Run, model: TranslationModel, opt: torch.optim.Optimizer, sched: Scheduler,
          prog: Progress, dp: DataParallel) -> None:
    spec, codec = run.cfg.train, run.codec
    data = encode_pairs(run.splits.train, codec.src_tok, codec.tgt_tok, codec.src_vocab,
                        codec.tgt_vocab)
    lengths = [len(s) for s in data.src]
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID, reduction="sum",
                                  label_smoothing=spec.label_smoothing)
    vocab = run.cfg.model.tgt_vocab_size
    started = time.perf_counter()
    net = dp.wrap(model)  # DistributedDataParallel under torchrun, the model itself otherwise
    bar = tqdm(total=spec.max_steps, initial=prog.step, disable=not spec.progress or not dp.main,
               file=sys.stderr, unit="step", dynamic_ncols=True, leave=False)
    try:
        while not prog.stopped:
            if prog.epoch >= spec.max_epochs:
                prog.stopped = "max_epochs"
                break
            batches = epoch_order(lengths, spec.batch_size, spec.seed, prog.epoch)
            while prog.batch_in_epoch < len(batches) and not prog.stopped:
                whole = batches[prog.batch_in_epoch]
                t0 = time.perf_counter()
                n_tok = _target_tokens(data, whole)  # the global batch's, on every rank
                mine, weighted = dp.share(whole)
                batch = collate(data, mine)
                model.train()
                logits = net(batch.src, batch.src_lengths, batch.tgt_in).logits  # (B, Lt, V)
                loss = loss_fn(logits.reshape(-1, vocab), batch.tgt_out.reshape(-1))
                opt.zero_grad(set_to_none=True)
                # mean over the global batch's target tokens; DDP averages over ranks, hence x world
                (loss * (dp.world if weighted else 0.0) / n_tok).backward()
                loss = dp.sum(loss.detach() if weighted else loss.detach() * 0)  # the global batch's
                nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
                opt.step()
                after_step(sched)  # noam: the next step's rate
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
                _after_step(run, model, opt, sched, prog, started, dp)
            if not prog.stopped:
                prog.epoch += 1
                prog.batch_in_epoch = 0
    finally:
        bar.close()


def _target_tokens(data: EncodedPairs, index: list[int]) -> int:
    """Target tokens a batch predicts (each target plus its </s>), without collating it."""
    return sum(len(data.tgt[i]) + 1 for i in index)


def _after_step(run: Run, model: TranslationModel, opt: torch.optim.Optimizer, sched: Scheduler,
                prog: Progress, started: float, dp: DataParallel) -> None:
    spec = run.cfg.train
    if prog.step >= spec.max_steps:
        prog.stopped = "max_steps"
    elif spec.time_limit and dp.broadcast_floats([time.perf_counter() - started])[0] > spec.time_limit * 60:
        prog.stopped = "time_limit"  # rank 0's clock decides for all
    if prog.step % spec.eval_every == 0 or prog.stopped:
        _validate(run, model, opt, sched, prog, dp)
    if prog.step % spec.checkpoint_every == 0 or prog.step % spec.eval_every == 0 \
            or prog.stopped:
        rngs = dp.gather_rng()
        if dp.main:
            save_checkpoint(run.folder, model, opt, sched, prog, rngs)
        dp.barrier()  # a rank killed after this step resumes from this checkpoint


def _validate(run: Run, model: TranslationModel, opt: torch.optim.Optimizer, sched: Scheduler,
              prog: Progress, dp: DataParallel) -> None:
    spec = run.cfg.train
    metrics: dict = {"bleu": None, "chrf": None, "exact": None}
    if dp.main:  # the weights are the same everywhere: one rank scores, all decide alike
        metrics = evaluate_pairs(model, run.splits.valid, run.codec, batch_size=spec.eval_batch_size,
                                 ratio=spec.max_len_ratio).metrics
    if dp.active:
        nan = float("nan")
        got = dp.broadcast_floats([nan if metrics[k] is None else float(metrics[k])
                                   for k in ("bleu", "chrf", "exact")])
        metrics = {k: None if x != x else x for k, x in zip(("bleu", "chrf", "exact"), got, strict=True)}
    bleu, chrf = metrics["bleu"], metrics["chrf"]
    prog.history.append({"step": prog.step, "epoch": prog.epoch,
                         "train_loss": round(prog.window_loss / max(prog.window_tokens, 1), 5),
                         "valid_bleu": bleu, "valid_chrf": chrf,
                         "valid_exact": metrics["exact"], "lr": opt.param_groups[0]["lr"]})
    prog.window_loss, prog.window_tokens = 0.0, 0
    if bleu is None:  # no validation split: keep the latest model, never stop early
        if dp.main:
            model.save(run.folder)
        return
    score = bleu + chrf / 1000  # BLEU, ties (e.g. no 4-grams at all: BLEU 0) broken by chrF
    after_validation(sched, score)  # plateau: decay the rate when BLEU stalls
    if score > prog.best_score:
        prog.best_score, prog.best_bleu, prog.best_step, prog.bad_evals = score, bleu, prog.step, 0
        if dp.main:
            model.save(run.folder)  # the best model is what translate / evaluate load
    else:
        prog.bad_evals += 1
        if spec.patience and prog.bad_evals >= spec.patience and not prog.stopped:
            prog.stopped = "early_stopping"


def _finish(run: Run, prog: Progress, log: Log, dp: DataParallel) -> TrainResult:
    """Score the best model on the test split; write results.json (rank 0; the others read it)."""
    dp.barrier()
    if not dp.main:
        dp.barrier()  # rank 0 writes results.json
        return TrainResult(run.folder, prog, read_json(run.folder / "results.json", "results"))
    best = load_translator(run.folder)
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
        "data": None if run.splits.report is None else run.splits.report.to_dict(),
        "config": run.cfg.to_dict(),
    }
    write_json(run.folder / "results.json", results)
    chrf = next((h["valid_chrf"] for h in prog.history if h["step"] == prog.best_step), None)
    kept = f", chrF {chrf:.2f}" if chrf is not None else ""  # chrF breaks ties (BLEU 0 without 4-grams)
    log(f"stopped ({prog.stopped}) at step {prog.step}; kept the model of step {prog.best_step} "
        f"(valid BLEU {prog.best_bleu:.2f}{kept}); test BLEU {res.metrics['bleu']:.2f}")
    dp.barrier()
    return TrainResult(run.folder, prog, results)


