"""Issue 12: `attnlab experiment architectures` and `attnlab experiment heads` on tiny settings."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from attnlab.models.transformer.heads import ablation_masks, attention_sites
from attnlab.models.translators import load_translator
from attnlab.training.experiments.architectures import CLOCK, reach, run_architectures
from attnlab.training.experiments.common import deterministic_view
from attnlab.training.experiments.heads import ablate, bleu, importance, run_heads
from attnlab.training.run import open_run


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    return run_heads(out, quick=True, threads=1, sentences=12)


def test_architectures_outputs_and_determinism(tmp_path):
    a = run_architectures(tmp_path / "a", quick=True, threads=1)
    b = run_architectures(tmp_path / "b", quick=True, threads=1)
    for name in ("results.json", "table.md", "bleu_vs_length.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert [s["model"] for s in a.summary] == ["transformer", "bahdanau", "luong-general"]
    assert all(s["parameters"] > 0 and s["tokens_per_second"] > 0 for s in a.summary)
    assert {r["model"] for r in a.rows} == {"transformer", "bahdanau", "luong-general"}
    assert deterministic_view(a.summary, CLOCK) == deterministic_view(b.summary, CLOCK)
    assert a.rows == b.rows  # BLEU by length bucket: the same table twice
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["threads"] == 1 and "throughput_ratio_transformer_vs_bahdanau" in saved
    assert "Throughput ratio Transformer / Bahdanau" in (tmp_path / "a" / "table.md").read_text()


def test_architectures_reuses_finished_runs(tmp_path):
    first = run_architectures(tmp_path, quick=True, threads=1, models=("bahdanau",))
    again = run_architectures(tmp_path, quick=True, threads=1, models=("bahdanau",))
    assert first.summary == again.summary  # read back, not retrained (same clock numbers)
    with pytest.raises(ValueError, match="--out"):
        run_architectures(tmp_path, quick=True, threads=1, models=("bahdanau",),
                          overrides=["model.hidden=24"])


def test_reach_reads_the_history():
    hist = [{"step": 5, "valid_bleu": 40.0}, {"step": 10, "valid_bleu": 91.0},
            {"step": 15, "valid_bleu": 95.0}]
    assert reach(hist, 90) == 10
    assert reach(hist, 99) is None
    assert reach([{"step": 1, "valid_bleu": None}], 0) is None


def test_unknown_model_names_the_option(tmp_path):
    with pytest.raises(ValueError, match="models"):
        run_architectures(tmp_path, quick=True, models=("gru",))


def test_heads_outputs(heads_run):
    out = heads_run.folder
    for name in ("results.json", "table.md", "pruning.png", "heads_encoder-self.png",
                 "heads_decoder-self.png", "heads_decoder-cross.png"):
        assert (out / name).stat().st_size > 0
    sites = {r["site"] for r in heads_run.ablation}
    assert sites == {"encoder.0.self", "decoder.0.self", "decoder.0.cross"}
    assert len(heads_run.ablation) == 12  # 3 sites x 4 heads
    kept = [p["kept"] for p in heads_run.pruning]
    assert kept == list(range(12, -1, -1))
    assert heads_run.pruning[0]["bleu"] == heads_run.baseline_bleu


def test_heads_deterministic_with_given_model(heads_run, tmp_path):
    again = run_heads(tmp_path, model_dir=heads_run.folder / "model", threads=1, sentences=12)
    assert again.ablation == heads_run.ablation
    assert again.pruning == heads_run.pruning


def test_ablating_an_already_masked_head_changes_nothing(heads_run):
    folder = heads_run.folder / "model"
    model, run = load_translator(folder), open_run(folder)
    model.eval()
    pairs = run.splits.test[:12]
    site = attention_sites(model)[-1].name
    base = ablation_masks(model, [(site, 1)])
    full, rows = ablate(model, pairs, run.codec, base=base)
    same = [r for r in rows if r["site"] == site and r["head"] == 1]
    assert same[0]["drop"] == 0 and same[0]["bleu"] == full
    assert full == bleu(model, pairs, run.codec, base)


def test_importance_is_normalised_and_leaves_parameters_alone(heads_run):
    folder = heads_run.folder / "model"
    model, run = load_translator(folder), open_run(folder)
    scores = importance(model, run.splits.valid, run.codec)
    assert set(scores) == {s.name for s in attention_sites(model)}
    for v in scores.values():
        assert len(v) == 4 and abs(torch.tensor(v).norm().item() - 1) < 1e-5
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_heads_cli_json_and_errors(heads_run, s2s, tmp_path):
    runner = CliRunner()
    res = runner.invoke(s2s.cli_app(), ["experiment", "heads", "--out", str(tmp_path / "h"),
                                        "--model", str(heads_run.folder / "model"),
                                        "--sentences", "8", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["ablation"]) == 12
    bad = runner.invoke(s2s.cli_app(), ["experiment", "heads", "--out", str(tmp_path / "x"),
                                        "--model", str(tmp_path / "nothing"), "--json"])
    assert bad.exit_code == 2 and "--model" in bad.stdout
    bad = runner.invoke(s2s.cli_app(), ["experiment", "architectures", "--out",
                                        str(tmp_path / "y"), "--threads", "-1", "--json"])
    assert bad.exit_code == 2 and "--threads" in bad.stdout


def test_architectures_cli_json(s2s, tmp_path):
    res = CliRunner().invoke(s2s.cli_app(), ["experiment", "architectures", "--quick", "--out",
                                             str(tmp_path), "--threads", "1", "--json",
                                             "--set", "model.hidden=12"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert [s["model"] for s in got["summary"]] == ["transformer", "bahdanau", "luong-general"]
    assert "throughput_ratio_transformer_vs_bahdanau" in got
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["configs"]["bahdanau"]["model"]["hidden"] == 12  # a model.* key where it applies
    assert saved["configs"]["transformer"]["model"]["arch"] == "transformer"
