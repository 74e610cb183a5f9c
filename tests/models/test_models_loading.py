"""Loading local model folders: explicit weight maps, safetensors only, clear errors."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnlab.inspect.attention_cache import capture, find_token
from attnlab.models import load_model

from .conftest import make_bert, save, wordpiece_tokenizer


@pytest.fixture
def bert_copy(tiny_bert, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_bert, dst)
    return dst


def _edit_tensors(folder, fn) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="got a file"):
        load_model(f)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_files_are_named(bert_copy, name):
    (bert_copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing: {name}"):
        load_model(bert_copy)


def test_pickle_checkpoints_are_refused_and_never_unpickled(bert_copy, monkeypatch):
    (bert_copy / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, bert_copy / "pytorch_model.bin")

    def boom(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin.*pickle"):
        load_model(bert_copy)


def test_no_pickle_on_the_happy_path(tiny_bert, tiny_gpt2, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    load_model(tiny_bert)
    load_model(tiny_gpt2)
    load_model()


@pytest.mark.parametrize("payload", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_corrupt_safetensors(bert_copy, payload):
    (bert_copy / "model.safetensors").write_bytes(payload)
    with pytest.raises(ValueError, match="expected a valid safetensors file"):
        load_model(bert_copy)


def test_truncated_safetensors(bert_copy):
    p = bert_copy / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match="expected a valid safetensors file"):
        load_model(bert_copy)


def test_missing_tensor_is_named(bert_copy):
    _edit_tensors(bert_copy, lambda t: t.pop("encoder.layer.1.attention.self.key.bias"))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: encoder\.layer\.1\.attention\.self"):
        load_model(bert_copy)


def test_leftover_tensor_is_named(bert_copy):
    _edit_tensors(bert_copy, lambda t: t.__setitem__("encoder.layer.0.adapter.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected tensors.*encoder\.layer\.0\.adapter\.weight"):
        load_model(bert_copy)


def test_known_heads_are_ignored_and_reported(bert_copy):
    _edit_tensors(bert_copy, lambda t: t.__setitem__("cls.predictions.bias", torch.zeros(3)))
    lm = load_model(bert_copy)
    assert lm.ignored == ["cls.predictions.bias"]
    assert lm.describe()["ignored_tensors"] == ["cls.predictions.bias"]


def test_shape_mismatch_with_config(bert_copy):
    cfg = json.loads((bert_copy / "config.json").read_text())
    cfg["intermediate_size"] = 50
    (bert_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"do not fit config\.json"):
        load_model(bert_copy)


def test_bad_config_and_tokenizer(bert_copy):
    (bert_copy / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        load_model(bert_copy)
    (bert_copy / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="expected JSON"):
        load_model(bert_copy)
    (bert_copy / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="model_type"):
        load_model(bert_copy)


def test_unsupported_architecture(bert_copy):
    cfg = json.loads((bert_copy / "config.json").read_text())
    cfg["model_type"] = "made-up-transformer"
    (bert_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'made-up-transformer' is not supported"):
        load_model(bert_copy)
    with pytest.raises(ValueError, match="is not one attnlab implements"):
        load_model(bert_copy, fallback=False)


def test_encoder_decoder_refused(bert_copy):
    (bert_copy / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    with pytest.raises(ValueError, match="encoder-decoder"):
        load_model(bert_copy)


def test_fallback_to_transformers_for_other_architectures(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    v = wordpiece_tokenizer(tmp_path)
    cfg = DistilBertConfig(vocab_size=v, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                           max_position_embeddings=64)
    torch.manual_seed(0)
    save(DistilBertModel(cfg).eval(), tmp_path)
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    lm = load_model(tmp_path)
    assert lm.engine == "transformers" and lm.kind == "encoder" and not lm.native
    cache = capture(lm, "the animal was too tired")
    enc = cache.encoded
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([enc.ids]), output_attentions=True)
    assert torch.allclose(cache.weights, torch.stack([a[0] for a in ref.attentions]), atol=1e-6)
    with pytest.raises(ValueError, match="needs attnlab's own model code"):
        lm.forward(enc, mask=lambda b, h, q, kv: kv <= q)
    from attnlab.inspect.patching import Ablation, patch_effect

    with pytest.raises(ValueError, match="needs attnlab's own model code"):
        patch_effect(lm, enc, ablate=[Ablation(0, 0)])


def test_sharded_fp16_prefixed_gamma_beta_checkpoint(tiny_bert, tmp_path):
    """bert.-prefixed (task-model) names, old gamma/beta LayerNorms, fp16, two shards."""
    ref = load_model(tiny_bert)
    dst = tmp_path / "sharded"
    shutil.copytree(tiny_bert, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    renamed = {}
    for k, t in tensors.items():
        k = "bert." + k
        if "LayerNorm" in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[k] = t.half()
    renamed["cls.predictions.transform.dense.weight"] = torch.zeros(2, 2)
    names = sorted(renamed)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: renamed[k] for k in keys}, str(dst / fname))
        weight_map |= dict.fromkeys(keys, fname)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    lm = load_model(dst)
    assert next(lm.model.parameters()).dtype == torch.float32
    enc = lm.encode("the animal was too tired")
    a, b = lm.forward(enc).last_hidden_state, ref.forward(enc).last_hidden_state
    assert float((a - b).abs().max()) < 5e-2  # fp16 rounding of the weights only
    assert lm.ignored == ["cls.predictions.transform.dense.weight"]


def test_text_errors_and_truncation(tiny_bert):
    lm = load_model(tiny_bert)
    with pytest.raises(ValueError, match="empty"):
        lm.encode("")
    with pytest.raises(ValueError, match="empty"):
        lm.encode("   \n ")
    with pytest.raises(TypeError, match="expected a string"):
        lm.encode(None)  # type: ignore[arg-type]
    long = " ".join(["animal"] * 100)
    with pytest.raises(ValueError, match=r"at most 64 tokens.*got 102.*--truncate"):
        lm.encode(long)
    enc = lm.encode(long, truncate=True)
    assert len(enc) == 64 and enc.truncated and enc.total_tokens == 102
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"  # specials survive the cut
    capture(lm, enc)  # and the model runs on it
    # The folder's tokenizer.json enables truncation at 128 and MiniLM's pads to 128: both are off.
    assert len(lm.encode("the animal")) == 4


def test_focus_not_in_text_lists_tokens(minilm):
    enc = minilm.encode("The animal didn't cross the street")
    with pytest.raises(ValueError, match=r"'it' is not a token of the text; the tokens are: '\[CLS\]'"):
        find_token(enc, "it")
    assert find_token(enc, "Animal") == 2
    assert find_token(enc, "the#2") == 7 and find_token(enc, "@3") == 3
    with pytest.raises(ValueError, match="appears 2 time"):
        find_token(enc, "the#3")


def test_model_positions_checked_in_forward(tiny_bert):
    lm = load_model(tiny_bert)
    with pytest.raises(ValueError, match="at most 64 positions"):
        lm.model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids in \[0, "):
        lm.model(torch.full((1, 3), 10_000))


def test_roberta_positions_limit(tmp_path):
    lm = load_model(make_bert(tmp_path / "r", "roberta"))
    assert lm.max_tokens == 65  # 66 rows minus pad_token_id + 1
