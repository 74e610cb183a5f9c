"""Every ```python snippet of docs/transformer.md runs, in order, in one namespace, and prints
what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "transformer.md"


def test_transformer_doc_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the library example trains into runs/
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks:
            exec(compile(code, str(DOC), "exec"), ns)
    printed = out.getvalue().splitlines()
    assert printed[0] == str(['encoder.0.self', 'encoder.1.self', 'decoder.0.self', 'decoder.0.cross',
                              'decoder.1.self', 'decoder.1.cross'])
    assert printed[1] == "torch.Size([1, 3, 20]) torch.Size([1, 4, 3, 4])"
    assert printed[2] == "torch.Size([8, 24, 50]) torch.Size([8, 4, 24, 24])"
    assert not ns["ablated"].equal(ns["out"].logits)
    t = ns["t"]
    assert t.maps.cross.shape[:2] == (1, 4) and t.maps.cross.shape[3] == 3  # forty - two
    assert (tmp_path / "runs" / "tiny-rotary" / "results.json").is_file()


def test_doc_names_every_model_key():
    from attnlab.models.transformer import TransformerConfig

    text = DOC.read_text(encoding="utf-8")
    for key in set(TransformerConfig.__dataclass_fields__) - {"src_vocab_size", "tgt_vocab_size"}:
        assert f"| `{key}` |" in text, key
