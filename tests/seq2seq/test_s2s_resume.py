"""A training run SIGKILLed at any moment resumes and ends bit-identical to an unbroken one."""

from __future__ import annotations

import json

from attnlab.training.checkpoint import FAULT_ENV

ARGS = ("train", "--preset", "tiny", "--set", "train.threads=1", "--json")
TIMING = {"train_seconds", "tokens_per_second"}


def _results(folder):
    d = json.loads((folder / "results.json").read_text())
    return {k: v for k, v in d.items() if k not in TIMING}


def _progress(folder):
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    return {k: v for k, v in state["progress"].items() if k != "train_seconds"}


def test_kill_anywhere_then_resume_is_bitwise_identical(tmp_path, s2s):
    # tiny: 40 steps, checkpoints at 10, 20, 30, 40, validations at 20 and 40.
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = s2s.run_cli(*ARGS, "--out", str(ref))
    assert r.returncode == 0, r.stderr

    # 1) killed inside the 3rd checkpoint: step-30 tensors written, state.json not yet.
    r = s2s.run_cli(*ARGS, "--out", str(run), env={FAULT_ENV: "save:3"})
    assert r.returncode == -9
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["progress"]["step"] == 20  # the committed checkpoint is intact
    assert (run / "checkpoint" / "weights-000000030.safetensors").exists()  # an orphan

    # 2) resumed from step 20, then killed between checkpoints (step 35).
    r = s2s.run_cli(*ARGS, "--out", str(run), "--resume", env={FAULT_ENV: "step:35"})
    assert r.returncode == -9
    assert _progress(run)["step"] == 30
    assert not (run / "results.json").exists()

    # 3) resumed from step 30 to the end.
    r = s2s.run_cli(*ARGS, "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    for name in ("weights-000000040.safetensors", "optim-000000040.safetensors"):
        assert (run / "checkpoint" / name).read_bytes() == (ref / "checkpoint" / name).read_bytes()
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == sorted(
        p.name for p in (ref / "checkpoint").iterdir())  # orphans cleaned up
    assert _progress(run) == _progress(ref)
    assert _results(run) == _results(ref)
