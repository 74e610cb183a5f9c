"""`attnlab --help`, every subcommand's help and argument errors answer before torch loads (issue 16,
item 5); `attnlab --version`. Times are in benchmarks/cli_startup.py, not here."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from typer.testing import CliRunner

from attnlab.cli.main import app

HEAVY = ("torch", "transformers", "matplotlib", "numpy", "attnlab.backends", "attnlab.functional",
         "attnlab.models", "attnlab.inspect", "attnlab.training", "starlette", "sacrebleu")

# In a new process: run the CLI as the console script does, for --help at every level and for a
# few argument errors, then list the heavy modules that got imported.
PROBE = """
import contextlib, io, sys
import typer
from attnlab.cli.main import app

def paths(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from paths(sub, (*path, name))

runs = [[*p, "--help"] for p in paths(typer.main.get_command(app))]
runs += [["--version"], ["plot-mask", "--q-len", "x"], ["walk", "--nope"], ["translate", "hi"],
         ["plot-mask", "--q-len", "x", "--json"], ["nosuch"], []]
codes = []
for args in runs:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            app(args, prog_name="attnlab")
        except SystemExit as e:
            codes.append(e.code)
print(len(runs), sorted(set(codes)))
print(" ".join(m for m in HEAVY if m in sys.modules) or "-")
"""


def test_help_and_argument_errors_import_no_torch():
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}"], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    n, codes = out[0].split(" ", 1)
    assert int(n) > 20 and codes == "[0, 2]"  # every help page and usage error ran to its exit code
    assert out[1] == "-"  # was: torch, numpy, attnlab.backends, attnlab.functional (1.2-1.4 s)


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output == f"attnlab {metadata.version('attnlab')}\n"
