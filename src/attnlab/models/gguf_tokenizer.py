"""The tokenizer and chat template a GGUF file carries in its metadata (``tokenizer.*`` keys).

A GGUF has no ``tokenizer.json``: llama.cpp's converter stores the vocabulary, the merges, a type
per token and the special ids as metadata. ``tokenizer_from_gguf`` rebuilds a Hugging Face
``tokenizers.Tokenizer`` from them (byte-level BPE, ``tokenizer.ggml.model == "gpt2"``; Gemma's
SentencePiece, ``"llama"``, in ``gguf_spm_tokenizer``), and
``ChatTemplate`` renders ``tokenizer.chat_template`` in a sandboxed jinja2 as transformers'
``apply_chat_template`` does.

Pre-tokenization follows llama.cpp (``llama-vocab.cpp``), the runtime these files are made for.
For ``pre == "smollm"`` (the StarCoder family) it isolates every digit first, then applies the
GPT-2 split, as llama.cpp does (the tests hold ids from llama.cpp itself) and as SmolLM's own
``tokenizer.json`` is built (``Digits(individual_digits)`` + ``ByteLevel``). transformers (5.x)
has no entry for ``smollm`` in its GGUF split table and silently uses the plain GPT-2 split,
which differs on whitespace runs before a digit ("\\n\\n1." -> ``ĊĊ 1 .`` here and in llama.cpp,
``Ċ Ċ 1 .`` in transformers).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from attnlab.models.gguf_spm_tokenizer import SPM_ARCHITECTURES, gemma_tokenizer

SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")  # llama.cpp's names: byte-level BPE, SentencePiece
# llama.cpp's pre-tokenizer names (llama-vocab.cpp) grouped by the split they use.
_STARCODER_PRE = ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b")
_GPT2_PRE = ("gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "jina-v2-es",
             "jina-v2-de", "gigachat", "exaone4")
SUPPORTED_PRE_TOKENIZERS = _STARCODER_PRE + _GPT2_PRE
# tokenizer.ggml.token_type values (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def _need(meta: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    if key not in meta:
        raise ValueError(f"{source}: {key}: expected a {kind.__name__}, the field is missing")
    value = meta[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{source}: {key}: expected a {kind.__name__}, got {type(value).__name__}")
    return value


def _list_of(meta: Mapping[str, Any], key: str, kind: type, source: str) -> list[Any]:
    values = _need(meta, key, list, source)
    if not values:
        raise ValueError(f"{source}: {key}: expected a non-empty list, got an empty one")
    for i, v in enumerate(values):
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ValueError(f"{source}: {key}[{i}]: expected a {kind.__name__}, got {v!r}")
    return values


def _token_id(meta: Mapping[str, Any], key: str, n_vocab: int, source: str) -> int | None:
    if key not in meta:
        return None
    i = _need(meta, key, int, source)
    if not 0 <= i < n_vocab:
        raise ValueError(f"{source}: {key}: expected an id in [0, {n_vocab}), got {i}")
    return int(i)


def _pre_tokenizer(pre: str, source: str) -> pre_tokenizers.PreTokenizer:
    # ByteLevel(use_regex=True) is the GPT-2 split ('s|'t|...| ?\p{L}+| ?\p{N}+|...), llama.cpp's
    # second regex for both families; StarCoder-family files first isolate each \p{N}.
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _STARCODER_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    if pre in _GPT2_PRE:
        return gpt2
    raise ValueError(f"{source}: tokenizer.ggml.pre: expected one of {SUPPORTED_PRE_TOKENIZERS}, "
                     f"got {pre!r} (its split regex is not implemented here)")


def _add_flags(meta: Mapping[str, Any], source: str) -> dict[str, bool]:
    """``tokenizer.ggml.add_{bos,eos}_token``, False where the file says nothing."""
    return {k: _need(meta, f"tokenizer.ggml.add_{k}_token", bool, source)
            if f"tokenizer.ggml.add_{k}_token" in meta else False for k in ("bos", "eos")}


def tokenizer_from_gguf(meta: Mapping[str, Any], *, source: str = "gguf") -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equal to the one llama.cpp builds from this metadata (byte-level
    BPE), or to the one transformers builds (Gemma's SentencePiece: ``gguf_spm_tokenizer``)."""
    kind = _need(meta, "tokenizer.ggml.model", str, source)
    if kind not in SUPPORTED_TOKENIZER_MODELS:
        raise ValueError(f"{source}: tokenizer.ggml.model: expected one of {SUPPORTED_TOKENIZER_MODELS} "
                         f"(byte-level BPE, Gemma's SentencePiece), got {kind!r}")
    tokens: list[str] = _list_of(meta, "tokenizer.ggml.tokens", str, source)
    n = len(tokens)
    types: list[int] = ([NORMAL] * n if "tokenizer.ggml.token_type" not in meta
                        else _list_of(meta, "tokenizer.ggml.token_type", int, source))
    if len(types) != n:
        raise ValueError(f"{source}: tokenizer.ggml.token_type: expected {n} entries (one per token), "
                         f"got {len(types)}")
    named = {k: _token_id(meta, f"tokenizer.ggml.{k}_token_id", n, source)
             for k in ("bos", "eos", "unknown", "padding")}
    flags = _add_flags(meta, source)
    for k, on in flags.items():
        if on and named[k] is None:
            raise ValueError(f"{source}: tokenizer.ggml.{k}_token_id: expected an id, since "
                             f"tokenizer.ggml.add_{k}_token is true; the field is missing")
    if kind == "llama":
        arch = meta.get("general.architecture")
        if arch not in SPM_ARCHITECTURES:
            raise ValueError(f"{source}: tokenizer.ggml.model 'llama' (SentencePiece): expected "
                             f"general.architecture in {SPM_ARCHITECTURES}, got {arch!r} (only Gemma's "
                             f"SentencePiece vocabulary is implemented)")
        return gemma_tokenizer(tokens, types, named=named, add_bos=flags["bos"], add_eos=flags["eos"],
                               source=source)
    pre = _pre_tokenizer(_need(meta, "tokenizer.ggml.pre", str, source), source)
    keys, vocab = _bpe_vocab(tokens, types, source)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(meta, vocab, source), fuse_unk=False,
                               continuing_subword_prefix="", end_of_word_suffix=""))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    _add_specials(tok, keys, types, named, flags)
    return tok


