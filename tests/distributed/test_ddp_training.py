"""attnlab train under torchrun: two ranks step like one process on the same global batch, and
a SIGKILLed two-rank run resumes bit-identical to an unbroken one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from attnlab.training.checkpoint import FAULT_ENV
from attnlab.training.data_parallel import DataParallel

CLI = ("from attnlab.cli import seq2seq_cmds\nimport typer\n"
       "app = typer.Typer(pretty_exceptions_enable=False)\nseq2seq_cmds.register(app)\n"
       "app.command('version')(lambda: None)\napp()\n")
ARGS = ("train", "--preset", "tiny", "--set", "train.threads=1", "--set", "model.dropout=0.0")


def _run(tmp: Path, *args: str, ranks: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    script = tmp / "cli.py"
    script.write_text(CLI)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
              str(ranks)] if ranks > 1 else [sys.executable]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launch, str(script), *args], capture_output=True, text=True, env=full_env,
                          timeout=300, cwd=tmp)


def _weights(folder: Path, step: int) -> dict:
    return load_file(str(folder / "checkpoint" / f"weights-{step:09d}.safetensors"))


def test_two_ranks_equal_one_process_on_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = _run(tmp_path, *ARGS, "--out", str(one))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(tmp_path, *ARGS, "--out", str(two), ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(one, 40), _weights(two, 40)
    assert a.keys() == b.keys()
    for name in a:  # the same steps; only the float summation order differs
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_killed_two_rank_run_resumes_bit_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = (*ARGS[:-2], "--json")  # with dropout: each rank's random stream must resume too
    r = _run(tmp_path, *args, "--out", str(ref), ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"tokens_per_second"') == 1  # rank 0 reports for the job, once
    r = _run(tmp_path, *args, "--out", str(run), ranks=2, env={FAULT_ENV: "step:25"})
    assert r.returncode != 0  # both ranks SIGKILLed at step 25: the step-20 checkpoint stands
    r = _run(tmp_path, *args, "--out", str(run), "--resume", ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    for name in ("weights-000000040.safetensors", "optim-000000040.safetensors"):
        assert (run / "checkpoint" / name).read_bytes() == (ref / "checkpoint" / name).read_bytes()
    r = _run(tmp_path, *args, "--out", str(run), "--resume")  # one process: refused, clearly
    assert r.returncode != 0 and "checkpointed by 2 process(es), got 1" in r.stderr + r.stdout


def test_a_batch_smaller_than_the_world_still_reaches_every_rank():
    assert DataParallel(0, 2).share([7, 8, 9]) == ([7, 9], True)
    assert DataParallel(1, 2).share([7, 8, 9]) == ([8], True)
    assert DataParallel(1, 2).share([7]) == ([7], False)  # a zero-weight stand-in, no hang
