"""``attnlab inspect | compare | heads | tradeoff``: output, files, bad input -> exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app

runner = CliRunner()
A = "The animal didn't cross the street because it was too tired"
B = "The animal didn't cross the street because it was too wide"


def run(*args: str, code: int = 0):
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output
    return res


def test_inspect_default_sentence_json(tmp_path):
    out = tmp_path / "w.json"
    rep = json.loads(run("inspect", "--json", "--export", str(out)).stdout)
    assert rep["model"]["name"] == "all-MiniLM-L6-v2" and rep["model"]["engine"] == "attnlab"
    assert rep["text"] == A and rep["focus"] == {"token": "it", "position": 10}
    assert len(rep["top_attended"]) == 6 and len(rep["top_attended"][0]["heads"]) == 12
    from attnlab.viz import load_json

    data = load_json(out)
    assert data.shape == (6, 12, 15, 15) and data.q_tokens[10] == "it" and data.metadata["text"] == A
    assert rep["rollout"][0]["token"] == "[CLS]"


def test_inspect_text_output_files_and_head(tmp_path):
    html, png = tmp_path / "out" / "i.html", tmp_path / "i.png"
    res = run("inspect", "--html", str(html), "--png", str(png), "--layer", "3", "--head", "1", "--flow")
    assert "Where 'it' (position 10) looks" in res.stdout and "rollout" in res.stdout and "flow" in res.stdout
    assert "layer 3 head 1" in res.stdout  # the terminal heatmap
    assert html.read_text().startswith("<!doctype html") or "<html" in html.read_text()[:200].lower()
    assert png.read_bytes()[:4] == b"\x89PNG"
    grid = tmp_path / "grid.png"
    run("inspect", "a cat sat on the mat", "--png", str(grid), "--view", "model",
        "--html", str(tmp_path / "m.html"))
    assert grid.stat().st_size > 1000


def test_inspect_backend_check():
    rep = json.loads(run("inspect", "--backend", "sdpa", "--json").stdout)
    assert rep["backend_check"]["max_abs_diff_vs_eager"] < 1e-5


def test_inspect_ablate_and_decoder_generation(tiny_gpt2):
    rep = json.loads(run("inspect", "--ablate", "3:1", "--json").stdout)
    assert rep["ablation"]["heads"] == [[3, 1]] and 0.9 < rep["ablation"]["sentence_cosine"] < 1
    rep = json.loads(run("inspect", "The animal didn't cross the", "--model", str(tiny_gpt2),
                         "--generate", "4", "--focus", "animal", "--json").stdout)
    assert len(rep["generated"]["ids"]) == 4 and rep["model"]["kind"] == "decoder"
    assert rep["shape"][2] == rep["shape"][3] == len(rep["tokens"]) == len(rep["special"])


def test_compare_cli_finds_layer3_head1(tmp_path):
    png, html = tmp_path / "c.png", tmp_path / "c.html"
    # `--candidates animal street`, exactly as the README writes it.
    res = run("compare", A, B, "--focus", "it", "--candidates", "animal", "street", "--png", str(png),
              "--html", str(html))
    assert "best: layer 3 head 1 moves 0.449" in res.stdout and "towards 'street'" in res.stdout
    assert png.read_bytes()[:4] == b"\x89PNG" and html.stat().st_size > 10_000
    rep = json.loads(run("compare", A, B, "--candidates", "animal,street", "--json").stdout)
    best = rep["heads"][0]
    assert (best["layer"], best["head"], best["toward"]) == (3, 1, "street")


def test_heads_and_tradeoff_cli():
    rep = json.loads(run("heads", "--json").stdout)
    assert rep["top"]["previous"][0]["layer"] == 0 and rep["top"]["previous"][0]["head"] == 2
    res = run("heads")
    assert "previous" in res.stdout and "pattern label per head" in res.stdout
    rep = json.loads(run("tradeoff", "--widths", "1,4", "--json").stdout)
    assert [r["width"] for r in rep["rows"]] == [None, 1, 4]
    assert rep["rows"][1]["cosine"] < rep["rows"][2]["cosine"] < 1.0
    assert "mass kept" in run("tradeoff", "--widths", "2").stdout


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", ""], "empty"),
    (["inspect", " ".join(["word"] * 600)], "--truncate"),
    (["inspect", "a cat sat", "--focus", "dog"], "the tokens are: '[CLS]', 'a', 'cat', 'sat', '[SEP]'"),
    (["inspect", "--model", "/no/such/folder"], "not found"),
    (["inspect", "--layer", "9", "--head", "0"], "--layer: expected 0..5"),
    (["inspect", "--ablate", "x"], "LAYER:HEAD"),
    (["compare", A, "--focus", "it"], "two texts"),
    (["compare", A, "a dog", "--focus", "it"], "not a token"),
    (["tradeoff", "--widths", "two"], "--widths"),
    (["inspect", "--generate", "3"], "expected a decoder"),
    (["inspect", "--backend", "nope"], "backend: expected one of"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output


def test_truncate_flag_and_model_folder_errors(tmp_path, tiny_bert):
    rep = json.loads(run("inspect", " ".join(["word"] * 600), "--truncate", "--json").stdout)
    assert rep["truncated"] and len(rep["tokens"]) == 512 and rep["total_tokens"] == 602
    (tmp_path / "config.json").write_text("{}")
    res = runner.invoke(app, ["inspect", "--model", str(tmp_path)])
    assert res.exit_code == 2 and "missing: tokenizer.json, model.safetensors" in " ".join(res.output.split())
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_bert.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"garbage")
    res = runner.invoke(app, ["inspect", "hello", "--model", str(bad)])
    assert res.exit_code == 2 and "expected a valid safetensors file" in " ".join(res.output.split())


def test_inspect_own_sentence_without_focus_says_what_to_ask_for():
    """It used to print the tokens and stop, with no hint (newcomer review)."""
    out = run("inspect", "The trophy did not fit in the suitcase because it was too big").output
    assert "tokens: 0:[CLS]" in out and "no --focus: add --focus TOKEN (e.g. --focus it)" in out
    assert "no --focus" not in run("inspect", "The trophy did not fit", "--focus", "fit").output


def test_inspect_layer_alone_is_an_error_not_ignored():
    out = run("inspect", "--layer", "3", code=2).output
    assert "--layer: expected with --head (one head's weights) or --png/--html" in out


def test_a_model_that_is_not_there_names_the_option_and_the_accepted_forms():
    out = run("inspect", "--model", "minilm", code=2).output
    assert "--model: expected a model folder, a .gguf file or 'smollm2'" in out and "'minilm'" in out


def test_load_model_from_python_names_the_parameter_not_the_option():
    from attnlab.models.loading import load_model

    with pytest.raises(FileNotFoundError, match=r"^model: expected a model folder, a \.gguf file"):
        load_model("minilm")
