"""Learning-rate schedules: ``train.schedule = plateau | noam``.

- ``plateau``: a constant rate, multiplied by ``train.lr_decay`` when validation BLEU has not
  improved for ``train.lr_patience`` validations (``ReduceLROnPlateau``; the RNN default).
- ``noam``: Vaswani et al. 2017 §5.3, lrate = d_model^-0.5 · min(step^-0.5, step ·
  warmup^-1.5): a linear warm-up over ``train.warmup`` steps, then decay with the inverse
  square root of the step. Here scaled so that the peak (at step = warmup) is ``train.lr``:
  lrate = lr · min(step / warmup, sqrt(warmup / step)), stepped after every optimizer step.
  (The paper's d_model = 512, warmup = 4000 peak at 512^-0.5 · 4000^-0.5 ≈ 7.0e-4.)

Both are torch schedulers whose ``state_dict`` is plain JSON, so checkpoints stay pickle-free.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

Scheduler = ReduceLROnPlateau | LambdaLR
SCHEDULES: tuple[str, ...] = ("plateau", "noam")


class NoamFactor:
    """The multiplier of ``train.lr`` at optimizer step ``last_epoch + 1`` (a callable object,
    not a closure, so that ``LambdaLR.state_dict`` saves its ``warmup``)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, last_epoch: int) -> float:
        step = last_epoch + 1  # LambdaLR counts from 0 before the first step
        return min(step / self.warmup, math.sqrt(self.warmup / step))


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, *, warmup: int = 0,
                   lr_decay: float = 0.5, lr_patience: int = 1) -> Scheduler:
    if schedule == "noam":
        if warmup < 1:
            raise ValueError(f"train.warmup: expected >= 1 steps with train.schedule=noam, got {warmup}")
        return LambdaLR(opt, NoamFactor(warmup))
    if schedule == "plateau":
        return ReduceLROnPlateau(opt, mode="max", factor=lr_decay, patience=lr_patience)
    raise ValueError(f"train.schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")


def after_step(sched: Scheduler) -> None:
    """Called after every optimizer step."""
    if isinstance(sched, LambdaLR):
        sched.step()


def after_validation(sched: Scheduler, score: float) -> None:
    """Called after every validation with its score (higher is better)."""
    if isinstance(sched, ReduceLROnPlateau):
        sched.step(score)
