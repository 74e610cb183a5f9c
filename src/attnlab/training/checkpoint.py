"""Checkpoints that survive being killed at any moment, and resume bit-identically.

Layout under ``<run>/checkpoint/``::

    weights-<step>.safetensors   model weights
    optim-<step>.safetensors     Adam moments and step counts + torch's RNG state
    state.json                   the commit point: names the two files above, and holds the
                                 optimizer's hyper-parameters, the lr scheduler, Python's and
                                 NumPy's RNG states and the :class:`Progress` (step, epoch,
                                 batch index in the epoch = data-order state, early stopping,
                                 history)

Every file is written atomically (temp file in the same folder, fsync'd, + ``os.replace``),
the tensor files first and ``state.json`` last; the folder itself is fsync'd after the tensor
renames (so that the commit can never name files a power cut would lose) and after the
``state.json`` rename (so that the commit itself survives one). A kill before the
``state.json`` rename leaves the previous checkpoint intact (the new tensor files are orphans,
removed at the next save); a kill after it leaves the new one. A failed save (a full disk:
ENOSPC) also leaves the previous checkpoint intact and removes what it wrote. No pickle
anywhere: tensors go through safetensors, the rest through JSON, so loading a checkpoint never
executes code.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from attnlab.data.io import FormatError, atomic_write_bytes, read_json, write_json
from attnlab.models.translation import TranslationModel, read_weights
from attnlab.training.schedule import Scheduler

CHECKPOINT_FORMAT = "attnlab.checkpoint/1"
FAULT_ENV = "ATTNLAB_FAULT"  # test hook: "step:N" or "save:N" -> SIGKILL this process there
_saves = 0


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_score: float = -1.0  # valid BLEU + chrF/1000: what "better" means
    best_bleu: float = -1.0
    best_step: int = 0
    bad_evals: int = 0  # validations since the best one (early stopping)
    stopped: str = ""  # why training ended, once it has
    window_loss: float = 0.0  # summed token loss since the last validation
    window_tokens: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per validation
    train_tokens: int = 0  # target tokens trained on
    train_seconds: float = 0.0  # wall time in training steps (not reproducible, not compared)


def fault(point: str, count: int) -> None:
    """SIGKILL ourselves at ``point`` number ``count`` when the test hook asks for it."""
    want = os.environ.get(FAULT_ENV, "")
    if want and want == f"{point}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into safetensors-able tensors and JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for k, v in entry.items():
            if isinstance(v, Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, k = name.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for idx, rest in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(rest)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng() -> list[Any]:
    state = np.random.get_state(legacy=True)
    # legacy=True gives the tuple form for the global MT19937 state (a dict only for other generators)
    assert isinstance(state, tuple)
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def fsync_dir(folder: Path) -> None:
    """Make the renames inside ``folder`` durable: ``os.replace`` changes the directory, and
    only an fsync of the directory itself commits that change to disk (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform whose directories cannot be opened (Windows): nothing to sync
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems without directory sync
            raise
    finally:
        os.close(fd)


def _committed(folder: Path) -> tuple[set[str], int | None]:
    """The tensor files the current ``state.json`` names, and its step (none if unreadable)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        return {str(state["weights"]), str(state["optim"])}, int(state["progress"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return set(), None


def save_checkpoint(run: Path, model: TranslationModel, opt: torch.optim.Optimizer,
                    sched: Scheduler, progress: Progress,
                    rng_states: list[Tensor] | None = None) -> None:
    """Write a checkpoint atomically. ``rng_states``: every data-parallel rank's torch RNG
    state (rank order; default: this process's), so each rank resumes its own dropout stream."""
    global _saves
    folder = run / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{progress.step:09d}"
    weights, optim = f"weights-{tag}.safetensors", f"optim-{tag}.safetensors"
    previous, previous_step = _committed(folder)
    try:
        atomic_write_bytes(folder / weights, model.weights_bytes())
        tensors, opt_meta = optimizer_tensors(opt)
        rngs = rng_states or [torch.get_rng_state()]
        tensors["rng.torch"] = rngs[0]
        for r, state in enumerate(rngs[1:], start=1):
            tensors[f"rng.torch.rank{r}"] = state
        atomic_write_bytes(folder / optim, st_save(tensors, metadata={"format": CHECKPOINT_FORMAT}))
        fsync_dir(folder)  # the tensor files' names are on disk before any commit names them
        _saves += 1
        fault("save", _saves)  # the nastiest moment: new tensors written, not yet committed
        write_json(folder / "state.json", {
            "format": CHECKPOINT_FORMAT, "weights": weights, "optim": optim,
            "optimizer": opt_meta, "scheduler": sched.state_dict(),
            "rng": {"python": _python_rng(), "numpy": _numpy_rng()},
            "progress": asdict(progress), "world_size": len(rngs),
        })
        fsync_dir(folder)  # the commit itself
    except BaseException as e:
        # Not committed (or interrupted right after the commit: keep what state.json names).
        # Drop the new files, which a full disk needs back, never the committed ones.
        keep = previous | _committed(folder)[0]
        for name in (weights, optim):
            if name not in keep:
                (folder / name).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = (f"the previous checkpoint (step {previous_step}) is intact"
                    if previous_step is not None else "no earlier checkpoint exists")
            fix = "free space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
            msg = (f"checkpoint: could not save step {progress.step} in {folder} "
                   f"({e.strerror or e}); {kept}; {fix}, then resume the run")
            raise (OSError(e.errno, msg) if e.errno is not None else OSError(msg)) from e
        raise
    for stale in folder.iterdir():  # only after the commit: drop older tensor files
        if stale.name not in (weights, optim, "state.json") and (
                stale.suffix in (".safetensors", ".tmp")):
            stale.unlink(missing_ok=True)


def load_checkpoint(run: Path, model: TranslationModel, opt: torch.optim.Optimizer,
                    sched: Scheduler, *, rank: int = 0,
                    world: int = 1) -> Progress | None:
    """Restore everything :func:`save_checkpoint` saved; None if there is no checkpoint.
    ``rank``/``world``: this process in a data-parallel job (it restores its own RNG state)."""
    folder = run / "checkpoint"
    path = folder / "state.json"
    if not path.is_file():
        return None
    state = read_json(path, "checkpoint state")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        got = state.get("format") if isinstance(state, dict) else None
        raise FormatError(f"{path}: expected checkpoint format {CHECKPOINT_FORMAT!r}, got {got!r}")
    for key in ("weights", "optim"):
        if not (folder / state[key]).is_file():
            raise FileNotFoundError(f"{path}: names {state[key]}, which is missing from {folder}")
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise ValueError(f"--resume: the run was checkpointed by {saved_world} process(es), got {world}; "
                         f"resume it with the same number (torchrun --nproc-per-node {saved_world}) "
                         f"so that every rank continues its own random stream")
    model.load_state_dict(read_weights(folder / state["weights"], model.state_dict()))
    tensors = dict(st_load((folder / state["optim"]).read_bytes()))
    rngs = {k: tensors.pop(k) for k in list(tensors) if k.startswith("rng.torch")}
    torch.set_rng_state(rngs["rng.torch" if rank == 0 else f"rng.torch.rank{rank}"])
    opt.load_state_dict(optimizer_state(tensors, state["optimizer"]))
    sched.load_state_dict(state["scheduler"])
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    known = {f.name for f in fields(Progress)}
    return Progress(**{k: v for k, v in state["progress"].items() if k in known})
