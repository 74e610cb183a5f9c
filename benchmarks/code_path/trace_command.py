"""Which attnlab files a command runs through, and in what order its packages are entered.

Issue 26's measure of a command's path through the code: the distinct attnlab source files whose
functions run, and the walk of packages (attnlab.cli, attnlab.inspect.llm, attnlab.models, ...)
the command calls into, in order (calls made from attnlab.cli frames into other attnlab
packages). A "return" is a package the command calls into again after it had called another
one in between: inspect.llm, models, inspect.llm is one return to inspect.llm.

    .venv/bin/python benchmarks/code_path/trace_command.py -- prompt-effect --max-new-tokens 4 \
        --bands 1 --steer-heads 2 --json

prints one JSON object (files, count, the packages the command calls into, returns).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2] / "src" / "attnlab"


def _package(filename: str) -> str | None:
    p = Path(filename)
    try:
        rel = p.resolve().relative_to(ROOT)
    except ValueError:
        return None
    parts = ["attnlab", *rel.parts[:-1]]
    return ".".join(parts)


def trace(argv: list[str]) -> dict[str, Any]:
    from attnlab.cli.main import main

    files: dict[str, None] = {}
    walk: list[str] = []  # packages the command's frames call into, consecutive repeats merged

    def prof(frame: FrameType, event: str, _arg: object) -> None:
        if event != "call":
            return
        fn = frame.f_code.co_filename
        pkg = _package(fn)
        if pkg is None:
            return
        files.setdefault(str(Path(fn).resolve().relative_to(ROOT.parent)), None)
        caller = frame.f_back
        if (caller is not None and pkg != "attnlab.cli"
                and _package(caller.f_code.co_filename) == "attnlab.cli" and (not walk or walk[-1] != pkg)):
            walk.append(pkg)

    from attnlab.cli.main import app

    sys.setprofile(prof)
    threading.setprofile(prof)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            app(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    returns = sum(1 for i, pkg in enumerate(walk) if pkg in walk[:i])
    return {"argv": argv, "count": len(files), "returns": returns, "walk": walk, "files": list(files)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("argv", nargs=argparse.REMAINDER, help="the attnlab command line, after --")
    args = ap.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    print(json.dumps(trace(argv), indent=1))


if __name__ == "__main__":
    main()
