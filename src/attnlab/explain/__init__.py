"""Step-by-step walkthroughs of the attention arithmetic (the tutorials' worked examples)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from attnlab.explain.examples import EXAMPLES, Example, SeedClaim

# walk / perturb / Walkthrough need torch; they load on first use (PEP 562) so that the CLI can
# list the examples in `attnlab walk --help` without importing torch.
_LAZY = {"Walkthrough": "attnlab.explain.walkthrough", "perturb": "attnlab.explain.walkthrough",
         "walk": "attnlab.explain.walkthrough"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'attnlab.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # for type checkers; never executed
    from attnlab.explain.walkthrough import Walkthrough, perturb, walk

__all__ = ["EXAMPLES", "Example", "SeedClaim", "Walkthrough", "perturb", "walk"]
