"""A run's configuration: model + data + training, typed, with presets and overrides.

Sources, in order: a preset (``--preset NAME``, default ``numbers``) or a config file
(``.json`` or ``.toml`` with ``[model]``, ``[data]``, ``[train]`` tables and an optional top-level
``preset`` to start from), then ``--set section.key=value`` overrides. Unknown sections and
keys are errors that list the valid keys: a typo never silently trains the wrong model. Every
value is applied before any section is validated (:func:`apply_items`), so the order of keys,
and which source sets which, never matters; saved runs are read back the same way.
"""

from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from attnlab.data.splits import DataSpec
from attnlab.models.seq2seq.seq2seq_config import Seq2SeqConfig
from attnlab.models.transformer.transformer_config import TransformerConfig
from attnlab.models.translators import ARCHS, CONFIGS, arch_of
from attnlab.training.schedule import SCHEDULES


@dataclass
class TrainSpec:
    batch_size: int = 64
    lr: float = 2e-3  # Adam
    max_steps: int = 4000  # the budget, in optimizer steps
    max_epochs: int = 1000
    clip: float = 1.0  # gradient norm clipping
    label_smoothing: float = 0.0  # ε_ls (Vaswani et al. §5.4 use 0.1)
    schedule: str = "plateau"  # plateau (lr_decay on stalls) | noam (warm-up, 1/sqrt(step); §5.3)
    warmup: int = 4000  # noam only: steps of linear warm-up up to train.lr (the paper's 4000)
    eval_every: int = 500  # steps between validations (BLEU/chrF, greedy)
    patience: int = 4  # early stopping: validations without a better BLEU; 0 = never stop
    lr_decay: float = 0.5  # multiply the lr by this when valid BLEU stalls
    lr_patience: int = 1  # ... for this many validations
    checkpoint_every: int = 200  # steps; every validation also checkpoints
    eval_batch_size: int = 200
    max_len_ratio: float = 2.0  # decoding stops after ratio·|source| + 10 tokens
    seed: int = 1
    threads: int = 0  # torch threads; 0 = torch's default. Bitwise resume needs the same count
    time_limit: float = 0.0  # minutes; 0 = none. Stops wherever the clock says: not reproducible
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "max_epochs", "eval_every", "checkpoint_every",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: expected >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.clip <= 0:
            raise ValueError(f"train.lr/train.clip: expected > 0, got {self.lr}, {self.clip}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"train.lr_decay: expected a factor in (0, 1], got {self.lr_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing: expected [0, 1), got {self.label_smoothing}")
        if self.patience < 0 or self.lr_patience < 0 or self.threads < 0 or self.time_limit < 0:
            raise ValueError("train.patience/lr_patience/threads/time_limit: expected >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule: expected one of {', '.join(SCHEDULES)}, "
                             f"got {self.schedule!r}")
        if self.warmup < 1:
            raise ValueError(f"train.warmup: expected >= 1 steps, got {self.warmup}")


@dataclass
class RunConfig:
    model: Seq2SeqConfig | TransformerConfig = field(default_factory=Seq2SeqConfig)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    @property
    def arch(self) -> str:
        """``model.arch``: which model the model section configures (rnn | transformer)."""
        return arch_of(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = {"model": {"arch": self.arch, **self.model.to_dict()}, "data": asdict(self.data),
             "train": asdict(self.train)}
        d["data"]["buckets"] = list(self.data.buckets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> RunConfig:
        """Read back :meth:`to_dict` (vocabulary sizes included)."""
        return apply_tables(cls(), d, where, automatic=True)


SECTIONS = {"model": Seq2SeqConfig, "data": DataSpec, "train": TrainSpec}
AUTOMATIC = {"model.src_vocab_size", "model.tgt_vocab_size"}  # set from the data
Item = tuple[str, Any, str]  # (section.key, value, where it came from: a file, --set, ...)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # English number words -> Spanish number words, 1-3 numbers a sentence.
    "numbers": {"model": {"attention": "luong-general"},
                "data": {"corpus": "numbers", "max_items": 3, "train_size": 40_000},
                "train": {"max_steps": 4000, "eval_every": 500}},
    # English -> German (characters): reordering inside every number.
    "numbers-de": {"model": {"attention": "bahdanau"},
                   "data": {"corpus": "numbers", "tgt_lang": "de", "tgt_level": "char",
                            "max_items": 1, "max_value": 99_999, "train_size": 30_000},
                   "train": {"max_steps": 3000, "max_len_ratio": 4.0}},  # chars per word
    # Dates in 20 locales -> ISO 8601, characters on both sides.
    "dates": {"model": {"attention": "luong-general"},
              "data": {"corpus": "dates", "src_level": "char", "tgt_level": "char",
                       "train_size": 30_000},
              "train": {"max_steps": 3000}},
    # The bottleneck experiment: 1-8 numbers, test balanced over source-length buckets.
    "bottleneck": {"model": {"attention": "bahdanau", "dropout": 0.0},
                   "data": {"corpus": "numbers", "max_items": 8, "train_size": 60_000,
                            "balanced_eval": True, "buckets": [10, 20, 30, 40, 50],
                            "max_src_len": 50, "valid_size": 250, "test_size": 500},
                   "train": {"max_steps": 2000, "eval_every": 1000, "patience": 0}},
    # The Transformer (Vaswani et al. 2017) on the numbers corpus: minutes on 2 CPU cores.
    "transformer-numbers": {
        "model": {"arch": "transformer", "d_model": 128, "heads": 4, "layers": 2, "ffn": 512,
                  "dropout": 0.1, "positions": "sinusoidal", "norm": "pre"},
        "data": {"corpus": "numbers", "max_items": 3, "train_size": 40_000},
        "train": {"lr": 1e-3, "schedule": "noam", "warmup": 400, "label_smoothing": 0.1,
                  "max_steps": 2000, "eval_every": 500}},
    # Seconds, for tests and smoke runs (dropouts on, so that resume tests cover their RNG).
    "transformer-tiny": {
        "model": {"arch": "transformer", "d_model": 32, "heads": 4, "layers": 1, "ffn": 64,
                  "dropout": 0.1, "attn_dropout": 0.1},
        "data": {"corpus": "numbers", "max_items": 1, "max_value": 99, "train_size": 400,
                 "valid_size": 20, "test_size": 20},
        "train": {"batch_size": 16, "max_steps": 40, "eval_every": 20, "checkpoint_every": 10,
                  "schedule": "noam", "warmup": 10, "progress": False}},
    # Seconds, for tests and smoke runs.
    "tiny": {"model": {"hidden": 32, "emb_dim": 16, "dropout": 0.0},
             "data": {"corpus": "numbers", "max_items": 1, "max_value": 99, "train_size": 400,
                      "valid_size": 20, "test_size": 20},
             "train": {"batch_size": 16, "max_steps": 40, "eval_every": 20,
                       "checkpoint_every": 10, "progress": False}},
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return apply_tables(RunConfig(), PRESETS[name], f"preset {name}")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """A JSON or TOML file of ``model`` / ``data`` / ``train`` tables (+ optional ``preset``),
    then ``--set`` ``overrides``; the whole is validated once, after everything is applied
    (a file may leave ``data.path`` to ``--set``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CONFIG: expected a .json or .toml file, got {str(path)!r} "
                                f"(no such file)")
    text = path.read_text(encoding="utf-8")
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a table of sections, got {type(d).__name__}")
    base = preset(d.pop("preset")) if "preset" in d else RunConfig()
    return apply_items(base, [*table_items(d, str(path)), *override_items(overrides)])


def table_items(tables: dict[str, Any], where: str) -> list[Item]:
    """``{section: {key: value}}`` as (``section.key``, value, where) items."""
    items = []
    for section, values in tables.items():
        if section not in SECTIONS:
            raise ValueError(f"{where}: unknown section {section!r}; expected "
                             f"{', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"{where}: section {section!r}: expected a table, got {values!r}")
        items += [(f"{section}.{key}", value, where) for key, value in values.items()]
    return items


def apply_tables(cfg: RunConfig, tables: dict[str, Any], where: str, *,
                 automatic: bool = False) -> RunConfig:
    return apply_items(cfg, table_items(tables, where), automatic=automatic)


def all_keys(arch: str = "rnn") -> list[str]:
    """Every valid ``section.key`` when the model section configures ``arch``."""
    classes = {**SECTIONS, "model": CONFIGS[arch]}
    return ["model.arch"] + [f"{s}.{f.name}" for s, cls in classes.items() for f in fields(cls)]


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"--set: expected section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def override_items(overrides: Sequence[str]) -> list[Item]:
    return [(*parse_override(item), "--set") for item in overrides]


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    return apply_items(cfg, override_items(overrides))


def apply_items(cfg: RunConfig, items: Sequence[Item], *, automatic: bool = False) -> RunConfig:
    """Apply every (``section.key``, value, where) item, later ones winning, then validate
    each changed section once. Keys depend on each other (``data.corpus=tsv`` needs
    ``data.path``; ``model.d_model`` must be a multiple of ``model.heads``), so checking
    after each key would make the result depend on the order the user wrote them in."""
    # model.arch first: it decides which keys the model section has
    for key, value, where in items:
        if key == "model.arch":
            cfg = set_arch(cfg, value, where)
    changes: dict[str, dict[str, Any]] = {}
    sources: dict[str, list[str]] = {}
    for key, value, where in items:
        if key != "model.arch":
            section, name, parsed = _parse_item(cfg, key, value, where, automatic)
            changes.setdefault(section, {})[name] = parsed
            if where not in sources.setdefault(section, []):
                sources[section].append(where)
    for section, values in changes.items():
        try:  # __post_init__ checks the section as a whole
            new = replace(getattr(cfg, section), **values)
        except ValueError as e:
            raise ValueError(f"{', '.join(sources[section])}: {e}") from None
        cfg = replace(cfg, **{section: new})
    return cfg


def set_arch(cfg: RunConfig, value: Any, where: str) -> RunConfig:
    """``model.arch``: switching architecture starts the model section from that
    architecture's defaults (vocabulary sizes kept); data and train are unchanged."""
    if value not in ARCHS:
        raise ValueError(f"{where}: model.arch: expected one of {', '.join(ARCHS)}, got {value!r}")
    if value == cfg.arch:
        return cfg
    new = CONFIGS[value](src_vocab_size=cfg.model.src_vocab_size,
                         tgt_vocab_size=cfg.model.tgt_vocab_size)
    return replace(cfg, model=new)


def set_value(cfg: RunConfig, key: str, value: Any, where: str, *,
              automatic: bool = False) -> RunConfig:
    """A new RunConfig with ``section.name`` set; strings are parsed to the field's type."""
    return apply_items(cfg, [(key, value, where)], automatic=automatic)


def _parse_item(cfg: RunConfig, key: str, value: Any, where: str,
                automatic: bool) -> tuple[str, str, Any]:
    """(section, name, value parsed to the field's type) for one valid, settable key."""
    section, _, name = key.partition(".")
    known = all_keys(cfg.arch)
    if key not in known:
        elsewhere = [a for a in ARCHS if key in all_keys(a)]
        if elsewhere:
            raise ValueError(f"{where}: {key} does not apply to model.arch={cfg.arch}; it is a "
                             f"key of model.arch={elsewhere[0]} (set model.arch={elsewhere[0]}, "
                             f"or train --arch {elsewhere[0]})")
        close = difflib.get_close_matches(key, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"{where}: unknown config key {key!r}{hint}; valid keys: "
                         f"{', '.join(known)}")
    if key in AUTOMATIC and not automatic:
        raise ValueError(f"{where}: {key} is set from the data's vocabulary, not by hand")
    hint = typing.get_type_hints(type(getattr(cfg, section)))[name]
    try:
        return section, name, _coerce(value, hint)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {key}: expected {_type_name(hint)}, got {value!r}") from e


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0])
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(x.strip() if isinstance(x, str) else x, typing.get_args(hint)[0])
                     for x in items if not (isinstance(x, str) and not x.strip()))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(f"unsupported field type {hint}")
