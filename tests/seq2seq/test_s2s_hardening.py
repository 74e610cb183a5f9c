"""Seq2seq hardening: NaN/inf at positions the attention may not read stay out of the context
and of every gradient; checkpoints survive a full disk, fsync their folder, and resume
bit-identically with dropout on."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from attnlab.modules.bahdanau import BahdanauAttention
from attnlab.modules.luong import make_luong

B, LQ, LS, D = 3, 5, 7, 6
LENGTHS = torch.tensor([7, 4, 2])
KINDS = ["bahdanau", "luong-dot", "luong-general", "luong-concat", "luong-local-m",
         "luong-local-p"]


def _module(kind: str, window: int = 2):
    torch.manual_seed(0)
    if kind == "bahdanau":
        return BahdanauAttention(D, D, 4).double()
    return make_luong(kind, D, D, window=window, attn_dim=4).double()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, LQ, D, generator=g, dtype=torch.float64),
            torch.randn(B, LS, D, generator=g, dtype=torch.float64))


def _poison(m: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """m with NaN, +inf and -inf written at the (B, Ls) positions ``where``."""
    bad = m.clone()
    vals = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=m.dtype)
    idx = where.nonzero()
    for i, (b, s) in enumerate(idx.tolist()):
        bad[b, s, i % D] = vals[i % 3]
    return bad


def _run(mod, q, m, *, cached: bool, rows=None):
    """Forward + backward of a loss over ``rows`` (B, Lq) bool (default all); returns the
    context, the weights and the gradients of query, memory and every parameter."""
    mod.zero_grad(set_to_none=True)
    q = q.clone().requires_grad_(True)
    m = m.clone().requires_grad_(True)
    # cached: as the decoder calls it, keys projected once, then read at every step
    keys = mod.project_keys(m) if cached else None
    al = mod(q, m, LENGTHS, keys=keys)
    ctx = al.context if rows is None else al.context[rows]
    (ctx * torch.linspace(-1, 1, ctx.shape[-1], dtype=ctx.dtype)).sum().backward()
    grads = {"query": q.grad, "memory": m.grad}
    grads |= {n: p.grad for n, p in mod.named_parameters() if p.grad is not None}
    return al.context.detach(), al.weights.detach(), grads


@pytest.mark.parametrize("cached", [False, True], ids=["keys", "cached-keys"])
@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_padding_never_reaches_context_or_gradients(kind, cached):
    """NaN/inf stored at padded source positions: the same context, weights and gradients as
    zeros stored there (0·NaN = NaN in a plain weights @ memory)."""
    mod = _module(kind)
    q, m = _inputs()
    padded = torch.arange(LS) >= LENGTHS.unsqueeze(1)  # (B, Ls)
    ref_ctx, ref_w, ref_g = _run(mod, q, m.masked_fill(padded.unsqueeze(-1), 0.0), cached=cached)
    ctx, w, g = _run(mod, q, _poison(m, padded), cached=cached)
    assert torch.isfinite(ctx).all()
    torch.testing.assert_close(ctx, ref_ctx)
    torch.testing.assert_close(w, ref_w)
    assert g.keys() == ref_g.keys()
    for name in ref_g:
        assert torch.isfinite(g[name]).all(), name
        torch.testing.assert_close(g[name], ref_g[name], msg=name)


@pytest.mark.parametrize("kind", ["luong-local-m", "luong-local-p"])
def test_nonfinite_outside_a_local_window_is_not_read(kind):
    """A NaN inside the sentence but outside some rows' windows: those rows are unaffected (and
    so are the gradients of a loss over them); the rows whose window covers it get NaN."""
    mod = _module(kind, window=1)
    q, m = _inputs(1)
    where = torch.zeros(B, LS, dtype=torch.bool)
    where[0, 4] = True  # in sentence 0 (7 positions): local-m reads it from t = 3, 4 only
    with torch.no_grad():
        al = mod(q, m, LENGTHS)
    sees = (al.weights[:, :, 4] != 0) & (torch.arange(B) == 0).unsqueeze(1)  # (B, Lq)
    blind = ~sees
    assert blind[0].any() and sees[0].any()
    ref_ctx, ref_w, ref_g = _run(mod, q, m.masked_fill(where.unsqueeze(-1), 0.0), cached=True,
                                 rows=blind)
    ctx, w, g = _run(mod, q, _poison(m, where), cached=True, rows=blind)
    torch.testing.assert_close(ctx[blind], ref_ctx[blind])
    torch.testing.assert_close(w[blind], ref_w[blind])
    assert not torch.isfinite(ctx[sees]).all(-1).any()  # a row that reads a NaN gets it
    for name in ref_g:
        assert torch.isfinite(g[name]).all(), name
        torch.testing.assert_close(g[name], ref_g[name], msg=name)


@pytest.mark.parametrize(("attention", "input_feed"), [
    ("bahdanau", True), ("luong-general", True), ("luong-general", False),
    ("luong-local-p", True), ("luong-local-p", False)])  # input_feed False: teacher forcing in one go
def test_model_with_nonfinite_encoder_padding_trains_and_decodes(s2s, attention, input_feed):
    """The whole model: an encoder that leaves NaN at padded positions changes nothing."""
    gen = torch.Generator().manual_seed(3)
    src, src_len, tgt_in, tgt_out, _ = s2s.copy_batch(gen, 6, lo=2, hi=6)
    assert int(src_len.min()) < src.shape[1]  # some padding

    def run(poison: bool):
        model = s2s.tiny_model(attention, input_feed=input_feed, seed=0).train()
        if poison:
            def hook(_mod, _args, memory):
                pad = ~memory.allowed[:, 0]  # (B, Ls)
                memory.states = memory.states.masked_fill(pad.unsqueeze(-1), float("nan"))
                return memory
            model.encoder.register_forward_hook(hook)
        logits = model(src, src_len, tgt_in).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(),
                                                 ignore_index=0)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            memory = model.encode(src, src_len)
            state = model.init_state(memory)
            step = model.step(tgt_in[:, 0], state, memory)
        return logits.detach(), grads, step.logits, step.weights

    ref, got = run(False), run(True)
    torch.testing.assert_close(got[0], ref[0])
    assert got[1].keys() == ref[1].keys()
    for name in ref[1]:
        assert torch.isfinite(got[1][name]).all(), name
        torch.testing.assert_close(got[1][name], ref[1][name], msg=name)
    torch.testing.assert_close(got[2], ref[2])
    torch.testing.assert_close(got[3], ref[3])


# ----------------------------------------------------------------------- checkpoints

ARGS = ("train", "--preset", "tiny", "--set", "train.threads=1", "--set", "model.dropout=0.3",
        "--json")


def test_kill_and_resume_with_dropout_is_bitwise_identical(tmp_path, s2s):
    """As test_s2s_resume, with dropout on: the resumed run must draw the same dropout masks,
    so this fails unless the checkpoint restores torch's RNG state."""
    from attnlab.training.checkpoint import FAULT_ENV

    ref, run = tmp_path / "ref", tmp_path / "run"
    r = s2s.run_cli(*ARGS, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    assert json.loads((ref / "run.json").read_text())["config"]["model"]["dropout"] == 0.3
    r = s2s.run_cli(*ARGS, "--out", str(run), env={FAULT_ENV: "step:25"})  # checkpoint: 20
    assert r.returncode == -9
    r = s2s.run_cli(*ARGS, "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    for name in ("weights-000000040.safetensors", "optim-000000040.safetensors"):
        assert (run / "checkpoint" / name).read_bytes() == (ref / "checkpoint" / name).read_bytes()
    drop = {"train_seconds", "tokens_per_second"}
    a, b = (json.loads((f / "results.json").read_text()) for f in (run, ref))
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items()
                                                            if k not in drop}


def _trainer(s2s, seed: int = 0):
    model = s2s.tiny_model("luong-general", seed=seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    return model, opt, sched


def _train_step(s2s, model, opt, seed: int):
    src, src_len, tgt_in, tgt_out, _ = s2s.copy_batch(torch.Generator().manual_seed(seed), 4)
    logits = model(src, src_len, tgt_in).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(),
                                             ignore_index=0)
    opt.zero_grad()
    loss.backward()
    opt.step()


class _FullDisk:
    """os.fdopen whose n-th file object writes half its data, then fails with ENOSPC."""

    def __init__(self, fail_at: int):
        self.fail_at, self.calls, self.real = fail_at, 0, os.fdopen

    def __call__(self, fd, *args, **kwargs):
        f = self.real(fd, *args, **kwargs)
        self.calls += 1
        if self.calls != self.fail_at:
            return f
        real_write = f.write

        def write(data):
            real_write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f


@pytest.mark.parametrize("fail_at", [1, 2, 3], ids=["weights", "optim", "state.json"])
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, s2s, monkeypatch,
                                                               fail_at):
    from attnlab.training.checkpoint import Progress, load_checkpoint, save_checkpoint

    model, opt, sched = _trainer(s2s)
    _train_step(s2s, model, opt, 1)
    save_checkpoint(tmp_path, model, opt, sched, Progress(step=1, epoch=0, batch_in_epoch=1))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    before = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    _train_step(s2s, model, opt, 2)

    disk = _FullDisk(fail_at)
    monkeypatch.setattr(os, "fdopen", disk)
    with pytest.raises(OSError) as err:
        save_checkpoint(tmp_path, model, opt, sched, Progress(step=2, epoch=0, batch_in_epoch=2))
    monkeypatch.undo()
    assert disk.calls == fail_at
    assert err.value.errno == errno.ENOSPC

    fresh, fresh_opt, fresh_sched = _trainer(s2s, seed=1)
    prog = load_checkpoint(tmp_path, fresh, fresh_opt, fresh_sched)
    assert prog is not None and prog.step == 1 and prog.batch_in_epoch == 1
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # nothing new is left behind (a full disk needs the space), the old files are untouched
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == before
    assert "previous checkpoint (step 1) is intact" in str(err.value)
    # and the next save, with space again, works and commits
    save_checkpoint(tmp_path, model, opt, sched, Progress(step=2, epoch=0, batch_in_epoch=2))
    assert load_checkpoint(tmp_path, fresh, fresh_opt, fresh_sched).step == 2


