"""Run configuration: presets, files, overrides that fail on unknown keys."""

from __future__ import annotations

import json

import pytest

from attnlab.data.splits import build_splits
from attnlab.training.run_config import (
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


# Issue 16: keys that depend on each other were checked one at a time, so the result depended
# on the order they were written in (and a saved run could not be read back).
TSV = ["data.corpus=tsv", "data.path=pairs.tsv"]


@pytest.mark.parametrize("order", [TSV, TSV[::-1]], ids=["corpus-first", "path-first"])
def test_dependent_data_keys_in_either_order(order):
    cfg = apply_overrides(preset("tiny"), order)
    assert (cfg.data.corpus, cfg.data.path) == ("tsv", "pairs.tsv")
    assert RunConfig.from_dict(cfg.to_dict(), "run.json") == cfg  # how a saved run is reloaded


@pytest.mark.parametrize("order", [["model.heads=6", "model.d_model=96"],
                                   ["model.d_model=96", "model.heads=6"]])
def test_dependent_model_keys_in_either_order(order):
    cfg = apply_overrides(preset("transformer-tiny"), order)
    assert (cfg.model.d_model, cfg.model.heads) == (96, 6)


def test_saved_file_corpus_config_reads_back():
    cfg = apply_overrides(preset("tiny"), [*TSV, "data.src_col=1", "data.tgt_col=2"])
    assert RunConfig.from_dict(cfg.to_dict(), "run.json") == cfg
    text = apply_overrides(preset("tiny"), ["data.corpus=text", "data.src_path=a.en",
                                            "data.tgt_path=a.es"])
    assert RunConfig.from_dict(text.to_dict()) == text


def test_toml_data_table_and_set_are_checked_together(tmp_path):
    whole = tmp_path / "whole.toml"
    whole.write_text('preset = "tiny"\n[data]\ncorpus = "tsv"\npath = "pairs.tsv"\n')
    assert load_config(whole).data.path == "pairs.tsv"
    half = tmp_path / "half.toml"
    half.write_text('preset = "tiny"\n[data]\ncorpus = "tsv"\n')
    cfg = load_config(half, ["data.path=pairs.tsv"])  # the file leaves the path to --set
    assert (cfg.data.corpus, cfg.data.path) == ("tsv", "pairs.tsv")
    with pytest.raises(ValueError, match=rf"^{half}: data\.path: expected a TSV file when "
                                         r"data\.corpus = 'tsv', got ''$"):
        load_config(half)
    with pytest.raises(ValueError, match=rf"^{half}, --set: data\.path: expected a TSV file"):
        load_config(half, ["data.lowercase=true"])


@pytest.mark.parametrize(("sets", "message"), [
    (["data.corpus=tsv"], r"^--set: data\.path: expected a TSV file when data\.corpus = 'tsv', "
                          r"got ''$"),
    (["data.corpus=text", "data.src_path=a.en"], r"data\.src_path / data\.tgt_path: expected "
                                                  r"two files when data\.corpus = 'text'"),
    ([*TSV, "data.src_col=1"], r"data\.src_col / data\.tgt_col: expected two different 1-based "
                               r"columns, got 1 and 1"),
    (["data.dedupe=all"], r"data\.dedupe: expected one of pairs, sources, none, got 'all'"),
])
def test_data_settings_are_checked(sets, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(preset("tiny"), sets)


@pytest.mark.parametrize(("sets", "message"), [
    (["data.path=pairs.tsv"], r"data\.path: a TSV file is read when data\.corpus = 'tsv', got "
                              r"data\.corpus = 'numbers' \(set data\.corpus=tsv\)"),
    (["data.src_path=a.en", "data.tgt_path=a.es"], r"two files are read when data\.corpus = "
                                                    r"'text', got data\.corpus = 'numbers'"),
    (["data.tgt_col=3"], r"choose columns of a TSV file \(data\.corpus = 'tsv'\)"),
    ([*TSV, "data.balanced_eval=true"], r"data\.balanced_eval: fills length buckets from a "
                                        r"generated corpus \(numbers, dates\), got data\.corpus "
                                        r"= 'tsv'"),
])
def test_file_keys_the_corpus_would_not_read(sets, message):
    """Refused when the data is built (before anything is written), not when a config is
    read: a run saved with such a key still loads."""
    cfg = apply_overrides(preset("tiny"), sets)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=message):
        build_splits(cfg.data)


def test_a_missing_pair_file_names_the_setting(tmp_path):
    cfg = apply_overrides(preset("tiny"), ["data.corpus=tsv", f"data.path={tmp_path / 'no.tsv'}"])
    with pytest.raises(FileNotFoundError, match=r"^data\.path: expected a TSV file, got "
                                                r"'.*no\.tsv' \(no such file\)$"):
        build_splits(cfg.data)
