"""Which measurements a benchmark run makes.

- ``quick``: a smoke run in seconds (tests use it): small n, no FlexAttention compile.
- ``standard``: the issue's grid - dense, causal, sliding window 128/512, block-sparse,
  document; n = 1k..64k; forward and forward+backward; all peers (with caps).
- ``targets``: exactly what the issue's targets need (sliding window 256 at 16k/64k/1M,
  causal 8k and 131072 fwd+bwd, every pattern at 16k).
- ``patterns``: the sparse patterns at 16k and 64k against FlexAttention and SDPA.
- ``gemma3``: Gemma 3's local layers (4 query heads on 1 K/V head, head dim 256, a 512-token
  sliding window) at 4k..32k against FlexAttention and SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnlab.bench.cases import CASES, SHAPES, STANDARD, Shape
from attnlab.bench.peers import PEERS

Spec = tuple[str, int, str, str]  # case, n, mode, peer
MODES = ("fwd", "fwd+bwd")
STANDARD_CASES = ("dense", "causal", "sliding_window_128", "sliding_window_512", "block_sparse", "document")
PATTERN_CASES = ("sliding_window_256", "longformer", "bigbird", "strided", "fixed", "dilated")
K = 1024


@dataclass(frozen=True)
class Suite:
    name: str
    specs: list[Spec] = field(default_factory=list)
    repeats: int = 3
    max_seconds: float = 60.0
    shape: Shape = STANDARD


def grid(cases: tuple[str, ...] | list[str], ns: list[int], modes: tuple[str, ...] | list[str],
         peers: tuple[str, ...] | list[str]) -> list[Spec]:
    return [(c, n, m, p) for c in cases for n in ns for m in modes for p in peers]


def _targets() -> list[Spec]:
    specs = grid(["sliding_window_256"], [16 * K], ["fwd"], ["tiled", "flex", "sdpa"])
    specs += grid(["sliding_window_256"], [64 * K, 1024 * K], ["fwd"], ["tiled"])
    specs += grid(["causal"], [8 * K], ["fwd"], ["tiled", "sdpa"])
    specs += grid(["causal"], [128 * K], ["fwd+bwd"], ["tiled"])
    every = [c for c in CASES if c != "sliding_window_256"]
    specs += grid(every, [16 * K], ["fwd"], ["tiled"])
    return specs


def make_suite(name: str, *, cases: list[str] | None = None, ns: list[int] | None = None,
               modes: list[str] | None = None, peers: list[str] | None = None) -> Suite:
    """A named suite, optionally narrowed (or, for ``--cases``/``--n``, redefined) by the CLI."""
    for nm, vals, allowed in (("cases", cases, list(CASES)), ("modes", modes, list(MODES)),
                              ("peers", peers, list(PEERS))):
        bad = [x for x in vals or [] if x not in allowed]
        if bad:
            raise ValueError(f"{nm}: expected names from {allowed}, got {bad}")
    if name == "quick":
        base = Suite("quick", grid(cases or ["dense", "causal", "sliding_window_128", "block_sparse",
                                             "document"], ns or [256], modes or list(MODES),
                                   peers or ["tiled", "sdpa", "eager"]), repeats=1, max_seconds=10)
    elif name == "standard":
        base = Suite("standard", grid(cases or STANDARD_CASES, ns or [K * 2**i for i in range(7)],
                                      modes or MODES, peers or PEERS), max_seconds=60)
    elif name == "patterns":
        base = Suite("patterns", grid(cases or PATTERN_CASES, ns or [16 * K, 64 * K], modes or ["fwd"],
                                      peers or ["tiled", "flex", "sdpa"]), max_seconds=60)
    elif name == "targets":
        specs = [s for s in _targets() if (not cases or s[0] in cases) and (not ns or s[1] in ns)
                 and (not modes or s[2] in modes) and (not peers or s[3] in peers)]
        base = Suite("targets", specs, repeats=3, max_seconds=3600)
    elif name == "gemma3":
        base = Suite("gemma3", grid(cases or ["sliding_window_512"], ns or [4 * K, 8 * K, 16 * K, 32 * K],
                                    modes or ["fwd"], peers or ["tiled", "flex", "sdpa"]),
                     max_seconds=300, shape=SHAPES["gemma3"])
    else:
        raise ValueError(f"suite: expected quick, standard, patterns, targets or gemma3, got {name!r}")
    return base
