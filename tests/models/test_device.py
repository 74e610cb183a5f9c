"""``device=`` / ``--device``: a model loads on the CPU and moves to the device asked for; every
tensor the generation, capture and intervention paths make is made on the model's device.

This machine (and CI) has no GPU: the CUDA branches are checked with torch.cuda.is_available
patched, and the "made on the model's device" rule by running the CPU model with meta as torch's
default device, so that any tensor made without an explicit device lands on meta and the first
op mixing it with the model's CPU tensors fails. The CUDA path itself has not run on a GPU.
"""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab import masks
from attnlab.arguments import ArgumentError
from attnlab.backends.registry import AttentionCall, choose_backend, get_backend
from attnlab.backends.tiled.backend import attention_backward, run_tiled
from attnlab.functional.mask_input import normalize_mask
from attnlab.models import load_model
from attnlab.models.device import resolve_device


@pytest.mark.parametrize("given, message", [
    ("tpu", "device: expected 'cpu', 'cuda' or 'cuda:N' (or a torch.device of those: attnlab runs models "
            "on the CPU or an NVIDIA GPU), got 'tpu'"),
    (3, "got 3 (int)"),
    (torch.device("meta"), "got 'meta'"),
    ("cuda", "device: 'cuda' requested but torch.cuda.is_available() is False"),
    ("cuda:0", "use device='cpu'"),
    ("cuda:01", "got 'cuda:01'"),  # torch's parser refuses it with a RuntimeError: ours names the argument
])
def test_device_errors_name_the_argument_what_was_expected_and_what_was_given(given, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ArgumentError, match=r"^device: ") as e:
        resolve_device(given)
    assert message in str(e.value)
    assert e.value.name == "device"


