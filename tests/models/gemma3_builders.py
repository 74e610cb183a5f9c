"""Tiny Gemma 3 checkpoints for the parity tests: a random ``Gemma3ForCausalLM`` folder, a
Gemma-style SentencePiece vocabulary, and the folder written as a GGUF the way llama.cpp's
converter writes Gemma 3 (norm weights stored as 1 + w, no q/k permutation)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .conftest import CORPUS, bytelevel_tokenizer, save, set_meta

SPACE = "\u2581"
# (piece, gguf token type): control pieces first and user-defined ones among them, as in Gemma's file
SPECIALS = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 3), ("<mask>", 3), ("[multimodal]", 4),
            ("<start_of_turn>", 3), ("<end_of_turn>", 3), ("\n", 4), ("\n\n", 4), ("  ", 4), ("   ", 4),
            ("\t\t", 4), ("<unused0>", 3)]


def gemma_pieces() -> list[tuple[str, int]]:
    """A small Gemma-like vocabulary: specials, the 256 byte pieces, pieces BPE learned on the
    corpus ("▁the", ...) in merge order (Gemma's file order is its merge order), the alphabet last."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never")
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=320, show_progress=False))
    model = json.loads(tok.to_str())["model"]
    merged = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in model["merges"]]
    alphabet = [*sorted(t for t in model["vocab"] if len(t) == 1), "é", "日本", "語"]
    pieces = [*SPECIALS, *((f"<0x{b:02X}>", 6) for b in range(256))]
    seen = {p for p, _ in pieces}
    for p in [*merged, *alphabet]:
        if p not in seen:
            seen.add(p)
            pieces.append((p, 1))
    return pieces


def make_gemma3(path: Path, seed: int = 0, *, vocab_size: int | None = None, **overrides) -> Path:
    """A tiny random Gemma 3 (6 layers, 4 query heads over 2 K/V heads of dim 16, 4-key windows)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    path.mkdir(parents=True, exist_ok=True)
    v = bytelevel_tokenizer(path) if vocab_size is None else vocab_size
    kw = dict(vocab_size=v, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, sliding_window=4, max_position_embeddings=64,
              query_pre_attn_scalar=16, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**(kw | overrides)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():  # norms too: their (1 + w) then differs from 1
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    save(model.eval(), path)
    return path


def write_gemma3_gguf(folder: Path, out: Path, *, qtype: str = "F32", meta: dict | None = None) -> Path:
    """``folder``'s tiny Gemma 3 as llama.cpp writes it (norms + 1, 2-D weights in ``qtype``),
    with the Gemma-like SentencePiece vocabulary of :func:`gemma_pieces`; ``meta`` replaces
    metadata fields (``conftest.set_meta``)."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    st = load_file(str(folder / "model.safetensors"))
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                 "post_attention_layernorm": "post_attention_norm",
                 "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w = gguf.GGUFWriter(str(out), "gemma3")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_sliding_window(cfg["sliding_window"])
    pieces = gemma_pieces()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([p for p, _ in pieces])
    w.add_token_scores([-1000.0 if t != 1 else -float(i) for i, (_, t) in enumerate(pieces)])
    w.add_token_types([t for _, t in pieces])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for name, t in st.items():
        a = t.float().numpy()
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            part, _, suffix = rest.rpartition(".")
            gname = f"blk.{i}.{per_layer[part]}.{suffix}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight",
                     "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}[name]
        if gname.endswith("norm.weight"):
            a = a + 1.0  # llama.cpp's converter: its RMSNorm multiplies by the stored weight
        if a.ndim == 2 and qtype != "F32":
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
