"""Tiny randomly initialised BERT / RoBERTa / GPT-2 folders (config.json + model.safetensors +
tokenizer.json) built in a temporary directory, and the embedded default model."""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "The animal didn't cross the street because it was too tired.",
    "The animal didn't cross the street because it was too wide.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The keys to the old cabinet in the hall are on the kitchen table.",
    "A small dog chased the red ball across the garden and then fell asleep under a tree.",
    "Attention lets every token look at every other token and decide what matters.",
    "cat sat mat hat bat rat fat pat vat oat boat coat goat moat float",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words() -> list[str]:
    seen: list[str] = []
    for line in CORPUS:
        for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(line.lower()):
            if w[0] not in seen:
                seen.append(w[0])
    return seen


def wordpiece_tokenizer(path: Path, specials: list[str] = SPECIALS) -> int:
    """A BERT-style WordPiece tokenizer.json over the corpus words; returns the vocab size."""
    vocab = {t: i for i, t in enumerate(specials)}
    for w in [*_words(), "##s", "##ing", "##ed"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = specials[2], specials[3]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    # Padding/truncation settings like all-MiniLM-L6-v2's, which the loader must switch off.
    tok.enable_truncation(128)
    tok.save(str(path / "tokenizer.json"))
    return len(vocab)


def bytelevel_tokenizer(path: Path) -> int:
    """A GPT-2-style byte-level BPE tokenizer.json trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(path / "tokenizer.json"))
    return tok.get_vocab_size()


def save(model: torch.nn.Module, path: Path) -> None:
    """save_pretrained as safetensors (transformers 5 always does; 4.x needs the flag)."""
    kw = {"safe_serialization": True} if "safe_serialization" in inspect.signature(
        model.save_pretrained).parameters else {}
    model.save_pretrained(str(path), **kw)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # Larger than HF's N(0, 0.02) init, LayerNorms included, so that attention is far from
    # uniform and every parameter matters to the parity checks.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = name.endswith(("LayerNorm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
            centre = 1.0 if norm else 0.0
            p.copy_(centre + 0.3 * torch.randn(p.shape, generator=g))


def make_bert(path: Path, model_type: str = "bert", seed: int = 0, **overrides) -> Path:
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    path.mkdir(parents=True, exist_ok=True)
    v = wordpiece_tokenizer(path)
    common = dict(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, type_vocab_size=2, hidden_act="gelu")
    if model_type == "bert":
        cfg = BertConfig(max_position_embeddings=64, **(common | overrides))
        model = BertModel(cfg)
    else:
        cfg = RobertaConfig(max_position_embeddings=66, pad_token_id=0, **(common | overrides))
        model = RobertaModel(cfg)
    _randomise(model, seed)
    save(model.eval(), path)
    return path


def make_gpt2(path: Path, seed: int = 0, lm_head: bool = True, **overrides) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    path.mkdir(parents=True, exist_ok=True)
    v = bytelevel_tokenizer(path)
    cfg = GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0, **overrides)
    model = GPT2LMHeadModel(cfg) if lm_head else GPT2Model(cfg)
    _randomise(model, seed)
    save(model.eval(), path)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin-waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("roberta"), "roberta", seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def minilm():
    from attnlab.models import load_model

    return load_model()


def make_llama(path: Path, seed: int = 0, tie: bool = True, **overrides) -> Path:
    """A tiny random Llama (GQA: 4 query heads over 2 K/V heads) with a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    v = bytelevel_tokenizer(path)
    kw = dict(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-5, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0,
              pad_token_id=0, rope_theta=10000.0)
    model = LlamaForCausalLM(LlamaConfig(**(kw | overrides)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(centre + 0.3 * torch.randn(p.shape, generator=g))
    save(model.eval(), path)
    return path


def set_meta(writer, meta: dict) -> None:
    """Replace, add (``key: (value, GGUFValueType)``) or drop (``key: None``) metadata fields of a
    ``gguf.GGUFWriter`` before its header is written: how the tests build files with wrong values."""
    from gguf.gguf_writer import GGUFValue

    for key, v in meta.items():
        if v is None:
            writer.kv_data[0].pop(key, None)
        else:
            writer.kv_data[0][key] = GGUFValue(*v)


def write_llama_gguf(folder: Path, out: Path, *, qtype: str = "Q8_0", arch: str = "llama",
                     bad_tensor: str | None = None, meta: dict | None = None) -> Path:
    """Write the tiny Llama of ``folder`` as a GGUF file the way llama.cpp's converter does:
    q/k rows permuted for its pairwise RoPE, 2-D weights quantized to ``qtype``, norms F32,
    the byte-level BPE vocabulary and merges in the metadata. ``bad_tensor`` stores that tensor
    as I32, a type gguf cannot dequantize; ``meta`` replaces metadata fields (:func:`set_meta`)."""
    import json

    import gguf
    import numpy as np
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    st = load_file(str(folder / "model.safetensors"))
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(w: np.ndarray, n: int) -> np.ndarray:  # llama.cpp convert_hf_to_gguf.py's permute
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
                 "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    vocab = tok["model"]["vocab"]
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    tokens = sorted({**vocab, **added}.items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([t for t, _ in tokens])
    w.add_token_types([3 if t in added else 1 for t, _ in tokens])
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for name, t in st.items():
        a = t.float().numpy()
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            part, _, suffix = rest.rpartition(".")
            gname = f"blk.{i}.{per_layer[part]}.{suffix}"
        else:
            gname = names[name]
        if gname.endswith("attn_q.weight"):
            a = permute(a, H)
        elif gname.endswith("attn_k.weight"):
            a = permute(a, Hkv)
        if gname == bad_tensor:
            w.add_tensor(gname, a.astype(np.int32))
        elif a.ndim == 2 and qtype != "F32":
            q = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(gname, gguf.quantize(a, q), raw_dtype=q)
        else:
            w.add_tensor(gname, a)
    set_meta(w, meta or {})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def app(minilm):
    """The viewer app over the embedded MiniLM, as the server tests use it."""
    from attnlab.inspect.server.app import create_app

    return create_app(minilm, max_chars=300)


@pytest.fixture
def client(app):
    from starlette.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1:8765")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="free_port", scope="session")
def free_port_fixture():
    """The function, for test modules (they cannot import conftest)."""
    return free_port


@contextlib.contextmanager
def serving(app, log_level: str = "warning", **settings) -> Iterator:
    """``app`` served by uvicorn in a thread on a free 127.0.0.1 port; yields the server."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level=log_level, **settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(name="serving", scope="session")
def serving_fixture():
    """The context manager, for test modules (they cannot import conftest)."""
    return serving


@pytest.fixture(scope="module")
def live_server(app):
    """The module's ``app`` served as `attnlab serve` runs it; yields its base URL."""
    with serving(app, **app.state.uvicorn_settings) as server:
        yield f"http://127.0.0.1:{server.config.port}"
