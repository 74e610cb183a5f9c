"""Gemma's SentencePiece (BPE with byte fallback) tokenizer, rebuilt from a GGUF file's metadata.

Why: a Gemma GGUF (``tokenizer.ggml.model == "llama"``: SentencePiece) carries the 262,144 pieces
of Gemma 3's vocabulary (Gemma Team 2025, "Gemma 3 Technical Report"), a score and a type per
piece, but no merges and no ``tokenizer.json``. attnlab builds the same ``tokenizers.Tokenizer``
transformers builds from the same file (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``,
its Gemma GGUF converter), so that ids agree with it token for token:

- spaces are written "▁" (normalizer), no prefix space is added (``add_space_prefix`` false),
  and the whole text is one BPE word (the pre-tokenizer splits on " ", which the normalizer has
  already replaced: as in Gemma's own ``tokenizer.json``);
- a piece made only of whitespace with a space in it is stored with real spaces ("  "); it is
  looked up as "▁▁", so it is renamed to one "▁" per character;
- merges: every split of every piece into two pieces of the vocabulary, best piece first in file
  order (Gemma's scores do not follow its merge order, the order of the pieces does), and for
  one piece the longer left part first;
- byte fallback to the ``<0xNN>`` pieces for characters outside the vocabulary, ``<unk>`` fused;
- CONTROL pieces are special tokens, USER_DEFINED ones ("\\n", "\\t\\t", "<start_of_image>")
  are matched whole in the raw text; the renamed whitespace pieces are not (they come from BPE);
- ``<bos>`` is added in front when ``tokenizer.ggml.add_bos_token`` says so (Gemma: yes).

llama.cpp (the runtime these files are made for) merges by score instead and matches the
whitespace pieces whole, so its ids can differ on rare spellings; transformers is the reference
here because the parity tests run it.
"""

from __future__ import annotations

from collections.abc import Mapping

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPM_ARCHITECTURES = ("gemma", "gemma2", "gemma3")  # architectures whose "llama" vocabulary is Gemma's
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (gguf.TokenType)
SPACE = "\u2581"  # SentencePiece's "▁"


def _spelled(token: str) -> str:
    return SPACE * len(token) if " " in token and not token.strip() else token


def spm_merges(pieces: list[str], vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) of the vocabulary that concatenates to a piece: pieces in file order
    (first = best), each piece's splits with the longest left part first."""
    merges: list[tuple[str, str]] = []
    for piece in pieces:
        for j in range(len(piece) - 1, 0, -1):
            left = piece[:j]
            if left in vocab and (right := piece[j:]) in vocab:
                merges.append((left, right))
    return merges


def gemma_tokenizer(tokens: list[str], types: list[int], *,
                    named: Mapping[str, int | None], add_bos: bool, add_eos: bool,
                    source: str = "gguf") -> Tokenizer:
    """The ``tokenizers.Tokenizer`` transformers builds for a Gemma GGUF (see the module doc).
    ``named``: the bos/eos/unknown/padding ids of the metadata."""
    pieces = [_spelled(t) for t in tokens]
    vocab: dict[str, int] = {}
    for i, p in enumerate(pieces):
        if vocab.setdefault(p, i) != i:
            raise ValueError(f"{source}: tokenizer.ggml.tokens[{i}]: expected unique pieces, {p!r} is also "
                             f"piece {vocab[p]}")
    if not any(t.startswith("<0x") for t in tokens):
        raise ValueError(f"{source}: tokenizer.ggml.tokens: expected the byte pieces <0x00>..<0xFF> of a "
                         f"SentencePiece vocabulary with byte fallback, found none")
    unk = named.get("unknown")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(pieces, vocab), fuse_unk=True,
                               unk_token=tokens[unk] if unk is not None else None, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    special = sorted({i for i, ty in enumerate(types) if ty == CONTROL}
                     | {i for i in named.values() if i is not None})
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED and t in vocab])
    ends = {k: j for k, on in (("bos", add_bos), ("eos", add_eos)) if on and (j := named.get(k)) is not None}
    if ends:
        def frame(k: str, seq: int) -> list[str]:
            return [f"{tokens[ends[k]]}:{seq}"] if k in ends else []

        tok.post_processor = processors.TemplateProcessing(
            single=[*frame("bos", 0), "$A:0", *frame("eos", 0)],
            pair=[*frame("bos", 0), "$A:0", *frame("eos", 0), *frame("bos", 1), "$B:1", *frame("eos", 1)],
            special_tokens=[(tokens[j], j) for j in ends.values()])
    return tok