def test_checkpoint_folder_is_fsynced_after_the_renames(tmp_path, s2s, monkeypatch):
    """A rename is durable only once its directory is fsync'd: after the tensor files are
    renamed (before the commit names them) and after state.json is renamed (the commit)."""
    from attnlab.training.checkpoint import Progress, save_checkpoint

    model, opt, sched = _trainer(s2s)
    _train_step(s2s, model, opt, 1)
    folder = (tmp_path / "checkpoint").resolve()
    folder.mkdir()
    events: list[tuple[str, str]] = []
    fds: dict[int, str] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def fake_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        fds[fd] = os.path.realpath(path)
        return fd

    def fake_fsync(fd):
        fd = fd if isinstance(fd, int) else fd.fileno()
        path = fds.get(fd, "?")
        events.append(("fsync", "folder" if path == str(folder) else "file"))
        return real_fsync(fd)

    def fake_replace(src, dst, *args, **kwargs):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "fsync", fake_fsync)
    monkeypatch.setattr(os, "replace", fake_replace)
    save_checkpoint(tmp_path, model, opt, sched, Progress(step=7))
    monkeypatch.undo()

    renames = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    names = [events[i][1] for i in renames]
    assert names == ["weights-000000007.safetensors", "optim-000000007.safetensors", "state.json"]
    folder_syncs = [i for i, e in enumerate(events) if e == ("fsync", "folder")]
    assert any(renames[1] < i < renames[2] for i in folder_syncs), events  # before the commit
    assert any(i > renames[2] for i in folder_syncs), events  # after it


