"""``attnlab inspect TEXT --model RUN``: the heads of a Transformer translator trained here.

``inspect_command`` (model_cmds.py) hands a folder written by ``attnlab train`` to
:func:`inspect_translator`: a table of layers x heads for encoder self-, decoder self- and
cross-attention, each head labelled; ``--png DIR`` / ``--html DIR`` draw every head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnlab.cli.common import check_output, console, err_console, print_json, user_errors


def is_translator_folder(model: Path) -> bool:
    """A folder written by ``attnlab train`` (model.json with an attnlab format tag)."""
    path = Path(model) / "model.json"
    if not path.is_file():
        return False
    try:
        fmt = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(fmt, str) and fmt.startswith("attnlab.")


def _cell(head: dict[str, Any]) -> str:
    kind = head["pattern"] if "pattern" in head else f"mono {head['monotone']:.2f}"
    return f"{kind} {head['entropy']:.2f}"


def inspect_translator(text: str | None, folder: Path, *, png: Path | None, html: Path | None,
                       as_json: bool, unsupported: dict[str, bool]) -> None:
    with user_errors(as_json):
        given = [name for name, on in unsupported.items() if on]
        if given:
            raise ValueError(f"{given[0]}: not available for a translator folder ({folder}); "
                             f"expected TEXT with --png DIR, --html DIR or --json")
        check_output(png, "--png")
        check_output(html, "--html")
        if text is None or not text.strip():
            raise ValueError(f"TEXT: expected a source sentence for the translator in {folder}, "
                             f"got none")
        from attnlab.training.inspection import inspect_translation
        from attnlab.training.pictures import attention_pictures
        from attnlab.training.translator import Translator

        report, t = inspect_translation(Translator.load(folder), text)
        assert t.maps is not None
        title = f"{t.source} -> {t.text}"
        written = []
        if png is not None:
            written += attention_pictures(t.maps, png, title=title, png=True)
        if html is not None:
            written += attention_pictures(t.maps, html, title=title, png=False, html=True)
        report["files"] = [str(w) for w in written]
    if as_json:
        print_json(report)
        return
    from rich.table import Table

    m = report["model"]
    console.print(f"[bold]{folder}[/] (transformer translator, {m['layers']} layers x {m['heads']} "
                  f"heads, d_model {m['d_model']}, {m['positions']} positions, {m['norm']}-LN)",
                  highlight=False, soft_wrap=True)
    console.print(f"{t.source} -> {t.text}", markup=False, highlight=False)
    if t.unknown:
        err_console.print(f"note: unknown source tokens read as <unk>: {t.unknown}", markup=False)
    table = Table(title="each head: its self-attention pattern (or cross-attention monotonicity) "
                        "and normalised entropy", title_justify="left")
    table.add_column("attention", no_wrap=True)
    for h in range(m["heads"]):
        table.add_column(f"head {h}")
    for site in report["sites"]:
        table.add_row(site["site"], *(_cell(h) for h in site["heads"]))
    console.print(table)
    for w in written:
        console.print(f"wrote {w}", highlight=False)
