"""Captures as files: Capture.save / load (safetensors + JSON, never pickle, atomic writes),
`attnlab generate --save-capture`, `attnlab render F` — on a tiny random Llama."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.inspect.llm.capture_file import Capture
from attnlab.inspect.llm.generation import generate_text
from attnlab.models import load_model

PROMPT = "The animal didn't cross the street because it was too"


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load_model(tiny_llama)


@pytest.fixture(scope="module")
def gen(lm):
    return generate_text(lm, PROMPT, max_new_tokens=6, capture=True, heads=[0, 3])


def test_save_load_round_trips_bit_exactly_and_rows_are_the_recorders(gen, lm, tmp_path) -> None:
    cap = Capture.from_generation(gen)
    rec = gen.recorder
    assert cap.positions == len(rec) and cap.weights.dtype == torch.float16
    for p in (0, len(gen.prompt) - 1, len(rec) - 1):
        assert torch.equal(cap.row(p), rec.row(p))
    path = cap.save(tmp_path / "cap.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["cap.safetensors"]  # no temporary file left
    back = Capture.load(path, model=lm.name)
    assert torch.equal(back.weights, cap.weights)  # bit for bit (same dtype, same bytes)
    assert back.metadata() == cap.metadata()
    assert back.labels == gen.labels and back.prompt_len == len(gen.prompt)
    assert back.layers == rec.layers and back.heads == [0, 3] and back.kv_group == rec.kv_group
    from attnlab import __version__

    assert back.version == __version__
    # the views of a loaded capture are the views of the generation
    assert back.page() == Capture.from_generation(gen).page()
    torch.testing.assert_close(back.answer_rows(layer=1, head=3)[-1],
                               rec.row(len(rec) - 1)[1, 1].float(), atol=0, rtol=0)


def test_a_damaged_truncated_foreign_or_pickled_file_is_a_clear_error(gen, tmp_path) -> None:
    good = Capture.from_generation(gen).save(tmp_path / "good.safetensors")
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) - 10],
        "header": data[:8] + b"{not json" + data[17:],
        "empty": b"",
        "pickle": b"\x80\x04\x95" + b"\x00" * 64,  # what torch.save writes starts like this
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=r"^path: expected an attnlab capture .*damaged or truncated"):
            Capture.load(p)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"without attnlab's capture metadata"):
        Capture.load(tmp_path / "other.safetensors")
    # metadata that disagrees with the tensor
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["attnlab.capture"])
    meta["positions"] += 1
    header["__metadata__"]["attnlab.capture"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "lies.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(ValueError, match=r"inconsistent metadata \(positions: expected"):
        Capture.load(tmp_path / "lies.safetensors")
    with pytest.raises(FileNotFoundError, match=r"^path: expected an existing capture file"):
        Capture.load(tmp_path / "missing.safetensors")


def test_a_capture_from_another_model_is_refused(gen, tmp_path) -> None:
    p = Capture.from_generation(gen).save(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match=r"^model: expected the model this capture was made with "
                                         r".*got 'smollm2' \('SmolLM2-135M-Instruct'\)"):
        Capture.load(p, model="smollm2")


def test_save_is_atomic_an_existing_file_survives_a_failed_write(gen, tmp_path, monkeypatch) -> None:
    cap = Capture.from_generation(gen)
    p = cap.save(tmp_path / "c.safetensors")
    before = p.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        cap.save(p)
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["c.safetensors"]
    with pytest.raises(ValueError, match=r"^path: expected a file name ending in \.safetensors"):
        cap.save(tmp_path / "c.pt")


def test_cli_generate_save_capture_then_render(tiny_llama, tmp_path) -> None:
    runner = CliRunner()
    cap = tmp_path / "out" / "cap.safetensors"
    r = runner.invoke(app, ["generate", PROMPT, "--model", str(tiny_llama), "--raw", "--max-new-tokens",
                            "5", "--save-capture", str(cap), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["save_capture"] == str(cap) and cap.is_file()
    html, png = tmp_path / "g.html", tmp_path / "g.png"
    r = runner.invoke(app, ["render", str(cap), "--html", str(html), "--png", str(png), "--layer", "1",
                            "--head", "2", "--model", str(tiny_llama), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["written"] == [str(html), str(png)] and out["positions"] == rep["capture"]["rows"]
    assert "attention while generating" in html.read_text() and png.read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(app, ["render", str(cap)])
    assert r.exit_code == 0 and "wrote" not in r.output and "positions" in r.output


def test_cli_bad_captures_are_one_line_with_exit_code_2(tiny_llama, gen, tmp_path) -> None:
    runner = CliRunner()
    good = Capture.from_generation(gen).save(tmp_path / "c.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:100])
    cases = [
        (["render", str(bad)], "FILE: expected an attnlab capture"),
        (["render", str(good), "--model", "smollm2"], "--model: expected the model this capture was made"),
        (["render", str(good), "--layer", "9"], "--layer: expected one of the recorded layers"),
        (["generate", "hi", "--model", str(tiny_llama), "--save-capture", "x.pt"],
         "--save-capture: expected a file name ending in .safetensors"),
    ]
    for args, want in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {want}"), r.output


def test_every_head_of_one_token_as_small_multiples(gen, tiny_llama, tmp_path) -> None:
    from attnlab import viz

    cap = Capture.from_generation(gen)
    p = len(gen.prompt) - 1  # the row that produced the first answer token
    fig = cap.token_grid(p)
    assert isinstance(fig, viz.ViewFigure) and fig._repr_png_()[:4] == b"\x89PNG"
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == len(cap.layers) * len(cap.heads)  # one label per (layer, head)
    row = cap.row(p).float()
    top = cap.labels[int(row[0, 0].argmax())].strip()
    assert texts[0].startswith(top[:9]) and texts[0].endswith(f"{float(row[0, 0].max()):.2f}")
    path = Capture.from_generation(gen).save(tmp_path / "c.safetensors")
    runner = CliRunner()
    png = tmp_path / "grid.png"
    r = runner.invoke(app, ["render", str(path), "--token", str(p), "--png", str(png), "--json"])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    for args, want in ([["--token", "999", "--png", str(png)], "--token: expected a recorded position"],
                       [["--token", "1"], "--token: expected --png or --svg"]):
        r = runner.invoke(app, ["render", str(path), *args])
        assert r.exit_code == 2 and r.output.startswith(f"error: {want}"), r.output
    with pytest.raises(ValueError, match=r"^k_tokens: expected 3 labels"):
        viz.token_heads_grid(row[:, :, :3].numpy(), ["a", "b"])


def _synthetic(prompt: list[str], answer: list[str], seed: int) -> Capture:
    """A capture of 2 layers x 3 heads whose rows are random distributions."""
    g = torch.Generator().manual_seed(seed)
    labels = prompt + answer
    n = len(labels) - 1  # the last token has no row
    rows = [torch.rand(2, 3, p + 1, generator=g) + 0.01 for p in range(n)]
    rows = [r / r.sum(-1, keepdim=True) for r in rows]  # (2, 3, p + 1), each row sums to 1
    packed = torch.cat(rows, dim=-1).half()  # (2, 3, n(n+1)/2)
    return Capture(packed, labels, len(prompt), "m", "".join(prompt), [0, 5], [0, 1, 2], [0, 0, 1], "t")


def test_diff_page_of_two_captures_of_the_same_answer(tmp_path) -> None:
    answer = [" red", ",", " blue", ".", "<end>"]
    a = _synthetic(["Name", " colours", ":"], answer, 0)
    b = _synthetic(["List", " three", " colours", " please", ":"], answer, 1)
    blk, labels = a.answer_block()
    assert blk.shape == (2, 3, 5, 5) and labels == ["<prompt>", " red", ",", " blue", "."]
    torch.testing.assert_close(blk.sum(-1), torch.ones(2, 3, 5), atol=2e-3, rtol=0)  # rows still sum to 1
    p = a.prompt_len + 1  # answer row 2: the prompt's mass, then the answer keys
    torch.testing.assert_close(blk[1, 2, 2, 0], a.row(p)[1, 2, : a.prompt_len].float().sum())
    assert torch.equal(blk[..., 0, 1:], torch.zeros(2, 3, 4))
    page = a.compare(b, names=("short", "long"))
    assert "the same answer after two prompts" in page and page.view == "compare"
    with pytest.raises(ValueError, match=r"^other: expected a capture of the same answer tokens"):
        a.compare(_synthetic(["x"], [" green", "."], 2))
    # the CLI
    fa, fb = a.save(tmp_path / "a.safetensors"), b.save(tmp_path / "b.safetensors")
    runner = CliRunner()
    html = tmp_path / "diff.html"
    r = runner.invoke(app, ["render", str(fa), "--compare", str(fb), "--html", str(html), "--layers", "5"])
    assert r.exit_code == 0, r.output
    text = html.read_text()
    assert "the same answer after two prompts, a - b" in text and '"layers":[5]' in text
    r = runner.invoke(app, ["render", str(fa), "--compare", str(fb)])
    assert r.exit_code == 2 and r.output.startswith("error: --compare: expected --html"), r.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    r = runner.invoke(app, ["render", str(fa), "--compare", str(bad), "--html", str(html)])
    assert r.exit_code == 2 and r.output.startswith("error: --compare: expected an attnlab capture"), r.output
    r = runner.invoke(app, ["render", str(fa), "--compare", str(fb), "--html", str(html), "--layers", "3"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: --layers: expected some of the recorded"), r.output


def test_a_long_generation_png_is_panels_with_every_token_labelled(tmp_path) -> None:
    from attnlab.inspect.llm import long_generation_png as L
    from attnlab.inspect.llm.llm_views import generation_png

    answer = [f" w{i}" for i in range(130)]
    cap = _synthetic(["p0", "p1", "p2"], answer, 3)
    w = cap.answer_rows().numpy()  # (T, N)
    parts = L.panels(w, cap.labels, cap.prompt_len)
    assert [m.shape[0] for m, _, _ in parts] == [48, 48, 34]  # T = 130 rows
    for m, rows, cols in parts:
        assert m.shape == (len(rows), len(cols)) and len(cols) <= 64  # every column labelled
        np.testing.assert_allclose(m.sum(1), 1.0, atol=2e-3)  # summaries keep each row whole
    assert parts[-1][2][:2] == ["<prompt>", "<earlier>"] and parts[-1][2][-1] == cap.labels[-2]
    assert parts[-1][1][-1] == cap.labels[-1]  # the last row produced the last token
    out = generation_png(cap, tmp_path / "long.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
