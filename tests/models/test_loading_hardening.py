"""Loader hardening: building a model leaves other threads' initialisation alone, and a model
folder can only make attnlab read files inside it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from attnlab.models import arch, load_model, loading

from .conftest import make_bert, make_gpt2, write_llama_gguf

# ----------------------------------------------------------------------- thread-safe construction


def _blocking(build, building: threading.Event, done: threading.Event):
    """A registry builder that, once its model's modules exist, waits while another thread works."""

    def blocking(*args, **kwargs):
        net = build(*args, **kwargs)
        building.set()
        assert done.wait(30), "the other thread never finished"
        return net

    return blocking


@pytest.mark.parametrize("path", ["bert", "gpt2", "llama", "gguf"])
def test_loading_leaves_modules_built_by_other_threads_initialised(path, tiny_bert, tiny_gpt2,
                                                                   tiny_llama, tmp_path,
                                                                   monkeypatch):
    """Every loader path builds its model without switching torch's init off for the process:
    a module another thread builds meanwhile gets its usual random weights."""
    target = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}.get(path)
    if path == "gguf":
        target = write_llama_gguf(tiny_llama, tmp_path / "m.gguf", qtype="F32")
    name = {"bert": "bert", "gpt2": "gpt2"}.get(path, "llama")
    building, done = threading.Event(), threading.Event()
    entry = arch.ARCHITECTURES[name]
    monkeypatch.setitem(arch.ARCHITECTURES, name,
                        dataclasses.replace(entry, build=_blocking(entry.build, building, done)))

    torch.manual_seed(1234)
    ref_linear, ref_embedding = nn.Linear(16, 16), nn.Embedding(8, 16)  # kept alive: no reuse
    got: dict[str, nn.Module] = {}

    def other_thread():
        try:
            assert building.wait(30), "the loader never started building"
            torch.manual_seed(1234)
            got["linear"], got["embedding"] = nn.Linear(16, 16), nn.Embedding(8, 16)
        finally:
            done.set()

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        lm = load_model(target)
    finally:
        done.set()
        t.join(30)
    assert lm.native
    assert torch.equal(got["linear"].weight, ref_linear.weight)
    assert torch.equal(got["linear"].bias, ref_linear.bias)
    assert torch.equal(got["embedding"].weight, ref_embedding.weight)
    # and the loaded model itself is the checkpoint, whatever its constructor did
    assert all(torch.isfinite(p).all() for p in lm.model.parameters())


def test_building_skips_init_only_inside_the_build():
    """Inside the loader's build nn.init's fills are skipped (the checkpoint replaces them), but
    plain tensor code, such as a buffer computed from the config, runs as usual; after it,
    initialisation is back on."""

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("table", torch.arange(6.0) * 2, persistent=False)

    net = loading._build(Probe)
    assert torch.equal(net.table, torch.arange(6.0) * 2)
    torch.manual_seed(0)
    a = nn.Linear(8, 8)
    torch.manual_seed(0)
    with torch.no_grad():
        w = torch.empty(8, 8)
        nn.init.kaiming_uniform_(w, a=5 ** 0.5)
    assert torch.equal(a.weight, w)


# ----------------------------------------------------------------------- folder containment


def _shard(folder, outside, entry_name):
    """Split ``folder``'s checkpoint in two shards: one inside, one at ``outside`` that the
    index names as ``entry_name``; returns the tensor names of the outside shard."""
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    inside, away = names[::2], names[1::2]
    save_file({k: tensors[k] for k in inside}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in away}, str(outside))
    weight_map = dict.fromkeys(inside, "model-00001-of-00002.safetensors") | dict.fromkeys(
        away, entry_name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return away


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "nested-dotdot"])
def test_index_entry_outside_the_folder_is_refused(tiny_bert, tmp_path, how):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    outside = tmp_path / "x.safetensors"
    entry = {"dotdot": "../x.safetensors", "absolute": str(outside),
             "symlink": "link.safetensors", "nested-dotdot": "sub/../../x.safetensors"}[how]
    if how == "symlink":
        os.symlink(outside, folder / "link.safetensors")
    if how == "nested-dotdot":
        (folder / "sub").mkdir()
    away = _shard(folder, outside, entry)
    with pytest.raises(ValueError) as err:
        load_model(folder)
    msg = str(err.value)
    assert "model.safetensors.index.json" in msg and f"weight_map entry {away[0]!r}" in msg
    assert "outside" in msg and repr(entry) in msg


def test_index_entries_inside_the_folder_still_load(tiny_bert, tmp_path):
    """Subfolders, '..' that stays inside, symlinks to files inside, a symlinked folder."""
    ref = load_model(tiny_bert)
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    (folder / "shards").mkdir()
    _shard(folder, folder / "shards" / "b.safetensors", "shards/../shards/b.safetensors")
    os.symlink(folder / "model-00001-of-00002.safetensors", folder / "a-link.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: ("a-link.safetensors" if v.startswith("model-") else v)
                           for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    os.symlink(folder, tmp_path / "alias")
    for f in (folder, tmp_path / "alias"):
        lm = load_model(f)
        enc = lm.encode("the animal was too tired")
        torch.testing.assert_close(lm.forward(enc).last_hidden_state,
                                   ref.forward(enc).last_hidden_state)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json",
                                  "model.safetensors.index.json"])
def test_symlinked_model_files_outside_the_folder_are_refused(tiny_bert, tmp_path, name):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    if name == "model.safetensors.index.json":
        _shard(folder, folder / "b.safetensors", "b.safetensors")
    away = tmp_path / "elsewhere" / name
    away.parent.mkdir()
    shutil.move(folder / name, away)
    os.symlink(away, folder / name)
    with pytest.raises(ValueError, match=f"{name}: expected a file inside the model folder"):
        load_model(folder)


def test_hugging_face_cache_snapshot_symlinks_load(tiny_gpt2, tmp_path):
    """<repo>/snapshots/<rev>/<file> -> ../../blobs/<hash>: the one layout allowed to link out."""
    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(tiny_gpt2.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / f.name)
    lm = load_model(snap)
    ref = load_model(tiny_gpt2)
    enc = ref.encode("the animal")
    torch.testing.assert_close(lm.forward(enc).logits, ref.forward(enc).logits)
    # ... but not a link from the snapshot to another repo's blobs
    other = tmp_path / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    shutil.move(blobs / "blob0", other / "blob0")
    first = sorted(tiny_gpt2.iterdir())[0].name
    (snap / first).unlink()
    os.symlink(other / "blob0", snap / first)
    with pytest.raises(ValueError, match="outside"):
        load_model(snap)


def test_fallback_architectures_get_the_same_check(tmp_path):
    """An architecture handed to transformers: the index is checked before transformers reads it."""
    folder = make_bert(tmp_path / "model")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "distilbert"  # anything attnlab does not implement
    (folder / "config.json").write_text(json.dumps(cfg))
    _shard(folder, tmp_path / "x.safetensors", "../x.safetensors")
    with pytest.raises(ValueError, match=r"weight_map entry .*outside"):
        load_model(folder)


def test_index_entry_that_is_not_a_name(tmp_path):
    folder = make_gpt2(tmp_path / "model")
    _shard(folder, folder / "b.safetensors", "b.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = ["b.safetensors"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"weight_map entry {first!r}"):
        load_model(folder)
