"""The model's hyper-parameters, stored as JSON next to its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ATTENTIONS: tuple[str, ...] = (
    "none",  # the fixed-vector encoder-decoder (Cho et al. 2014; Bahdanau's RNNencdec)
    "bahdanau",  # additive attention from s_{i-1} (Bahdanau et al. 2014)
    "luong-dot", "luong-general", "luong-concat",  # global attention (Luong et al. 2015 §3.1)
    "luong-local-m", "luong-local-p",  # local attention (Luong et al. 2015 §3.2)
)
RNNS: tuple[str, ...] = ("gru", "lstm")
SCORES: tuple[str, ...] = ("dot", "general", "concat")


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = 0  # filled in from the data's vocabulary
    tgt_vocab_size: int = 0
    attention: str = "luong-general"
    rnn: str = "gru"
    emb_dim: int = 64
    hidden: int = 128  # decoder state; a bidirectional encoder uses hidden/2 per direction
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    input_feed: bool = True  # Luong §3.3: feed h̃_{t-1} into the next step (luong-* only)
    window: int = 10  # D of local-m / local-p (Luong §3.2: D = 10)
    local_score: str = "general"  # the eq. (8) score used inside local windows
    attn_dim: int = 0  # hidden size of additive / concat scores; 0 = hidden

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"model.attention: expected one of {', '.join(ATTENTIONS)}, "
                             f"got {self.attention!r}")
        if self.rnn not in RNNS:
            raise ValueError(f"model.rnn: expected gru or lstm, got {self.rnn!r}")
        if self.local_score not in SCORES:
            raise ValueError(f"model.local_score: expected one of {', '.join(SCORES)}, "
                             f"got {self.local_score!r}")
        for name in ("emb_dim", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}: expected >= 1, got {getattr(self, name)}")
        if self.bidirectional and self.hidden % 2:
            raise ValueError(f"model.hidden: expected an even size with a bidirectional encoder "
                             f"(hidden/2 per direction), got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: expected a float in [0, 1), got {self.dropout}")
        if self.window < (1 if self.attention == "luong-local-p" else 0):
            raise ValueError(f"model.window: expected D >= 1 for local-p (σ = D/2) and >= 0 "
                             f"otherwise, got {self.window}")
        if self.attn_dim < 0:
            raise ValueError(f"model.attn_dim: expected >= 0 (0 = hidden), got {self.attn_dim}")

    def check_vocab(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(self, name) < 5:
                raise ValueError(f"model.{name}: expected >= 5 (4 specials + tokens), "
                                 f"got {getattr(self, name)}")

    @property
    def sequential(self) -> bool:
        """Whether teacher forcing must run step by step: Bahdanau reads s_{i-1} before
        computing s_i, and input feeding makes step t depend on h̃_{t-1}."""
        return self.attention == "bahdanau" or (self.attention.startswith("luong")
                                                and self.input_feed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seq2SeqConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}; expected some of "
                             f"{sorted(known)}")
        return cls(**d)
