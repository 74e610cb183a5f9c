"""Functions of src/attnlab longer than 60 lines (issue 26's target), longest first.

    .venv/bin/python benchmarks/code_path/function_lengths.py

"body" counts the lines after the docstring, "total" the whole definition with its signature
(typer commands' option signatures are long by nature: their body is what the target means).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "attnlab"


def main() -> None:
    rows = []
    for p in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                first = node.body[0]
                doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                start = node.body[1].lineno if doc and len(node.body) > 1 else first.lineno
                body, total = node.end_lineno - start + 1, node.end_lineno - node.lineno + 1
                if body > 60 or total > 60:
                    rows.append((body, total, f"{p.relative_to(SRC.parent)}:{node.lineno} {node.name}"))
    for body, total, where in sorted(rows, reverse=True):
        print(f"{body:4d} body {total:4d} total  {where}")


if __name__ == "__main__":
    main()
