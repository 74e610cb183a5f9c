"""Tiny randomly initialised BERT / RoBERTa / GPT-2 folders (config.json + model.safetensors +
tokenizer.json) built in a temporary directory, and the embedded default model."""

from __future__ import annotations

import inspect
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