def test_a_cpu_build_says_so_and_a_gpu_index_past_the_visible_ones_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ArgumentError, match=r"\(this torch is a CPU build\); use device='cpu'"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(ArgumentError, match=r"\(no GPU visible\)"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device(" CUDA:0 ") == torch.device("cuda:0")
    with pytest.raises(ArgumentError, match=r"'cuda:1' requested but torch sees 1 GPU\(s\) "
                                            r"\(cuda:0\.\.cuda:0\)"):
        resolve_device("cuda:1")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_weights_off_the_cpu_are_refused_before_anything_loads_or_moves(
        weights, tiny_llama, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    moved: list[object] = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    import attnlab.models.loading as loading

    monkeypatch.setattr(loading, "read_safetensors", lambda *a: pytest.fail("loaded before refusing"))
    with pytest.raises(ArgumentError, match=rf"^device: expected 'cpu' with weights '{weights}' \(int8/int4 "
                                            r"weights run on torch's CPU kernels\), got 'cuda'; use "
                                            r"device='cpu' or weights='float32'$"):
        load_model(tiny_llama, weights=weights, device="cuda")
    assert moved == []


def test_a_cuda_model_is_loaded_on_the_cpu_then_moved(tiny_llama, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    moved: list[tuple[object, ...]] = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    lm = load_model(tiny_llama, device="cuda:0")
    assert moved == [(torch.device("cuda:0"),)]  # the whole model, once, after loading
    assert lm.device == torch.device("cpu")  # (the patched .to moved nothing)


def test_device_cpu_is_the_default(tiny_llama):
    a, b = load_model(tiny_llama), load_model(tiny_llama, device=torch.device("cpu"))
    assert a.device == b.device == a.model.device == torch.device("cpu")
    assert b.describe()["device"] == "cpu"
    ids = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(a.model(ids).logits, b.model(ids).logits)


def _call(dev: str, L: int = 1024) -> tuple[torch.Tensor, AttentionCall]:
    q = torch.zeros(1, 2, L, 16, device=dev)  # (B, H, L, Dh)
    m = masks.sliding_window(63, 0)  # a pattern auto gives tiled on the CPU at this length
    nm = normalize_mask(m, (1, 2, L, L), dtype=q.dtype, device=q.device)
    return q, AttentionCall(q, q, q, nm, None, 0.25, 0.0, False, False)


def test_tiled_is_cpu_only_and_auto_never_picks_it_off_the_cpu():
    """The meta device stands in for a GPU: tensors that are not on the CPU."""
    assert choose_backend(_call("cpu")[1])[0].name == "tiled"
    q, call = _call("meta")
    assert choose_backend(call)[0].name != "tiled"
    assert not get_backend("tiled").capabilities.non_cpu
    assert get_backend("sdpa").capabilities.non_cpu and get_backend("eager").capabilities.non_cpu
    with pytest.raises(ValueError, match=r"^backend: 'tiled' is CPU-only \(got tensors on meta\); use "
                                         r"backend='auto'"):
        attnlab.attention(q, q, q, mask=masks.sliding_window(63, 0), backend="tiled")
    said = (r"^backend: 'tiled' is CPU-only \(got tensors on meta\); use backend='auto' \(SDPA there\) "
            r"or 'sdpa' / 'eager'$")
    with pytest.raises(ValueError, match=said):
        run_tiled(call)
    with pytest.raises(ValueError, match=said):
        attention_backward(q, q, q, q, q[..., 0], q, scale=0.25)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from .gemma3_builders import make_gemma3

    return make_gemma3(tmp_path_factory.mktemp("gemma3-device"), seed=1)  # local and global layers


def _runs(lm) -> dict[str, object]:
    """Each generation / capture / intervention path once, as plain Python values."""
    from attnlab.inspect.llm.activation_patching import activation_patching, logit_diff
    from attnlab.inspect.llm.batch_generation import generate_batch
    from attnlab.inspect.llm.batch_rows import Row, generate_rows, logit_diff_rows, score_rows
    from attnlab.inspect.llm.generation import Sampling, generate_text
    from attnlab.inspect.llm.generation_capture import generate
    from attnlab.inspect.llm.lens import logit_lens
    from attnlab.inspect.llm.local_global import local_global_experiment
    from attnlab.inspect.llm.prompt_effect import prompt_effect
    from attnlab.inspect.llm.steering import knockout, pasta, per_layer
    from attnlab.inspect.llm.streaming import streaming_experiment

    text = " ".join(["The animal didn't cross the street because it was too tired."] * 5)
    ids = lm.tokenizer.piece_ids(text)[:48]
    a, b = torch.tensor(ids[:6], device="cpu"), torch.tensor(ids[1:7], device="cpu")
    rows = [Row(tuple(ids[:8])), Row(tuple(ids[:10]), knock=(2, 3), layers=(0,)),
            Row(tuple(ids[:9]), steer=(1, 2), alpha=0.1, heads=((0, 1),)), Row(tuple(ids[:9]), knock=(4,))]
    sampled = Sampling(greedy=False, temperature=0.8, seed=3)
    out: dict[str, object] = {
        "sampled+capture": (g := generate_text(lm, "the cat sat", max_new_tokens=4, capture=True,
                                               sampling=sampled)).new_ids + g.recorder.packed().tolist(),
        "knockout": generate_text(lm, "the cat sat", max_new_tokens=4,
                                  score_mods=per_layer(knockout([1, 2]), [0, 1])).new_ids,
        "pasta": generate_text(lm, "the cat sat", max_new_tokens=4,
                               score_mods={0: pasta([1, 2], [0, 1], 0.1)}).new_ids,
        "capture": generate(lm, "the cat sat", max_new_tokens=3).as_cache(lm).weights.tolist(),
        "batch+capture": [(g.new_ids, g.recorder.packed().tolist()) for g in generate_batch(
            lm, ["the cat sat on the mat", "the dog", "a bird"], samples=2, max_new_tokens=3, capture=True,
            sampling=sampled).generations],
        "rows": generate_rows(lm, rows, max_new_tokens=3),
        "score": score_rows(lm, [Row(tuple(ids[:8]), answer=(5, 6)), Row(tuple(ids[:9]), answer=(7,))]),
        "logit diff": logit_diff_rows(lm, [Row(tuple(ids[:8]), answer=(5,)), Row(tuple(ids[:9]), knock=(2,),
                                                                                  answer=(7,))], 3, 4),
        "lens": logit_lens(lm, "the cat sat on").log_probs.tolist(),
        "patching": [activation_patching(lm, a, b, logit_diff(5, 6), site=s).raw.tolist()
                     for s in ("resid_pre", "head", "head_position")],
        "streaming": streaming_experiment(lm, ids, tokens=None, windows=(8,), sinks=(0, 2), recompute=4,
                                          backend="sdpa").to_dict(per_token=True)["rows"],
        "prompt effect": prompt_effect(lm, "write a function that adds numbers", "Make it secure.",
                                       max_new_tokens=3, emphasize="adds", steer_heads=2,
                                       topic_words=("the", "a")).to_dict(),
    }
    if lm.model_type == "gemma3_text":  # local layers (tiled, the CPU default, is not what this checks)
        out["local-global"] = local_global_experiment(lm, ids, tokens=48, block=8, backend="sdpa").to_dict()
    else:  # Gemma 3's heads do not add into the residual stream (a norm after attention)
        from attnlab.inspect.llm.lens import direct_logit_attribution

        out["attribution"] = direct_logit_attribution(lm, "the cat sat on", 5, 6).to_dict()
    return out


def _no_seconds(x: object) -> object:
    if isinstance(x, dict):
        return {k: _no_seconds(v) for k, v in x.items() if k not in ("seconds", "timings", "profile_seconds")}
    if isinstance(x, (list, tuple)):
        return [_no_seconds(v) for v in x]
    return x


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2", "tiny_gemma"])
def test_every_path_makes_its_tensors_on_the_model_device(which, request):
    """With meta as torch's default device, a tensor made without ``device=`` lands on meta and
    the first op that meets the model's CPU tensors (or reads a value) fails: every path runs,
    and gives what it gives without the trap."""
    path = request.getfixturevalue(which)
    with torch.device("meta"):  # first, on a fresh model: what is built on first use runs trapped
        trapped = _runs(load_model(path))
    plain = _runs(load_model(path))
    assert _no_seconds(trapped) == _no_seconds(plain)
    assert set(plain) >= {"sampled+capture", "batch+capture", "rows", "patching", "streaming"}


@pytest.mark.parametrize("args", [
    ["generate", "hi"],
    ["prompt-effect", "The animal", "--add", "tired"],
    ["prompt-experiment", "--quick"],
    ["streaming"],
    ["local-global"],
])
@pytest.mark.parametrize("device, message", [
    ("tpu", "--device: expected 'cpu', 'cuda' or 'cuda:N' (or a torch.device of those: attnlab runs "
            "models on the CPU or an NVIDIA GPU), got 'tpu'"),
    ("cuda", "--device: 'cuda' requested but torch.cuda.is_available() is False (this torch is a CPU "
             "build); use --device cpu"),
])
def test_the_cli_names_device_and_refuses_before_loading(args, device, message, monkeypatch):
    from typer.testing import CliRunner

    import attnlab.models.loading as loading
    from attnlab.cli.main import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
    r = CliRunner().invoke(app, [*args, "--model", "/no/such/model", "--device", device, "--json"])
    assert r.exit_code == 2, r.output
    assert json.loads(r.output) == {"error": message}


def test_the_cli_refuses_int8_on_cuda_naming_both_options(tiny_llama, monkeypatch):
    from typer.testing import CliRunner

    from attnlab.cli.main import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    r = CliRunner().invoke(app, ["generate", "hi", "--model", str(tiny_llama), "--weights", "int8",
                                 "--device", "cuda:0"])
    assert r.exit_code == 2
    assert r.output.strip().replace("\n", " ") == (
        "error: --device: expected 'cpu' with --weights 'int8' (int8/int4 weights run on torch's CPU "
        "kernels), got 'cuda:0'; use --device cpu or --weights float32")


def test_the_cli_json_says_where_the_model_ran(tiny_llama):
    from typer.testing import CliRunner

    from attnlab.cli.main import app

    r = CliRunner().invoke(app, ["generate", "the cat", "--model", str(tiny_llama), "--max-new-tokens", "2",
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["device"] == "cpu" and d["new_tokens"] == 2
    default = CliRunner().invoke(app, ["generate", "the cat", "--model", str(tiny_llama), "--max-new-tokens",
                                       "2", "--json"])
    assert json.loads(default.output)["new_ids"] == d["new_ids"]


gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                         reason="no GPU here: the CUDA path runs where a GPU machine is lent")


@gpu
@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2", "tiny_gemma"])
def test_on_a_gpu_every_path_runs_and_the_model_agrees_with_the_cpu(which, request):
    from attnlab.inspect.llm.generation import generate_text

    path = request.getfixturevalue(which)
    cpu, cuda = load_model(path), load_model(path, device="cuda")
    assert cuda.device.type == "cuda" and cuda.describe()["device"] == "cuda:0"
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    assert torch.allclose(cuda.model(ids.cuda()).logits.cpu(), cpu.model(ids).logits, atol=1e-4, rtol=1e-4)
    a = generate_text(cpu, "the cat sat", max_new_tokens=4, capture=True)
    b = generate_text(cuda, "the cat sat", max_new_tokens=4, capture=True)
    assert b.recorder is not None and b.recorder.packed().device.type == "cpu"
    if a.new_ids == b.new_ids:  # a near-tie may pick another token on another device's rounding
        assert a.recorder is not None
        torch.testing.assert_close(b.recorder.packed(), a.recorder.packed(), atol=2e-3, rtol=2e-3)
    _runs(cuda)  # every generation / capture / intervention path runs there


@gpu
def test_on_a_gpu_tiled_refuses_and_auto_takes_sdpa():
    q = torch.zeros(1, 2, 1024, 16, device="cuda")  # (B, H, L, Dh)
    m = masks.sliding_window(63, 0)
    with pytest.raises(ValueError, match=r"'tiled' is CPU-only \(got tensors on cuda:0\)"):
        attnlab.attention(q, q, q, mask=m, backend="tiled")
    nm = normalize_mask(m, (1, 2, 1024, 1024), dtype=q.dtype, device=q.device)
    assert choose_backend(AttentionCall(q, q, q, nm, None, 0.25, 0.0, False, False))[0].name == "sdpa"
    assert attnlab.attention(q, q, q, mask=m).context.device.type == "cuda"
