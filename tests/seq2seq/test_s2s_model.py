"""The encoder-decoder: teacher forcing equals step-by-step decoding; save / load."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.data.io import FormatError
from attnlab.models.seq2seq import ATTENTIONS, Seq2Seq, Seq2SeqConfig

SRC = torch.tensor([[5, 6, 7, 8, 9, 10], [4, 5, 6, 0, 0, 0], [11, 0, 0, 0, 0, 0]])
SRC_LEN = torch.tensor([6, 3, 1])
TGT = torch.tensor([[2, 5, 6, 7, 8], [2, 9, 9, 0, 0], [2, 4, 0, 0, 0]])


@pytest.mark.parametrize("input_feed", [True, False])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forcing_equals_stepwise_decoding(attention, input_feed, s2s):
    model = s2s.tiny_model(attention, input_feed=input_feed)
    out = model(SRC, SRC_LEN, TGT)
    assert out.logits.shape == (3, 5, 12)
    memory = model.encode(SRC, SRC_LEN)
    state = model.init_state(memory)
    logits, weights = [], []
    for t in range(TGT.shape[1]):
        step = model.step(TGT[:, t], state, memory)
        state = step.state
        logits.append(step.logits)
        weights.append(step.weights)
    torch.testing.assert_close(out.logits, torch.stack(logits, 1), atol=1e-5, rtol=1e-5)
    if attention == "none":
        assert out.weights is None and weights[0] is None
        return
    torch.testing.assert_close(out.weights, torch.stack(weights, 1), atol=1e-5, rtol=1e-5)
    assert out.weights.shape == (3, 5, 6)
    assert torch.equal(out.weights[1, :, 3:], torch.zeros(5, 3))  # padding gets nothing


def test_lstm_and_two_layers_run():
    cfg = Seq2SeqConfig(12, 12, attention="luong-general", rnn="lstm", layers=2, hidden=8,
                        emb_dim=4)
    out = Seq2Seq(cfg)(SRC, SRC_LEN, TGT)
    assert out.logits.shape == (3, 5, 12)
    out.logits.sum().backward()


def test_save_load_roundtrip(tmp_path, s2s):
    model = s2s.tiny_model("luong-local-p")
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    again = Seq2Seq.load(tmp_path)
    assert again.cfg == model.cfg
    torch.testing.assert_close(again(SRC, SRC_LEN, TGT).logits, model(SRC, SRC_LEN, TGT).logits,
                               rtol=0, atol=0)


def test_load_errors_are_clear(tmp_path, s2s):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Seq2Seq.load(tmp_path / "nope")
    model = s2s.tiny_model("bahdanau")
    model.save(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=r"missing model\.safetensors"):
        Seq2Seq.load(tmp_path)
    (tmp_path / "moved").rename(tmp_path / "model.safetensors")
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "format": "attnlab.seq2seq/0"}))
    with pytest.raises(FormatError, match="another attnlab version"):
        Seq2Seq.load(tmp_path)
    meta["config"]["hidden"] = 32
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"expected torch\.float32"):
        Seq2Seq.load(tmp_path)
    meta["config"]["colour"] = "blue"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="unknown keys"):
        Seq2Seq.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    meta["config"].pop("colour")
    meta["config"]["hidden"] = 16
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="expected a safetensors file"):
        Seq2Seq.load(tmp_path)


def test_config_validation(s2s):
    with pytest.raises(ValueError, match=r"model\.attention: expected one of none, bahdanau"):
        Seq2SeqConfig(12, 12, attention="luong")
    with pytest.raises(ValueError, match="even size"):
        Seq2SeqConfig(12, 12, hidden=7)
    with pytest.raises(ValueError, match="src_vocab_size: expected >= 5"):
        Seq2Seq(Seq2SeqConfig(0, 12))
    with pytest.raises(ValueError, match="src_lengths: expected every source"):
        s2s.tiny_model("bahdanau").encode(SRC, torch.tensor([6, 0, 1]))
