"""`attnlab train --arch transformer` through the existing machinery: config keys and errors,
the Noam schedule, translate / evaluate / --heads, exact resume after a kill (dropout on)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from attnlab.training.checkpoint import FAULT_ENV
from attnlab.training.run import open_run
from attnlab.training.run_config import apply_overrides, load_config, preset
from attnlab.training.schedule import make_scheduler

TINY = ["train", "--preset", "transformer-tiny", "--json"]


def _invoke(s2s, *args: str):
    return CliRunner().invoke(s2s.cli_app(), list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, s2s):
    """One tiny Transformer shared by the read-only tests."""
    out = tmp_path_factory.mktemp("tf") / "model"
    res = _invoke(s2s, *TINY, "--set", "train.threads=1", "--out", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["steps"] == 40 and {"bleu", "chrf", "exact", "n"} <= set(report["test"])
    return out


def test_the_run_is_a_transformer_with_the_noam_schedule(trained):
    run = json.loads((trained / "run.json").read_text())["config"]
    assert run["model"]["arch"] == "transformer" and run["model"]["d_model"] == 32
    assert json.loads((trained / "model.json").read_text())["format"] == "attnlab.transformer/1"
    history = json.loads((trained / "results.json").read_text())["history"]
    lr, warmup = run["train"]["lr"], run["train"]["warmup"]
    for row in history:  # validations after `step` optimizer steps: lr · sqrt(warmup / (step + 1))
        assert row["lr"] == pytest.approx(lr * math.sqrt(warmup / (row["step"] + 1)), rel=1e-9)


def test_noam_warms_up_then_decays_as_the_inverse_square_root():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make_scheduler(opt, "noam", warmup=4)
    rates = []
    for _ in range(12):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # steps 1..4: linear
    assert rates[3] == max(rates)  # the peak is train.lr, at step = warmup
    assert rates[8] == pytest.approx(1e-3 * math.sqrt(4 / 9))  # then lr · sqrt(warmup / step)
    assert json.loads(json.dumps(sched.state_dict()))["lr_lambdas"] == [{"warmup": 4}]


def test_translate_json_alignment_and_every_head(trained, s2s, tmp_path):
    res = _invoke(s2s, "translate", "--model", str(trained), "forty-two", "--json",
                  "--heads", str(tmp_path / "heads"))
    assert res.exit_code == 0, res.output
    t = json.loads(res.stdout)
    assert t["source_tokens"] == ["forty", "-", "two"]
    steps = len(t["target_labels"])
    assert len(t["alignment"]) == steps and all(len(row) == 3 for row in t["alignment"])
    a = t["attention"]
    assert torch.tensor(a["encoder_self"]).shape == (1, 4, 3, 3)  # (layers, heads, Ls, Ls)
    assert torch.tensor(a["decoder_self"]).shape == (1, 4, steps, steps)
    assert torch.tensor(a["cross"]).shape == (1, 4, steps, 3)
    assert a["decoder_tokens"][0] == "<s>" and a["target_labels"] == t["target_labels"]
    torch.testing.assert_close(torch.tensor(a["cross"])[-1].mean(0), torch.tensor(t["alignment"]),
                               atol=1e-5, rtol=1e-4)
    names = sorted(p.name for p in (tmp_path / "heads").iterdir())
    assert names == sorted(f"{s}.{e}" for s in ("cross", "decoder_self", "encoder_self")
                           for e in ("png", "html"))
    assert (tmp_path / "heads" / "cross.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_translate_text_and_evaluate(trained, s2s):
    res = _invoke(s2s, "translate", "--model", str(trained), "seven", "--beam", "3")
    assert res.exit_code == 0, res.output
    assert "alignment (transformer: layer 0 cross-attention, mean of 4 heads)" in res.output
    res = _invoke(s2s, "evaluate", "--model", str(trained), "--split", "valid", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["n"] == 20 and 0 <= d["bleu"] <= 100


def test_heads_needs_a_transformer(s2s, tmp_path):
    out = tmp_path / "rnn"
    res = _invoke(s2s, "train", "--preset", "tiny", "--json", "--set", "train.max_steps=2",
                  "--set", "train.eval_every=2", "--out", str(out))
    assert res.exit_code == 0, res.output
    res = _invoke(s2s, "translate", "--model", str(out), "seven", "--heads", str(tmp_path / "h"))
    assert res.exit_code == 2
    assert "attention: per-head maps exist for model.arch=transformer, got a model.arch=rnn" in res.output


def test_resume_refuses_another_architecture(trained):
    with pytest.raises(ValueError, match=r"differs from the saved run in \['model.arch'"):
        open_run(trained, preset("tiny"))


@pytest.mark.parametrize(("sets", "message"), [
    (["model.d_model=64"], "model.d_model does not apply to model.arch=rnn; it is a key of "
                           "model.arch=transformer"),
    (["model.arch=transformer", "model.attention=bahdanau"],
     "model.attention does not apply to model.arch=transformer"),
    (["model.arch=gpt"], "model.arch: expected one of rnn, transformer, got 'gpt'"),
    (["model.arch=transformer", "model.positions=alibi"], "model.positions: expected one of"),
    (["model.arch=transformer", "model.norm=mid"], "model.norm: expected one of post, pre"),
    (["train.schedule=cosine"], "train.schedule: expected one of plateau, noam, got 'cosine'"),
    (["train.warmup=0"], "train.warmup: expected >= 1 steps, got 0"),
    (["model.arch=transformer", "model.hidden=64"], "model.hidden does not apply"),
])
def test_config_errors_name_the_key(sets, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(preset("numbers"), sets)


def test_arch_is_applied_first_and_resets_the_model_section(tmp_path):
    cfg = apply_overrides(preset("numbers"), ["model.d_model=64", "model.arch=transformer"])
    assert cfg.arch == "transformer" and cfg.model.d_model == 64 and cfg.model.heads == 4
    assert cfg.data.max_items == 3  # the preset's data and train are kept
    path = tmp_path / "c.toml"
    path.write_text('preset = "tiny"\n[model]\nheads = 2\narch = "transformer"\n')
    assert load_config(path).model.heads == 2
    back = type(cfg).from_dict(cfg.to_dict())
    assert back == cfg and back.to_dict()["model"]["arch"] == "transformer"


def test_cli_arch_option_and_unknown_key(s2s, tmp_path):
    res = _invoke(s2s, "train", "--preset", "tiny", "--arch", "transformer", "--set",
                  "model.hiden=3", "--out", str(tmp_path / "x"))
    assert res.exit_code == 2
    assert "unknown config key 'model.hiden'" in res.output and "model.heads" in res.output
    assert not (tmp_path / "x").exists()


def _bytes(folder):
    return {p.name: p.read_bytes() for p in (folder / "checkpoint").iterdir()}


def test_kill_then_resume_is_bitwise_identical_with_dropout(tmp_path, s2s):
    # transformer-tiny: dropout 0.1, noam; 40 steps, checkpoints every 10, validations at 20, 40
    args = (*TINY, "--set", "train.threads=1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = s2s.run_cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    r = s2s.run_cli(*args, "--out", str(run), env={FAULT_ENV: "step:35"})
    assert r.returncode == -9  # SIGKILLed between the checkpoints of steps 30 and 40
    assert json.loads((run / "checkpoint" / "state.json").read_text())["progress"]["step"] == 30
    r = s2s.run_cli(*args, "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert _bytes(run).keys() == _bytes(ref).keys()
    for name in ("weights-000000040.safetensors", "optim-000000040.safetensors"):
        assert _bytes(run)[name] == _bytes(ref)[name]
    drop = {"train_seconds", "tokens_per_second"}
    a, b = (json.loads((f / "results.json").read_text()) for f in (run, ref))
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def _inspect(*args: str):
    import typer

    from attnlab.cli import model_cmds

    app = typer.Typer(pretty_exceptions_enable=False)
    model_cmds.register(app)
    return CliRunner().invoke(app, ["inspect", *args])


def test_inspect_a_trained_translator(trained, tmp_path):
    res = _inspect("eighty-seven", "--model", str(trained), "--json", "--png", str(tmp_path / "p"))
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["model"]["arch"] == "transformer" and rep["source_tokens"] == ["eighty", "-", "seven"]
    assert [s["site"] for s in rep["sites"]] == ["encoder.0.self", "decoder.0.self", "decoder.0.cross"]
    for site in rep["sites"]:
        assert len(site["heads"]) == 4
        for h in site["heads"]:
            assert 0 <= h["entropy"] <= 1 and ("pattern" in h) == (site["kind"] == "self")
    cross = rep["sites"][2]["heads"][0]
    assert [q for q, _ in cross["top"]] == rep["target_labels"]
    assert {k for _, k in cross["top"]} <= set(rep["source_tokens"])
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "cross.png", "decoder_self.png", "encoder_self.png"]
    res = _inspect("eighty-seven", "--model", str(trained))
    assert res.exit_code == 0 and "decoder.0.cross" in res.output and "layers x 4 heads" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["--flow"], "--flow: not available for a translator folder"),
    ([], "TEXT: expected a source sentence"),
])
def test_inspect_translator_errors(trained, args, message):
    text = ["seven"] if args else []
    res = _inspect(*text, "--model", str(trained), *args)
    assert res.exit_code == 2 and message in res.output