def _bpe_vocab(tokens: list[str], types: list[int], source: str) -> tuple[list[str], dict[str, int]]:
    """Each token's key in the BPE vocabulary, and the vocabulary (key -> id), checked 1:1."""
    # Normal tokens are written in GPT-2's byte alphabet ("Ġ" = space); a stray raw one is
    # respelled as transformers does. Control/user-defined tokens are matched as raw text
    # (llama.cpp's special-token partition), so they keep their spelling.
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    keys = [t if ty in (CONTROL, USER_DEFINED) or set(t) <= alphabet
            else "".join(piece for piece, _ in spell.pre_tokenize_str(t))
            for t, ty in zip(tokens, types, strict=True)]
    vocab: dict[str, int] = {}
    for i, key in enumerate(keys):
        if vocab.setdefault(key, i) != i:  # llama.cpp asserts a 1:1 token <-> id map too
            raise ValueError(f"{source}: tokenizer.ggml.tokens[{i}]: expected unique tokens, "
                             f"{key!r} is also token {vocab[key]}")
    return keys, vocab


def _merges(meta: Mapping[str, Any], vocab: dict[str, int], source: str) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for i, m in enumerate(_list_of(meta, "tokenizer.ggml.merges", str, source)):
        pair = m.split(" ")
        # Checked here: tokenizers *panics* (not an Exception) on a merge outside the vocabulary.
        if len(pair) != 2 or not all(p in vocab for p in (*pair, pair[0] + pair[1])):
            raise ValueError(f"{source}: tokenizer.ggml.merges[{i}]: expected 'left right' with left, "
                             f"right and left+right in tokenizer.ggml.tokens, got {m!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _add_specials(tok: Tokenizer, keys: list[str], types: list[int], named: dict[str, int | None],
                  flags: dict[str, bool]) -> None:
    """Special and user-defined tokens, and BOS/EOS where the file asks for them."""
    # CONTROL tokens and the named ids are special (one id, skipped by decode(skip_special_tokens));
    # USER_DEFINED ones are matched whole but decode as text, as llama.cpp and transformers do.
    special = sorted({i for i, t in enumerate(types) if t == CONTROL}
                     | {i for i in named.values() if i is not None})
    tok.add_special_tokens([AddedToken(keys[i], special=True, normalized=False) for i in special])
    tok.add_tokens([AddedToken(keys[i], special=False, normalized=False)
                    for i, ty in enumerate(types) if ty == USER_DEFINED])

    # BOS/EOS only where the file asks (SmolLM2's says add_bos_token=False; its template adds none).
    ends: dict[str, tuple[str, int]] = {}
    for k, on in flags.items():
        if on and (j := named[k]) is not None:
            ends[k] = (keys[j], j)
    if ends:
        bos = [f"{ends['bos'][0]}:0"] if "bos" in ends else []
        eos = [f"{ends['eos'][0]}:0"] if "eos" in ends else []
        tok.post_processor = processors.TemplateProcessing(
            single=[*bos, "$A:0", *eos], pair=[*bos, "$A:0", *eos, *bos, "$B:1", *eos],
            special_tokens=list(ends.values()))


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """``[{"role": "system", ...}, {"role": "user", "content": prompt}]`` (system only if given)."""
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": prompt}]


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check a chat: a non-empty list of dicts whose 'role' and 'content' are strings."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages: expected a non-empty list of {{'role', 'content'}} dicts, "
                         f"got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content', "
                             f"got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "nothing" if key not in m else type(m[key]).__name__
                raise ValueError(f"messages[{i}][{key!r}]: expected a str, got {got}")
        if not m["role"]:
            raise ValueError(f"messages[{i}]['role']: expected a non-empty str "
                             "(system/user/assistant), got ''")
    return [dict(m) for m in messages]


