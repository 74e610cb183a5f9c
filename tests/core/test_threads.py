"""--threads on every command that computes, set in one place (attnlab.threads)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from attnlab import threads as T
from attnlab.cli.main import app

# Commands that run torch computations (walk, plot-mask, render and backends do arithmetic on a
# few numbers or none).
COMPUTING = ["inspect", "compare", "heads", "tradeoff", "serve", "generate", "prompt-effect",
             "streaming", "local-global", "prompt-experiment", "train", "translate", "evaluate",
             "bench", "experiment bottleneck", "experiment induction", "experiment architectures",
             "experiment heads", "experiment ablations"]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_the_affinity_or_fewer_if_omp_num_threads_says_so(monkeypatch) -> None:
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert T.available_cores() == 3 and T.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert T.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # more than the process may use: the cores
    assert T.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    assert T.default_threads() == 3
    assert T.check_threads(None) == 3 and T.check_threads(2) == 2
    for bad in (0, -1, 4, True, 1.5):
        with pytest.raises(ValueError, match=rf"^--threads: expected an integer from 1 to 3 .*got {bad!r}$"):
            T.check_threads(bad, "--threads")  # type: ignore[arg-type]


def test_set_threads_sets_torch(restore_threads) -> None:
    assert T.set_threads(1) == 1 and torch.get_num_threads() == 1


def _commands() -> dict[str, object]:
    import typer

    group = typer.main.get_command(app)
    out = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        if subs:
            out.update({f"{name} {s}": c for s, c in subs.items()})
        else:
            out[name] = cmd
    return out


def test_every_computing_command_has_threads() -> None:
    cmds = _commands()
    for name in COMPUTING:
        opts = {o for p in cmds[name].params for o in getattr(p, "opts", [])}  # type: ignore[attr-defined]
        assert "--threads" in opts, name


@pytest.mark.parametrize("args", [
    ["inspect", "--threads", "0"],
    ["generate", "hi", "--threads", "0"],
    ["prompt-experiment", "--quick", "--threads", "0"],
    ["bench", "--quick", "--threads", "999"],
    ["translate", "hi", "--model", "nowhere", "--threads", "999"],
    ["experiment", "induction", "--quick", "--threads", "0"],
])
def test_zero_or_too_many_threads_is_one_line_and_exit_2(args, restore_threads) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: --threads: expected an integer from 1 to "), r.output
