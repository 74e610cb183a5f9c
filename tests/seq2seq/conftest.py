"""Shared helpers for the seq2seq tests, handed to them by the ``s2s`` fixture (the suite runs
with ``--import-mode=importlib``, where test folders are not importable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnlab.data.batching import pad
from attnlab.data.vocab import BOS_ID, EOS_ID
from attnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig

REPO = Path(__file__).resolve().parents[2]
CLI = ("import typer; from attnlab.cli import seq2seq_cmds; "
       "app = typer.Typer(pretty_exceptions_enable=False); seq2seq_cmds.register(app); "
       "app.command('version')(lambda: None); app()")


def cli_app():
    """A Typer app with only the seq2seq commands (main.py wiring is the maintainer's)."""
    import typer

    from attnlab.cli import seq2seq_cmds

    app = typer.Typer(pretty_exceptions_enable=False)
    seq2seq_cmds.register(app)
    app.command("version")(lambda: None)  # keeps Typer in multi-command mode
    return app


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    """The seq2seq CLI in a fresh Python process (so it can be SIGKILLed)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def tiny_model(attention: str, *, vocab: int = 12, hidden: int = 16, input_feed: bool = True,
               window: int = 2, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, attention=attention,
                        hidden=hidden, emb_dim=8, dropout=0.0, input_feed=input_feed,
                        window=window)
    return Seq2Seq(cfg).eval()


def copy_batch(gen: torch.Generator, n: int, *, symbols: int = 6, lo: int = 2, hi: int = 5,
               reverse: bool = False):
    """n random sequences over ids 4..4+symbols-1, lengths lo..hi; target = copy (or reverse)."""
    seqs = [torch.randint(4, 4 + symbols, (int(torch.randint(lo, hi + 1, (1,), generator=gen)),),
                          generator=gen).tolist() for _ in range(n)]
    tgts = [s[::-1] if reverse else s for s in seqs]
    src, src_len = pad(seqs)
    tgt_in, _ = pad([[BOS_ID, *t] for t in tgts])
    tgt_out, _ = pad([[*t, EOS_ID] for t in tgts])
    return src, src_len, tgt_in, tgt_out, tgts


@pytest.fixture(scope="session")
def s2s() -> SimpleNamespace:
    return SimpleNamespace(tiny_model=tiny_model, copy_batch=copy_batch, run_cli=run_cli,
                           cli_app=cli_app, REPO=REPO)
