"""Decoding a Transformer: the KV cache changes nothing (greedy and beam), the alignment is
the last layer's cross-attention, and a tiny model learns copy and reverse in seconds."""

from __future__ import annotations

import pytest
import torch

from attnlab.data.vocab import BOS_ID, EOS_ID, PAD_ID
from attnlab.models.transformer import LMConfig, Transformer, TransformerConfig, TransformerLM
from attnlab.training.search import beam_search, decode, greedy, max_lengths


def model(seed: int = 0, vocab: int = 12, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, heads=4, layers=2, ffn=64,
               dropout=0.0)
    return Transformer(TransformerConfig(**{**cfg, **kw})).eval()


def sources(seed: int = 3, n: int = 6, vocab: int = 12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 8, (n,), generator=g)
    src = torch.full((n, int(lengths.max())), PAD_ID)
    for b, k in enumerate(lengths.tolist()):
        src[b, :k] = torch.randint(4, vocab, (k,), generator=g)
    return src, lengths


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rotary", "none"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_greedy_equals_uncached_exactly(positions, norm):
    # float64: the two paths differ only in summation order (~1e-16), so no near-tie can flip
    m = model(positions=positions, norm=norm).double()
    src, lengths = sources()
    limit = max_lengths(lengths, 2.0)
    cached = greedy(m, src, lengths, limit)
    full = greedy(m, src, lengths, limit, cache=False)
    assert [h.tokens for h in cached] == [h.tokens for h in full]
    assert [h.finished for h in cached] == [h.finished for h in full]
    assert any(len(h.tokens) > 2 for h in cached)  # a real test: several steps decoded
    for a, b in zip(cached, full, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-9)
        torch.testing.assert_close(a.weights, b.weights, atol=1e-9, rtol=0)


def test_cached_step_logits_equal_uncached_in_float32():
    m = model(positions="rotary")
    src, lengths = sources()
    memory = m.encode(src, lengths)
    a, b = m.init_state(memory), m.init_state(memory, cache=False)
    y = torch.full((src.shape[0],), BOS_ID)
    for _ in range(6):
        sa, sb = m.step(y, a, memory), m.step(y, b, memory)
        torch.testing.assert_close(sa.logits, sb.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sa.weights, sb.weights, atol=1e-6, rtol=1e-5)
        y, a, b = sa.logits.argmax(-1), sa.state, sb.state
    assert a.caches is not None and len(a.caches[0]) == 6 and b.prefix.shape == (6, 6)


@pytest.mark.parametrize("beam", [2, 4])
def test_beam_equals_itself_with_and_without_cache(beam):
    m = model(seed=1, positions="sinusoidal").double()
    src, lengths = sources(seed=5)
    limit = max_lengths(lengths, 2.0)
    cached = beam_search(m, src, lengths, limit, beam=beam)
    full = beam_search(m, src, lengths, limit, beam=beam, cache=False)
    assert [h.tokens for h in cached] == [h.tokens for h in full]
    for a, b in zip(cached, full, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-9)
    one = beam_search(m, src, lengths, limit, beam=1)
    assert [h.tokens for h in one] == [h.tokens for h in greedy(m, src, lengths, limit)]


def test_step_does_not_mutate_the_state_it_was_given():
    m = model()
    src, lengths = sources()
    memory = m.encode(src, lengths)
    state = m.init_state(memory)
    y = torch.full((src.shape[0],), BOS_ID)
    first = m.step(y, state, memory)
    again = m.step(y, state, memory)  # the same state twice: the same answer
    torch.testing.assert_close(first.logits, again.logits)
    assert len(state.caches[0]) == 0 and len(first.state.caches[0]) == 1


def test_alignment_is_the_last_layers_cross_attention_averaged_over_heads():
    m = model()
    src, lengths = sources()
    hyps = greedy(m, src, lengths, max_lengths(lengths, 2.0))
    for b, h in enumerate(hyps):
        steps = len(h.tokens) + h.finished
        tgt_in = torch.tensor([[BOS_ID, *h.tokens][:steps]])
        n = int(lengths[b])
        out = m(src[b:b + 1, :n], lengths[b:b + 1], tgt_in, need_weights=True)
        torch.testing.assert_close(h.weights, out.cross[-1][0].mean(0), atol=1e-5, rtol=1e-5)


def _train(m: Transformer, s2s, *, reverse: bool, steps: int, lr: float = 3e-3) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    losses = []
    m.train()
    for _ in range(steps):
        src, src_len, tgt_in, tgt_out, _ = s2s.copy_batch(gen, 32, reverse=reverse)
        logits = m(src, src_len, tgt_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 tgt_out.reshape(-1), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("reverse", [False, True])
def test_a_tiny_transformer_learns_copy_and_reverse(s2s, reverse):
    torch.set_num_threads(1)
    m = model(seed=0, layers=1, d_model=32, heads=2, ffn=64)
    losses = _train(m, s2s, reverse=reverse, steps=500)
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:20]) / 20, losses[::25]
    src, src_len, _, _, tgts = s2s.copy_batch(torch.Generator().manual_seed(99), 40,
                                              reverse=reverse)
    hyps = decode(m.eval(), src, src_len, beam=1)
    exact = sum(h.tokens == t for h, t in zip(hyps, tgts, strict=True)) / len(tgts)
    assert exact >= 0.9, exact
    assert all(h.finished for h in hyps)


def test_a_tiny_lm_learns_to_count():
    """next token = (token + 1) mod V: a 1-layer LM learns it from position-free context."""
    torch.manual_seed(0)
    lm = TransformerLM(LMConfig(vocab_size=10, d_model=32, heads=2, layers=1, ffn=64))
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        start = torch.randint(0, 10, (16, 1))
        ids = (start + torch.arange(12)) % 10  # (16, 12)
        logits = lm(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 < 1.0 < losses[0]


def test_eos_and_vocabulary_guards():
    m = model()
    src, lengths = sources()
    with pytest.raises(ValueError, match="src_lengths: expected every source to have >= 1 token"):
        m.encode(src, torch.zeros_like(lengths))
    assert EOS_ID == 3
