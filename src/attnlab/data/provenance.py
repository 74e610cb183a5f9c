"""What a run's data came from and what was dropped on the way, so a user can see that the
10 000 pairs of their file became 8 312 training pairs, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from attnlab.data.tsv import Pair


@dataclass
class DataReport:
    corpus: str
    files: list[str] = field(default_factory=list)
    read: int = 0  # pairs read from the file(s)
    blank: int = 0  # blank lines skipped
    too_long: int = 0  # dropped: over data.max_src_len / data.max_tgt_len tokens
    duplicates: int = 0  # dropped: repeated pairs (or sources), by data.dedupe
    held_out: int = 0  # dropped from train: their source is a valid or test source
    over_size: int = 0  # dropped from train: beyond data.train_size
    train: int = 0
    valid: int = 0
    test: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataReport:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def summary(self) -> str:
        sizes = f"train {self.train}, valid {self.valid}, test {self.test}"
        if not self.files:
            return f"data: {self.corpus} (generated): {sizes}"
        dropped = [f"{n} {what}" for n, what in (
            (self.too_long, "over the length limits"), (self.duplicates, "duplicates"),
            (self.held_out, "from train whose source is in valid/test"),
            (self.over_size, "beyond data.train_size")) if n]
        blank = f" ({self.blank} blank lines skipped)" if self.blank else ""
        return (f"data: {self.read} pairs read from {' + '.join(self.files)}{blank}; dropped "
                f"{', '.join(dropped) if dropped else 'none'}; {sizes}")


def dedupe(pairs: list[Pair], mode: str) -> list[Pair]:
    """Keep the first of repeated ``pairs`` (exact, after normalisation), or of repeated
    ``sources`` (one translation per source), or everything (``none``)."""
    if mode == "none":
        return list(pairs)
    seen: set[Any] = set()
    out = []
    for p in pairs:
        key = p if mode == "pairs" else p.src
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
