"""Hyper-parameters of the Transformer translator and the decoder-only LM, stored as JSON.

Names follow Vaswani et al. 2017 (Table 3): ``d_model``, ``heads`` (h), ``layers`` (N),
``ffn`` (d_ff), ``dropout`` (P_drop). Errors name the config key (``model.<name>``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Self, cast

from attnlab.arguments import expect_int

POSITIONS: tuple[str, ...] = (
    "sinusoidal",  # fixed sin/cos added to the embeddings (§3.5)
    "learned",  # a trained table added to the embeddings (§3.5, "learned positional embeddings")
    "rotary",  # q and k rotated by position in every self-attention (Su et al. 2021)
    "none",  # no positions: the encoder sees a bag of tokens, the decoder only causality
)
NORMS: tuple[str, ...] = (
    "post",  # LayerNorm(x + Sublayer(x)) (§3.1), the paper's
    "pre",  # x + Sublayer(LayerNorm(x)), final LayerNorm (Xiong et al. 2020): no warm-up needed
)


def _check_common(cfg: Any) -> None:
    for name in ("d_model", "heads", "layers", "ffn", "max_len"):
        expect_int(f"model.{name}", getattr(cfg, name), 1)
    if cfg.d_model % cfg.heads:
        raise ValueError(f"model.d_model: expected a multiple of model.heads={cfg.heads} "
                         f"(d_k = d_model / h, §3.2.2), got {cfg.d_model}")
    if cfg.positions not in POSITIONS:
        raise ValueError(f"model.positions: expected one of {', '.join(POSITIONS)}, "
                         f"got {cfg.positions!r}")
    if cfg.positions == "rotary" and (cfg.d_model // cfg.heads) % 2:
        raise ValueError(f"model.heads: rotary positions need an even head size d_model/heads, "
                         f"got {cfg.d_model}/{cfg.heads} = {cfg.d_model // cfg.heads}")
    if cfg.norm not in NORMS:
        raise ValueError(f"model.norm: expected one of {', '.join(NORMS)}, got {cfg.norm!r}")
    for name in ("dropout", "attn_dropout"):
        value = getattr(cfg, name)
        if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise ValueError(f"model.{name}: expected a float in [0, 1), got {value!r}")


def _from_dict(cls: Any, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"model config: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**d)


class _Shared:
    """What both Transformer configs share: the head width and the dict round trip."""

    d_model: int
    heads: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cast(Self, _from_dict(cls, d))


@dataclass
class TransformerConfig(_Shared):
    """The encoder-decoder (Vaswani et al. 2017, Fig. 1)."""

    src_vocab_size: int = 0  # filled in from the data's vocabulary
    tgt_vocab_size: int = 0
    d_model: int = 128
    heads: int = 4
    layers: int = 2  # N: encoder layers, and as many decoder layers
    ffn: int = 512  # d_ff, the inner size of the position-wise feed-forward network (eq. 2)
    dropout: float = 0.1  # on every sublayer output and on the embedding sums (§5.4)
    attn_dropout: float = 0.0  # on the attention weights (tensor2tensor's; not in the paper)
    positions: str = "sinusoidal"
    norm: str = "post"
    tie_embeddings: bool = True  # target embedding = pre-softmax projection (§3.4)
    max_len: int = 256  # longest sequence for learned positions (and the tables' size)

    def __post_init__(self) -> None:
        _check_common(self)

    def check_vocab(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(self, name) < 5:
                raise ValueError(f"model.{name}: expected >= 5 (4 specials + tokens), "
                                 f"got {getattr(self, name)}")



@dataclass
class LMConfig(_Shared):
    """A decoder-only language model: the Transformer's decoder without cross-attention."""

    vocab_size: int
    d_model: int = 128
    heads: int = 4
    layers: int = 2
    ffn: int = 512
    dropout: float = 0.0
    attn_dropout: float = 0.0
    positions: str = "learned"
    norm: str = "pre"
    tie_embeddings: bool = False
    max_len: int = 256
    # No feed-forward sublayers: the residual stream is written by attention heads only, the
    # setting of Elhage et al. 2021 and Olsson et al. 2022 (induction heads).
    attention_only: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        if self.vocab_size < 1:
            raise ValueError(f"model.vocab_size: expected >= 1, got {self.vocab_size}")

