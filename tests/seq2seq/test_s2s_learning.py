"""Every attention option learns a tiny copy / reverse task to near-perfect accuracy."""

from __future__ import annotations

import pytest
import torch

from attnlab.training.search import greedy, max_lengths

STEPS = 300
NONE_STEPS = 500  # the fixed-vector baseline must memorise the whole input: give it longer
# local-m assumes a monotonic alignment (p_t = t): it gets the copy task; the others reverse.
TASKS = [("none", False), ("bahdanau", True), ("luong-dot", True), ("luong-general", True),
         ("luong-concat", True), ("luong-local-m", False), ("luong-local-p", True)]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("attention", "reverse"), TASKS)
def test_learns_tiny_task(attention, reverse, s2s):
    steps = NONE_STEPS if attention == "none" else STEPS
    model = s2s.tiny_model(attention, vocab=10, hidden=32, window=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        src, src_len, tgt_in, tgt_out, _ = s2s.copy_batch(gen, 32, reverse=reverse)
        logits = model(src, src_len, tgt_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), tgt_out.reshape(-1),
                                                 ignore_index=0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    src, src_len, _, _, tgts = s2s.copy_batch(torch.Generator().manual_seed(99), 200,
                                          reverse=reverse)
    hyps = greedy(model, src, src_len, max_lengths(src_len))
    accuracy = sum(h.tokens == t for h, t in zip(hyps, tgts, strict=True)) / len(tgts)
    assert accuracy >= 0.95, f"{attention}: exact-match accuracy {accuracy:.3f}"
    if attention != "none" and reverse:  # the learned alignment is the anti-diagonal
        w = hyps[0].weights
        n = int(src_len[0])
        assert w is not None
        assert w[:n].argmax(-1).tolist() == list(range(n - 1, -1, -1))
