"""Run configuration: presets, files, overrides that fail on unknown keys."""

from __future__ import annotations

import json

import pytest

from attnlab.training.config import (
    PRESETS,
    RunConfig,
    apply_overrides,
    load_config,
    preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_roundtrip(name):
    cfg = preset(name)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_overrides_parse_types():
    cfg = apply_overrides(preset("numbers"), [
        "train.lr=0.01", "model.input_feed=false", "data.buckets=5, 10", "model.hidden=64",
        "data.tgt_lang=de"])
    assert cfg.train.lr == 0.01 and cfg.model.input_feed is False
    assert cfg.data.buckets == (5, 10) and cfg.model.hidden == 64 and cfg.data.tgt_lang == "de"


@pytest.mark.parametrize(("item", "message"), [
    ("train.lrate=1", r"unknown config key 'train\.lrate' \(did you mean train\.lr"),
    ("optim.lr=1", "unknown config key 'optim.lr'"),
    ("model.hidden=big", r"model\.hidden: expected int, got 'big'"),
    ("model.input_feed=maybe", r"model\.input_feed: expected bool"),
    ("model.attention=luong", r"model\.attention: expected one of"),
    ("model.src_vocab_size=10", "set from the data's vocabulary"),
    ("train.lr", "expected section.key=value"),
    ("train.batch_size=0", r"train\.batch_size: expected >= 1"),
])
def test_bad_overrides_are_clear(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(preset("numbers"), [item])


def test_config_files(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"preset": "tiny", "model": {"attention": "bahdanau"}}))
    cfg = load_config(js)
    assert cfg.model.attention == "bahdanau" and cfg.train.max_steps == preset("tiny").train.max_steps
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nattention = "luong-dot"\n[train]\nlr = 0.005\n')
    cfg = load_config(toml)
    assert cfg.model.attention == "luong-dot" and cfg.train.lr == 0.005
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"modle": {"hidden": 3}}))
    with pytest.raises(ValueError, match="unknown section 'modle'"):
        load_config(bad)
    bad.write_text(json.dumps({"model": {"hiden": 3}}))
    with pytest.raises(ValueError, match=r"bad\.json: unknown config key 'model\.hiden'"):
        load_config(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="expected valid json"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="preset: expected one of"):
        preset("huge")