class ChatTemplate:
    """A chat template (jinja2), rendered the way transformers' ``apply_chat_template`` does."""

    def __init__(self, template: str, *, bos_token: str = "", eos_token: str = "",
                 source: str = "tokenizer.chat_template") -> None:
        import jinja2
        from jinja2.ext import loopcontrols

        from attnlab.models.chat_template import BoundedSandbox

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
                   separators: Any = None, sort_keys: bool = False) -> str:
            import json  # jinja's own tojson HTML-escapes; transformers overrides it like this

            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        # Templates come from downloaded files: sandboxed (no attribute escapes, no mutation) with
        # a deadline and size limits (chat_template.py); trim_blocks/lstrip_blocks and
        # loopcontrols as in transformers' _compile_jinja_template.
        env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        self._env = env
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = env.from_string(template)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"{source}: expected a valid jinja2 template, "
                             f"line {e.lineno}: {e.message}") from None
        except (RecursionError, MemoryError) as e:  # 5,000 nested parentheses, say
            raise ValueError(f"{source}: expected a jinja2 template the parser can hold, got one "
                             f"nested too deep ({type(e).__name__})") from None

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], *, source: str = "gguf") -> ChatTemplate:
        template = _need(meta, "tokenizer.chat_template", str, source)
        tokens = meta.get("tokenizer.ggml.tokens") or []
        names = {}
        for k in ("bos", "eos"):
            i = _token_id(meta, f"tokenizer.ggml.{k}_token_id", len(tokens), source)
            names[k] = tokens[i] if i is not None else ""
        return cls(template, bos_token=names["bos"], eos_token=names["eos"],
                   source=f"{source}: tokenizer.chat_template")

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (ending with the assistant header if asked)."""
        from attnlab.models.chat_template import output_limit, render_bounded

        checked = validate_messages(messages)
        return render_bounded(self._env, self._template, self.source, output_limit(checked),
                              messages=checked, add_generation_prompt=add_generation_prompt,
                              bos_token=self.bos_token, eos_token=self.eos_token)
