"""Greedy and beam search: beam 1 is greedy; length normalisation picks as documented."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from attnlab.data.vocab import BOS_ID, EOS_ID
from attnlab.models.seq2seq import ATTENTIONS
from attnlab.models.seq2seq.decoder import DecoderState, StepOutput
from attnlab.models.seq2seq.encoder import Memory
from attnlab.training.search import beam_search, decode, greedy, max_lengths

SRC = torch.tensor([[5, 6, 7, 8, 9], [4, 5, 6, 0, 0], [11, 0, 0, 0, 0]])
SRC_LEN = torch.tensor([5, 3, 1])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_beam_of_one_equals_greedy(attention, s2s):
    # Random weights make long, EOS-free outputs: the length limit path is exercised too.
    for seed in range(2):
        model = s2s.tiny_model(attention, seed=seed)
        limit = max_lengths(SRC_LEN)
        g = greedy(model, SRC, SRC_LEN, limit)
        b = beam_search(model, SRC, SRC_LEN, limit, beam=1)
        for x, y in zip(g, b, strict=True):
            assert x.tokens == y.tokens and x.finished == y.finished
            assert math.isclose(x.score, y.score, rel_tol=1e-9, abs_tol=1e-9)
            if x.weights is None:
                assert y.weights is None
            else:
                assert torch.equal(x.weights, y.weights)
                assert x.weights.shape[0] == len(x.tokens) + x.finished


def test_searches_build_no_autograd_graph(s2s):
    """Under grad a search would keep every step's activations alive until it returns."""
    model = s2s.tiny_model("bahdanau")
    seen: list[bool] = []
    step = model.step
    model.step = lambda *a, **k: (seen.append(torch.is_grad_enabled()), step(*a, **k))[1]
    greedy(model, SRC, SRC_LEN, torch.tensor([3, 3, 3]))
    beam_search(model, SRC, SRC_LEN, torch.tensor([3, 3, 3]), beam=2)
    assert seen and not any(seen)


def test_outputs_respect_the_length_limit_and_source_length(s2s):
    model = s2s.tiny_model("luong-local-p")
    limit = torch.tensor([4, 3, 2])
    for hyps in (greedy(model, SRC, SRC_LEN, limit),
                 beam_search(model, SRC, SRC_LEN, limit, beam=3)):
        for h, n, src_n in zip(hyps, limit.tolist(), SRC_LEN.tolist(), strict=True):
            assert len(h.tokens) + h.finished <= n
            assert h.weights is not None and h.weights.shape[1] == src_n
            assert h.centres is not None and h.centres.shape[0] == h.weights.shape[0]


class _Scripted(torch.nn.Module):
    """A 'model' with fixed next-token probabilities: A=4 then </s>, or </s> at once."""

    cfg = type("Cfg", (), {"tgt_vocab_size": 6})()
    probs: ClassVar[dict[int, list[float]]] = {
        BOS_ID: [0.025, 0.05, 0.025, 0.40, 0.35, 0.15],  # </s> .40, A .35, B .15
        4: [0.01, 0.01, 0.01, 0.95, 0.01, 0.01], 5: [0.02, 0.02, 0.02, 0.9, 0.02, 0.02]}

    def encode(self, src, lengths):
        b, n = src.shape
        return Memory(torch.zeros(b, n, 2), lengths, torch.zeros(b, 2),
                      torch.ones(b, 1, n, dtype=torch.bool))

    def init_state(self, memory):
        b = memory.states.shape[0]
        return DecoderState(torch.zeros(1, b, 2), torch.zeros(b, 2), 0)

    def step(self, y, state, memory):
        rows = [self.probs.get(int(t), [1 / 6] * 6) for t in y]
        logits = torch.tensor(rows).log()
        w = torch.full((y.shape[0], memory.states.shape[1]), 1.0 / memory.states.shape[1])
        return StepOutput(logits, DecoderState(state.hidden, state.feed, state.t + 1), w)


def test_length_normalisation_changes_the_winner():
    model = _Scripted()
    src, n = torch.tensor([[4, 4]]), torch.tensor([2])
    assert greedy(model, src, n, torch.tensor([5]))[0].tokens == []  # </s> is likeliest first
    raw = beam_search(model, src, n, torch.tensor([5]), beam=2, alpha=0.0)[0]
    assert raw.tokens == [] and math.isclose(raw.score, math.log(0.40), rel_tol=1e-6)
    norm = beam_search(model, src, n, torch.tensor([5]), beam=2, alpha=1.0)[0]
    assert norm.tokens == [4]  # log(.35 · .95) / 2 > log(.40) / 1
    assert math.isclose(norm.score, math.log(0.35) + math.log(0.95), rel_tol=1e-6)
    assert norm.finished and norm.weights is not None and norm.weights.shape == (2, 2)


def test_bad_beam(s2s):
    model = s2s.tiny_model("bahdanau")
    with pytest.raises(ValueError, match="beam: expected an int >= 1, got 0"):
        decode(model, SRC, SRC_LEN, beam=0)
    with pytest.raises(ValueError, match="alpha: expected a finite number >= 0, got nan"):
        decode(model, SRC, SRC_LEN, beam=2, alpha=float("nan"))
    with pytest.raises(ValueError, match="at most the target vocabulary size"):
        decode(model, SRC, SRC_LEN, beam=50)
    assert EOS_ID == 3
