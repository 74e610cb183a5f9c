"""Where a model runs: ``device="cpu"`` (the default), ``"cuda"`` or ``"cuda:N"``.

A model is loaded on the CPU and moved there afterwards (:func:`attnlab.models.load_model`);
generation, capture and interventions then make their tensors on the model's device
(``model.device``, part of the CausalLM contract). On an NVIDIA GPU attention runs through
torch's kernels (SDPA, or the eager reference when weights are recorded): the ``tiled`` backend
is CPU-only, and so are the int8/int4 weights (torch's CPU kernels). The CUDA path has not
been run on a GPU yet: CI has none.
"""

from __future__ import annotations

import re

import torch

from attnlab.arguments import ArgumentError

DeviceLike = str | torch.device
_NAME = re.compile(r"(cpu|cuda)(:(0|[1-9]\d{0,2}))?")  # torch refuses leading zeros ("cuda:01")
EXPECTED = ("'cpu', 'cuda' or 'cuda:N' (or a torch.device of those: attnlab runs models on the CPU "
            "or an NVIDIA GPU)")


def _setting(name: str, value: str) -> str:
    """How the caller sets ``name``: ``--device cpu`` on the command line, ``device='cpu'`` in Python."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def resolve_device(device: object, weights: str = "float32", *, name: str = "device",
                   weights_name: str = "weights") -> torch.device:
    """``device`` as a torch.device this process can run a model on, or an
    :class:`~attnlab.arguments.ArgumentError` naming ``name`` (the CLI passes ``--device``):
    a name other than cpu/cuda[:N], int8/int4 ``weights`` off the CPU, CUDA where torch sees
    no GPU, or a GPU index past the ones it sees. Nothing is allocated on the device."""
    if isinstance(device, torch.device):
        given = str(device)
    elif isinstance(device, str) and _NAME.fullmatch(device.strip().lower()):
        given = device.strip().lower()
    else:
        got = repr(device) if isinstance(device, str) else f"{device!r} ({type(device).__name__})"
        raise ArgumentError(name, f"{name}: expected {EXPECTED}, got {got}")
    try:
        dev = torch.device(given)
    except RuntimeError as e:  # what torch's own parser refuses, said as this argument's error
        raise ArgumentError(name, f"{name}: expected {EXPECTED}, got {given!r} ({e})") from e
    if dev.type not in ("cpu", "cuda"):
        raise ArgumentError(name, f"{name}: expected {EXPECTED}, got {given!r}")
    if dev.type == "cpu":
        return dev
    if weights != "float32":  # refused before anything is loaded or moved
        raise ArgumentError(name, f"{name}: expected 'cpu' with {weights_name} {weights!r} (int8/int4 "
                                  f"weights run on torch's CPU kernels), got {given!r}; use "
                                  f"{_setting(name, 'cpu')} or {_setting(weights_name, 'float32')}")
    if not torch.cuda.is_available():
        cpu_build = torch.version.cuda is None and getattr(torch.version, "hip", None) is None
        why = "this torch is a CPU build" if cpu_build else "no GPU visible"
        raise ArgumentError(name, f"{name}: {given!r} requested but torch.cuda.is_available() is False "
                                  f"({why}); use {_setting(name, 'cpu')}")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ArgumentError(name, f"{name}: {given!r} requested but torch sees {count} GPU(s) "
                                  f"(cuda:0..cuda:{count - 1}); use one of those or {_setting(name, 'cpu')}")
    return dev
