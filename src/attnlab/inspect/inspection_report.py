"""What ``attnlab inspect`` finds, as typed dataclasses (the CLI reads attributes, not keys).

``InspectReport.to_dict()`` is the ``--json`` output and the server's answer; its keys and
order are those the tools and pages already read, and optional parts are left out when absent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from attnlab.inspect.patching import PatchEffect


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    model_type: str
    kind: str  # "encoder" | "decoder"
    engine: str
    layers: int
    heads: int
    max_tokens: int | None
    ignored_tensors: list[str]
    device: str = "cpu"  # where the model ran (reports written before it was recorded: the CPU)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(**d)


@dataclass(frozen=True)
class TokenWeight:
    """A token and the attention (or rollout / flow) weight it gets."""

    token: str
    weight: float
    position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {} if self.position is None else {"position": self.position}
        return d | {"token": self.token, "weight": self.weight}


@dataclass(frozen=True)
class LayerTop:
    """The tokens a focus attends most in one layer: averaged over heads, and per head."""

    layer: int
    mean: list[TokenWeight]
    heads: list[list[TokenWeight]]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "mean": [t.to_dict() for t in self.mean],
                "heads": [[t.to_dict() for t in h] for h in self.heads]}


@dataclass(frozen=True)
class FocusedHead:
    """A head whose row for the focus puts the most weight on one other content token."""

    layer: int
    head: int
    position: int
    token: str
    weight: float


@dataclass(frozen=True)
class Focus:
    token: str
    position: int


@dataclass(frozen=True)
class Generated:
    tokens: list[str]
    ids: list[int]
    text: str


@dataclass(frozen=True)
class BackendCheck:
    backend: str
    max_abs_diff_vs_eager: float


@dataclass(frozen=True)
class AblationReport:
    heads: list[list[int]]  # [layer, head] pairs zeroed
    effect: PatchEffect

    def to_dict(self) -> dict[str, Any]:
        return {"heads": self.heads} | self.effect.to_dict()


@dataclass(frozen=True)
class HeadWeights:
    layer: int
    head: int
    weights: list[list[float]]


@dataclass(frozen=True)
class InspectReport:
    """Built once by ``report.inspect_text``; the CLI adds its parts with ``dataclasses.replace``."""

    model: ModelInfo
    text: str
    tokens: list[str]
    special: list[bool]
    truncated: bool
    total_tokens: int
    shape: list[int]
    generated: Generated | None = None
    backend_check: BackendCheck | None = None
    focus: Focus | None = None
    top_attended: list[LayerTop] = field(default_factory=list)
    focused_heads: list[FocusedHead] = field(default_factory=list)
    rollout: list[TokenWeight] = field(default_factory=list)
    flow: list[TokenWeight] | None = None
    # added by the CLI (dataclasses.replace) when asked for
    ablation: AblationReport | None = None
    head: HeadWeights | None = None
    html: str | None = None
    png: str | None = None
    export: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": asdict(self.model), "text": self.text, "tokens": self.tokens,
                             "special": self.special, "truncated": self.truncated,
                             "total_tokens": self.total_tokens, "shape": self.shape}
        if self.generated is not None:
            d["generated"] = asdict(self.generated)
        if self.backend_check is not None:
            d["backend_check"] = asdict(self.backend_check)
        if self.focus is not None:
            d["focus"] = asdict(self.focus)
            d["top_attended"] = [lay.to_dict() for lay in self.top_attended]
            d["focused_heads"] = [asdict(h) for h in self.focused_heads]
            d["rollout"] = [t.to_dict() for t in self.rollout]
            if self.flow is not None:
                d["flow"] = [t.to_dict() for t in self.flow]
        if self.ablation is not None:
            d["ablation"] = self.ablation.to_dict()
        if self.head is not None:
            d["head"] = asdict(self.head)
        for key in ("html", "png", "export"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


def token_weights(items: list[dict[str, Any]]) -> list[TokenWeight]:
    """From the analysis functions' {"position"?, "token", "weight"} rows."""
    return [TokenWeight(str(t["token"]), float(t["weight"]), t.get("position")) for t in items]
