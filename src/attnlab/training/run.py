"""A run folder: everything a training run needs to resume and a model needs to translate.

    run.json              format tag + the full RunConfig (vocabulary sizes included)
    data/{train,valid,test}.tsv   the exact splits (target<TAB>source), so resuming or
                          evaluating never depends on regenerating a corpus
    data/report.json      where the pairs came from and what was dropped (DataReport)
    codec.json, src_vocab.json, tgt_vocab.json   tokenisation + vocabularies
    model.json, model.safetensors                the best model so far (by valid BLEU)
    checkpoint/           see :mod:`attnlab.training.checkpoint`
    results.json          test scores, written when training ends

``run.json`` is written last at creation: a folder without it holds no run yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.io import FormatError, read_json, write_json
from attnlab.data.provenance import DataReport
from attnlab.data.splits import Splits, build_splits
from attnlab.data.tokenize import Tokenizer
from attnlab.data.tsv import Pair, load_tsv, write_tsv
from attnlab.data.vocab import Vocab
from attnlab.training.evaluate import Codec
from attnlab.training.run_config import RunConfig, set_value

RUN_FORMAT = "attnlab.run/1"
CODEC_FORMAT = "attnlab.codec/1"
SPLITS = ("train", "valid", "test")
# What may change when a run is resumed: budgets and presentation, never the model or data.
RESUMABLE = ("train.max_steps", "train.max_epochs", "train.patience", "train.progress",
             "train.threads", "train.time_limit", "train.eval_batch_size")


class RunExistsError(FileExistsError):
    pass


@dataclass
class Run:
    folder: Path
    cfg: RunConfig
    splits: Splits
    codec: Codec


def save_codec(folder: Path, codec: Codec) -> None:
    codec.src_vocab.save(folder / "src_vocab.json")
    codec.tgt_vocab.save(folder / "tgt_vocab.json")
    write_json(folder / "codec.json", {"format": CODEC_FORMAT, "src": codec.src_tok.to_dict(),
                                       "tgt": codec.tgt_tok.to_dict()})


def load_codec(folder: Path) -> Codec:
    missing = [n for n in ("codec.json", "src_vocab.json", "tgt_vocab.json")
               if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"model: {folder} is missing {', '.join(missing)}; expected a "
                                f"folder written by `attnlab train`")
    d = read_json(folder / "codec.json", "codec")
    if not isinstance(d, dict) or d.get("format") != CODEC_FORMAT:
        got = d.get("format") if isinstance(d, dict) else None
        raise FormatError(f"{folder / 'codec.json'}: expected format {CODEC_FORMAT!r}, got "
                          f"{got!r} (a model from another attnlab version; retrain it)")
    return Codec(Tokenizer.from_dict(d["src"]), Tokenizer.from_dict(d["tgt"]),
                 Vocab.load(folder / "src_vocab.json"), Vocab.load(folder / "tgt_vocab.json"))


def holds_run(folder: Path) -> bool:
    return any((folder / n).exists() for n in ("run.json", "model.json", "checkpoint"))


def create_run(cfg: RunConfig, folder: str | os.PathLike[str]) -> Run:
    """Build the splits and vocabularies and write them; refuses a folder holding a run."""
    folder = Path(folder)
    if holds_run(folder):
        raise RunExistsError(f"--out: {folder} already holds a run or model; pass --resume to "
                             f"continue it, or choose another folder (nothing was changed)")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out: expected a folder, got the file {folder}")
    splits = build_splits(cfg.data)
    st, tt = cfg.data.src_tokenizer, cfg.data.tgt_tokenizer
    codec = Codec(st, tt,
                  Vocab.build((st.tokenize(p.src) for p in splits.train),
                              min_freq=cfg.data.min_freq),
                  Vocab.build((tt.tokenize(p.tgt) for p in splits.train),
                              min_freq=cfg.data.min_freq))
    cfg = set_value(cfg, "model.src_vocab_size", len(codec.src_vocab), "data", automatic=True)
    cfg = set_value(cfg, "model.tgt_vocab_size", len(codec.tgt_vocab), "data", automatic=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_tsv(folder / "data" / f"{name}.tsv", getattr(splits, name))
    if splits.report is not None:
        write_json(folder / "data" / "report.json", splits.report.to_dict())
    save_codec(folder, codec)
    write_json(folder / "run.json", {"format": RUN_FORMAT, "config": cfg.to_dict()})
    return Run(folder, cfg, splits, codec)


def read_run_config(folder: Path) -> RunConfig:
    path = folder / "run.json"
    d = read_json(path, "run")
    if not isinstance(d, dict) or d.get("format") != RUN_FORMAT:
        got = d.get("format") if isinstance(d, dict) else None
        raise FormatError(f"{path}: expected run format {RUN_FORMAT!r}, got {got!r}")
    return RunConfig.from_dict(d["config"], str(path))


def open_run(folder: str | os.PathLike[str], cfg: RunConfig | None = None) -> Run:
    """Reopen a run to resume it. ``cfg`` (if given) may differ from the saved one only in
    :data:`RESUMABLE` keys, which it then updates."""
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise FileNotFoundError(f"--resume: {folder} holds no run (run.json missing); nothing "
                                f"was saved yet, so start it again without --resume")
    saved = read_run_config(folder)
    if cfg is not None:
        diff = config_differences(saved, cfg)
        fixed = [k for k in diff if k not in RESUMABLE]
        if fixed:
            raise ValueError(f"--resume: the config differs from the saved run in {fixed}; a "
                             f"resumed run keeps its model and data (only {', '.join(RESUMABLE)} "
                             f"may change)")
        for key in diff:
            if key in RESUMABLE:
                section, name = key.split(".")
                saved = set_value(saved, key, getattr(getattr(cfg, section), name), "--resume")
        write_json(folder / "run.json", {"format": RUN_FORMAT, "config": saved.to_dict()})
    train, valid, test = (_load_split(folder, name) for name in SPLITS)
    splits = Splits(train, valid, test, report=_load_report(folder))
    return Run(folder, saved, splits, load_codec(folder))


def _load_report(folder: Path) -> DataReport | None:
    path = folder / "data" / "report.json"  # absent in runs made before it existed
    return DataReport.from_dict(read_json(path, "data report")) if path.is_file() else None


def _load_split(folder: Path, name: str) -> list[Pair]:
    path = folder / "data" / f"{name}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} is missing; the run folder is incomplete")
    return load_tsv(path).pairs if path.stat().st_size else []  # valid/test may be empty


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Keys (``section.name``) whose values differ, vocabulary sizes (set from data) aside."""
    da, db = a.to_dict(), b.to_dict()
    if da["model"]["arch"] != db["model"]["arch"]:  # other architecture: other model keys
        da["model"], db["model"] = {"arch": da["model"]["arch"]}, {"arch": db["model"]["arch"]}
    return [f"{s}.{k}" for s in da for k in da[s]
            if da[s][k] != db[s][k] and not k.endswith("vocab_size")]
