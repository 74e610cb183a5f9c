"""docs/distributed.md: its example runs under torchrun as written and gives what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ring_demo_runs_under_torchrun(tmp_path):
    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# ring_demo\.py.*?)```", text, re.S)
    assert code is not None
    assert "torchrun --standalone --nproc-per-node 2 ring_demo.py" in text
    (tmp_path / "ring_demo.py").write_text(code.group(1))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "ring_demo.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(re.findall(r"rank (\d): max error (\S+), sent (\d+) KiB over hops (\[.*\])", proc.stdout))
    assert [r for r, *_ in lines] == ["0", "1"], proc.stdout
    for _, err, kib, hops in lines:
        assert float(err) < 1e-5
        assert hops == "[0, 1]" and int(kib) == 1024  # one shard: K and V, 4 heads x 512 rows x 64 x 4 B
