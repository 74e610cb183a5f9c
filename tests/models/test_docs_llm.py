"""Every ```python snippet of docs/llm.md runs, in order, in one namespace, on the embedded LLM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "llm.md"


@pytest.mark.slow
def test_llm_doc_snippets_run():
    from attnlab.models.gguf_file import embedded_llm_path

    try:
        embedded_llm_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)
    assert ns["row"].shape[:2] == (30, 9)
    assert ns["report"]["knockout"] and ns["g"].text