@pytest.mark.parametrize("cached", [False, True], ids=["keys", "cached-keys"])
@pytest.mark.parametrize("kind", KINDS)
def test_huge_finite_padding_never_reaches_a_gradient(kind, cached):
    """1e38 (finite in float32) at padded steps: before, the key projection overflowed to ±inf,
    tanh(inf − inf) gave NaN and every attention parameter's gradient was NaN, the context
    exact. Now padded steps are zeroed before any projection: the same context and gradients
    as zeros stored there. (1e30 never overflowed; D=64 makes the projection's sums do so.)"""
    dim, lengths = 64, torch.tensor([7, 4, 2])
    torch.manual_seed(0)
    mod = (BahdanauAttention(dim, dim, 32) if kind == "bahdanau"
           else make_luong(kind, dim, dim, window=2, attn_dim=32))
    g = torch.Generator().manual_seed(0)
    q, m = torch.randn(B, LQ, dim, generator=g), torch.randn(B, LS, dim, generator=g)
    padded = (torch.arange(LS) >= lengths.unsqueeze(1)).unsqueeze(-1)  # (B, Ls, 1)

    def run(memory):
        mod.zero_grad(set_to_none=True)
        mem = memory.clone().requires_grad_(True)
        keys = mod.project_keys(mem, lengths) if cached else None  # as the decoder calls it
        al = mod(q, mem, lengths, keys=keys)
        al.context.sum().backward()
        return al.context.detach(), {"memory": mem.grad} | {
            n: p.grad for n, p in mod.named_parameters() if p.grad is not None}

    ref_ctx, ref_g = run(m.masked_fill(padded, 0.0))
    ctx, got = run(torch.where(padded, torch.sign(m) * 1e38, m))
    torch.testing.assert_close(ctx, ref_ctx)
    assert got.keys() == ref_g.keys()
    for name, grad in got.items():
        assert torch.isfinite(grad).all(), f"{kind}: {name}'s gradient is not finite"
        torch.testing.assert_close(grad, ref_g[name], msg=name)
