"""The translator architectures by ``model.arch`` name: config class, model class, loading.

``load_translator(folder)`` reads the format tag in ``model.json`` and builds the matching
class, so ``translate`` / ``evaluate`` / ``inspect`` take any trained translator folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnlab.data.io import FormatError
from attnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.models.translation import CONFIG, TranslationModel, read_model_json

MODELS: dict[str, type[TranslationModel]] = {"rnn": Seq2Seq, "transformer": Transformer}
CONFIGS: dict[str, type[Any]] = {"rnn": Seq2SeqConfig, "transformer": TransformerConfig}
ARCHS: tuple[str, ...] = tuple(MODELS)


def arch_of(model_cfg: object) -> str:
    """The ``model.arch`` of a model config object."""
    for name, cls in CONFIGS.items():
        if isinstance(model_cfg, cls):
            return name
    raise TypeError(f"model config: expected one of {', '.join(c.__name__ for c in CONFIGS.values())}, "
                    f"got {type(model_cfg).__name__}")


def build_translator(model_cfg: object) -> TranslationModel:
    return MODELS[arch_of(model_cfg)](model_cfg)


def load_translator(folder: str | os.PathLike[str]) -> TranslationModel:
    """The model saved in ``folder``, whichever architecture wrote it."""
    folder = Path(folder)
    fmt, _ = read_model_json(folder)
    for cls in MODELS.values():
        if fmt == cls.FORMAT:
            return cls.load(folder)
    known = ", ".join(f"{c.FORMAT!r} ({a})" for a, c in MODELS.items())
    raise FormatError(f"{folder / CONFIG}: expected a model format among {known}, got {fmt!r} "
                      f"(a model from another attnlab version; retrain it)")
