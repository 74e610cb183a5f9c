"""docs/seq2seq.md, "Your own sentence pairs, end to end": the walkthrough runs as written, in
an empty folder (its Python block makes the pair file, its TOML block is saved as mine.toml,
its shell blocks run in bash with this environment's `attnlab`), and prints what it shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "seq2seq.md"
TITLE = "## Your own sentence pairs, end to end"


def _walkthrough() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    assert TITLE in text
    section = text.split(TITLE, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_own_pairs_walkthrough_runs_as_written(tmp_path):
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "attnlab").is_file(), "the attnlab command is not installed"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    blocks = _walkthrough()
    assert [kind for kind, _ in blocks] == ["python", "sh", "text", "toml", "sh", "sh", "sh"]
    printed = ""
    for kind, code in blocks:
        if kind == "python":
            r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
        elif kind == "sh":
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        elif kind == "toml":
            (tmp_path / "mine.toml").write_text(code, encoding="utf-8")
            continue
        else:  # what the doc says was printed
            for line in code.strip().splitlines():
                assert line in printed, f"the doc shows {line!r}; the commands printed:\n{printed}"
            continue
        assert r.returncode == 0, f"{kind} block failed:\n{code}\n{r.stdout}\n{r.stderr}"
        printed += r.stdout + r.stderr
    assert (tmp_path / "runs/mine2/model.safetensors").is_file()  # the TOML run
    translations = json.loads((tmp_path / "translations.json").read_text(encoding="utf-8"))
    assert [t["source"] for t in translations] == ["forty-two", "seven hundred and one"]
    assert json.loads((tmp_path / "runs/mine/results.json").read_text())["steps"] == 80  # resumed
    report = json.loads((tmp_path / "runs/mine-text/data/report.json").read_text())
    assert report["files"] == ["train.en", "train.es"] and report["read"] == 1000
