"""``device=`` / ``--device``: a model loads on the CPU and moves to the device asked for; every
tensor the generation, capture and intervention paths make is made on the model's device.

This machine (and CI) has no GPU: the CUDA branches are checked with torch.cuda.is_available
patched, and the "made on the model's device" rule by running the CPU model with meta as torch's
default device, so that any tensor made without an explicit device lands on meta and the first
op mixing it with the model's CPU tensors fails. The CUDA path itself has not run on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.arguments import ArgumentError
from attnlab.models import load_model
from attnlab.models.device import resolve_device


@pytest.mark.parametrize("given, message", [
    ("tpu", "device: expected 'cpu', 'cuda' or 'cuda:N' (or a torch.device of those: attnlab runs models "
            "on the CPU or an NVIDIA GPU), got 'tpu'"),
    (3, "got 3 (int)"),
    (torch.device("meta"), "got 'meta'"),
    ("cuda", "device: 'cuda' requested but torch.cuda.is_available() is False"),
    ("cuda:0", "use device='cpu'"),
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
