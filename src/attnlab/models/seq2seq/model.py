"""The encoder-decoder as one module, with save/load to a folder.

A saved model is two files: ``model.safetensors`` (weights; no pickle) and ``model.json``
(format tag + :class:`Seq2SeqConfig`). Both are written atomically; loading checks the
format tag, the presence of both files and that every tensor has the expected name and shape,
and says which of these failed.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from attnlab.data.io import FormatError, atomic_write_bytes, read_json, write_json
from attnlab.models.seq2seq.config import Seq2SeqConfig
from attnlab.models.seq2seq.decoder import AttentionalDecoder, DecoderOutput, DecoderState, StepOutput
from attnlab.models.seq2seq.encoder import Encoder, Memory

MODEL_FORMAT = "attnlab.seq2seq/1"
WEIGHTS, CONFIG = "model.safetensors", "model.json"


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        cfg.check_vocab()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = AttentionalDecoder(cfg)

    def encode(self, src: Tensor, src_lengths: Tensor) -> Memory:
        """src (B, Ls), src_lengths (B,) -> Memory with the attention's keys cached."""
        if bool((src_lengths < 1).any()):
            raise ValueError(f"src_lengths: expected every source to have >= 1 token, "
                             f"got {src_lengths.tolist()}")
        return self.decoder.prepare(self.encoder(src, src_lengths))

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> DecoderOutput:
        """Teacher forcing: logits (B, Lt, V) and alignments (B, Lt, Ls)."""
        return self.decoder(tgt_in, self.encode(src, src_lengths))

    def init_state(self, memory: Memory) -> DecoderState:
        return self.decoder.init_state(memory)

    def step(self, y_prev: Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        return self.decoder.step(y_prev, state, memory)

    # -- files -------------------------------------------------------------------------
    def weights_bytes(self) -> bytes:
        return st_save({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                       metadata={"format": MODEL_FORMAT})

    def save(self, folder: str | os.PathLike[str]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / WEIGHTS, self.weights_bytes())
        write_json(folder / CONFIG, {"format": MODEL_FORMAT, "config": self.cfg.to_dict()})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Seq2Seq:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model: expected a model folder, got {str(folder)!r} "
                                    f"(no such folder)")
        missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"model: {folder} is missing {', '.join(missing)}; "
                                    f"expected a folder written by `attnlab train`")
        meta = read_json(folder / CONFIG, "model config")
        fmt = meta.get("format") if isinstance(meta, dict) else None
        if fmt != MODEL_FORMAT:
            raise FormatError(f"{folder / CONFIG}: expected model format {MODEL_FORMAT!r}, got "
                              f"{fmt!r} (a model from another attnlab version; retrain it)")
        try:
            model = cls(Seq2SeqConfig.from_dict(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{folder / CONFIG}: invalid model config: {e}") from e
        model.load_state_dict(read_weights(folder / WEIGHTS, model.state_dict()))
        return model


def read_weights(path: Path, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Load a safetensors file and check it holds exactly ``expected``'s names and shapes."""
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: expected a safetensors file, got an error: {e}") from e
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise FormatError(f"{path}: tensors do not match the config (missing {missing[:5]}, "
                          f"unexpected {extra[:5]})")
    for k, v in expected.items():
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype:
            raise FormatError(f"{path}: tensor {k}: expected {v.dtype} {tuple(v.shape)}, got "
                              f"{tensors[k].dtype} {tuple(tensors[k].shape)}")
    return tensors
