"""A chat template (from a downloaded file) cannot hang, exhaust memory or crash with a traceback:
output bounded, a deadline, every failure one line naming the template's source.

Before: range(10**9) -> OverflowError traceback; two nested range(100000) loops never returned;
'x' * 4000000000 -> MemoryError at 8.4 GB; 5,000 nested parentheses -> RecursionError."""

from __future__ import annotations

import re
import threading
import time

import pytest

from attnlab.models.gguf_tokenizer import ChatTemplate

MESSAGES = [{"role": "user", "content": "hello"}]
BAD = {
    "huge_range": ("{% for i in range(10**9) %}{% endfor %}", r"range\(\) of 1000000000 numbers"),
    "nested_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                     "{% endfor %}", r"took more than 2 s"),
    "huge_string": ("{{ 'x' * 4000000000 }}", r"repeated 4000000000 times"),
    "huge_power": ("{{ 2 ** 10000000 }}", r"over 4096 bits"),
    "doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                 "{% endfor %}{{ ns.s|length }}", r"concatenation of"),
    "long_output": ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
                    r"produced more than \d+ characters"),
    "recursive_macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", r"recursed too deep"),
}


def _render_within(source: str, seconds: float) -> BaseException | None:
    """Render in a daemon thread: a render that never returns fails the test, not the suite."""
    got: list[BaseException | None] = []

    def run() -> None:
        try:
            ChatTemplate(source, source="t.gguf: tokenizer.chat_template").render(MESSAGES)
            got.append(None)
        except BaseException as e:
            got.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    assert got, f"no result after {seconds} s (a hang)"
    return got[0]


@pytest.mark.parametrize("name", list(BAD))
def test_costly_templates_stop_with_one_line(name):
    source, match = BAD[name]
    t0 = time.monotonic()
    err = _render_within(source, 20)
    assert time.monotonic() - t0 < 10
    assert isinstance(err, ValueError), repr(err)
    msg = str(err)
    assert re.search(match, msg), msg
    assert msg.startswith("t.gguf: tokenizer.chat_template: ") and "\n" not in msg and len(msg) < 400


def test_deeply_nested_template_source_is_one_error():
    with pytest.raises(ValueError, match=r"nested too deep \(RecursionError\)") as err:
        ChatTemplate("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    assert "\n" not in str(err.value)


def test_ordinary_templates_render_as_before():
    t = ChatTemplate("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                     "{% for i in range(3)|reverse %}{{ i }}{% endfor %}{{ range(5)|length }}")
    long = "w " * 200_000  # a long message is fine: the output limit grows with the messages
    out = t.render([{"role": "user", "content": long}])
    assert out.startswith("<|im_start|>user\nw w") and out.endswith("<|im_start|>assistant\n2105")
