"""User-facing text never says "the seeds": the team's name for its source articles means nothing
to a user, who gets the example or the article named instead (issue 16). Random seeds (RNG) are
another meaning and stay."""

from __future__ import annotations

import re
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[2]
# The source-article meaning: "the seeds", "seeds'", "the seed's", "one seed", "seeds/003".
ARTICLE_SEED = re.compile(r"\bthe seeds\b|\bseeds'|\bseed's\b|\bone seed\b|\bseeds/\d|\bas in the seed\b",
                          re.IGNORECASE)


def _hits(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if ARTICLE_SEED.search(line)]


def test_docs_and_pages_name_the_article_not_the_seeds():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "src/attnlab/inspect/server/static").iterdir()),
             *sorted((ROOT / "src/attnlab/viz/html/assets").iterdir())]
    found = {str(f.relative_to(ROOT)): h for f in files if f.is_file()
             if (h := _hits(f.read_text(encoding="utf-8")))}
    assert found == {}


def _command_paths(cmd, ctx, path: tuple[str, ...] = ()):
    yield path
    if hasattr(cmd, "list_commands"):  # a group (typer vendors its own click: no isinstance)
        for name in cmd.list_commands(ctx):
            yield from _command_paths(cmd.get_command(ctx, name), ctx, (*path, name))


def test_cli_help_names_the_article_not_the_seeds():
    from typer.testing import CliRunner

    from attnlab.cli.main import app

    root = typer.main.get_command(app)
    paths = list(_command_paths(root, root.make_context("attnlab", [], resilient_parsing=True)))
    assert len(paths) > 15 and ("inspect",) in paths and ("prompt-effect",) in paths
    runner = CliRunner()
    found = {}
    for path in paths:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        if hits := _hits(res.output):
            found[" ".join(path)] = hits
    assert found == {}


def test_walk_output_says_what_the_article_prints():
    from attnlab.explain import EXAMPLES
    from attnlab.explain.walkthrough import walk_example

    w = walk_example(EXAMPLES["cat-sat"])
    assert "seed" not in w.checks[0].to_dict() and w.checks[0].to_dict()["printed"] == [0.61, 0.89, 0.77]
    for ex in EXAMPLES.values():
        assert not _hits(ex.source) and not _hits(ex.story), ex.name
