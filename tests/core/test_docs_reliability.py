"""docs/reliability.md names, for each promise, the test that proves it: every one must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = 0
    for row in text.splitlines():
        files = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", row)
        last = None
        for f, name in files:
            assert (ROOT / f).is_file(), f
            last = f
            if name:
                assert f"def {name}(" in (ROOT / f).read_text(encoding="utf-8"), f"{f}::{name}"
                named += 1
        for name in re.findall(r"`::(\w+)`", row):  # `::test` continues the file before it
            assert last is not None and f"def {name}(" in (ROOT / last).read_text(encoding="utf-8"), name
            named += 1
    assert named >= 10
