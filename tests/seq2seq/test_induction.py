"""attnlab experiment induction: the data, the scores, determinism and the command's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from attnlab.training.experiments.induction import InductionConfig, head_scores, run_induction, sample_batch

TINY = dict(vocab=16, seq_len=24, min_block=3, max_block=8, d_model=16, heads=2, batch=8, steps=6,
            eval_every=3, eval_batch=8)


def test_scored_targets_are_predictable_from_the_first_copy():
    cfg = InductionConfig()
    ids, scored = sample_batch(cfg, 64, torch.Generator().manual_seed(0))
    assert ids.shape == (64, cfg.seq_len) and int(ids.max()) < cfg.vocab
    for i, t in scored.nonzero().tolist():  # some earlier j: same token, same successor
        row = ids[i]
        assert any(row[j] == row[t] and row[j + 1] == row[t + 1] for j in range(t))
    per_row = scored.sum(1)
    assert int(per_row.min()) >= cfg.min_block - 1 and int(per_row.max()) <= cfg.max_block - 1
    assert len(set(per_row.tolist())) > 3  # block lengths vary: no fixed offset to cheat with


def test_head_scores_are_attention_masses():
    from attnlab.models.transformer import LMConfig, TransformerLM

    cfg = InductionConfig(**TINY)
    model = TransformerLM(LMConfig(vocab_size=16, d_model=16, heads=2, layers=2, max_len=24,
                                   attention_only=True))
    s = head_scores(model, cfg, torch.Generator().manual_seed(0))
    for k in ("induction", "previous_token"):
        assert s[k].shape == (2, 2) and bool(((s[k] >= 0) & (s[k] <= 1)).all())


def test_the_experiment_is_deterministic_for_a_seed():
    a, b = (run_induction(InductionConfig(**TINY)) for _ in range(2))
    for r in (a, b):
        for c in r["curves"].values():
            c.pop("seconds")
        for s in r["summary"]:
            s.pop("seconds")
    assert a == b


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="max_block"):
        InductionConfig(seq_len=20, max_block=12)
    with pytest.raises(ValueError, match="steps: expected a positive int"):
        InductionConfig(steps=0)


def test_command_writes_json_markdown_and_png(tmp_path):
    from attnlab.cli.main import app

    res = CliRunner().invoke(app, ["experiment", "induction", "--quick", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [s["layers"] for s in out["summary"]] == [1, 2]
    assert (tmp_path / "induction.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2-layer attention-only |" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["config"]["steps"] == 40


def test_seeds_runs_each_seed_and_tabulates_them(tmp_path):
    from attnlab.cli.main import app

    res = CliRunner().invoke(app, ["experiment", "induction", "--quick", "--seeds", "0, 3",
                                   "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    seeds = json.loads(res.output)["seeds"]
    assert sorted(seeds) == ["0", "3"] and [s["layers"] for s in seeds["3"]] == [1, 2]
    for s in (0, 3):
        saved = json.loads((tmp_path / f"seed-{s}" / "results.json").read_text())
        assert saved["config"]["seed"] == s and (tmp_path / f"seed-{s}" / "induction.png").is_file()
    assert json.loads((tmp_path / "seeds.json").read_text()) == seeds
    table = (tmp_path / "seeds.md").read_text()
    assert "| 3 |" in table and "of 2 seeds reach 2-layer repeat accuracy > 0.8" in table
    # the seed-0 run is the plain command's run: same numbers
    one = CliRunner().invoke(app, ["experiment", "induction", "--quick", "--out", str(tmp_path / "one"),
                                   "--json"])
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in json.loads(one.output)["summary"]]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in seeds["0"]]


@pytest.mark.parametrize(("args", "error"), [
    (["--seeds", "0,x"], "--seeds: expected distinct integers >= 0"),
    (["--seeds", "1,1"], "--seeds: expected distinct integers >= 0"),
    (["--seeds", "1", "--seed", "2"], "--seeds: expected --seed or --seeds, got both"),
    (["--seeds", "1", "--seed", "0"], "--seeds: expected --seed or --seeds, got both"),  # 0 was missed
])
def test_bad_seeds_are_one_line_errors(tmp_path, args, error):
    from attnlab.cli.main import app

    res = CliRunner().invoke(app, ["experiment", "induction", "--quick", "--out", str(tmp_path), *args])
    assert res.exit_code == 2 and error in res.output, res.output
