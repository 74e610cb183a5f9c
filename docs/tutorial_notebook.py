"""docs/tutorial.ipynb is generated from docs/tutorial.md by this script; the page is the source.

    .venv/bin/python docs/tutorial_notebook.py           # write docs/tutorial.ipynb
    .venv/bin/python docs/tutorial_notebook.py --check   # exit 1 if the notebook has drifted

The prose becomes markdown cells, each ```python block a code cell, and the ```text block after
it (what the block prints) goes into the cell's metadata (``attnlab.shown``), where
tests/core/test_tutorial_notebook.py checks the executed notebook's output against it, by the
rules of the page's own test. Shell blocks are shown as markdown (run them in a terminal),
except the training block, which becomes a ``%%bash`` cell: the next Python cell loads the
model it trains. Cell ids are fixed, so the same page always gives the same file.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "tutorial.md"
NOTEBOOK = DOCS / "tutorial.ipynb"
RUN_SHELL = ("attnlab train",)  # shell blocks the notebook runs: later Python cells need them
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$\n?", flags=re.S | re.M)
INTRO = ("*This notebook is generated from [tutorial.md](tutorial.md) by `docs/tutorial_notebook.py`; "
         "edit the page, not the notebook. Run it with the kernel of the environment where "
         "attnlab is installed (`make setup`); the views below display themselves.*")


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _markdown(text: str, n: int) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": f"md-{n}", "metadata": {}, "source": _lines(text.strip("\n"))}


def _code(code: str, n: int, shown: str | None, kind: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if shown is not None:
        meta["attnlab"] = {"kind": kind, "shown": shown}
    return {"cell_type": "code", "execution_count": None, "id": f"code-{n}", "metadata": meta,
            "outputs": [], "source": _lines(code.rstrip("\n"))}


def build(page: str) -> dict[str, Any]:
    """The notebook (nbformat 4.5 JSON) of the tutorial page's text."""
    cells: list[dict[str, Any]] = []
    prose: list[str] = []

    def flush() -> None:
        text = "".join(prose).strip("\n")
        prose.clear()
        if text:
            cells.append(_markdown(text, len(cells)))

    pos, blocks = 0, list(_BLOCK.finditer(page))
    as_code: set[int] = set()  # blocks that became code cells
    for i, m in enumerate(blocks):
        kind, body = m.group(1), m.group(2)
        prose.append(page[pos : m.start()])
        pos = m.end()
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        shown = nxt.group(2) if nxt is not None and nxt.group(1) == "text" \
            and not page[m.end() : nxt.start()].strip() else None
        if kind == "text" and i - 1 in as_code and not page[blocks[i - 1].end() : m.start()].strip():
            continue  # what the code cell before prints: kept in its metadata
        if kind == "python" or (kind == "sh" and any(c in body for c in RUN_SHELL)):
            flush()
            code = body if kind == "python" else "%%bash\n" + body
            cells.append(_code(code, len(cells), shown, kind))
            as_code.add(i)
        else:  # prose's own text blocks, and shell blocks: shown, run in a terminal
            prose.append(m.group(0))
    prose.append(page[pos:])
    flush()
    cells.insert(1, _markdown(INTRO, 0) | {"id": "md-intro"})  # after the page's title
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def text(nb: dict[str, Any]) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    want = text(build(PAGE.read_text(encoding="utf-8")))
    if "--check" in argv:
        have = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.is_file() else ""
        if have != want:
            print(f"{NOTEBOOK} differs from {PAGE}: run python docs/tutorial_notebook.py", file=sys.stderr)
            return 1
        return 0
    NOTEBOOK.write_text(want, encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
