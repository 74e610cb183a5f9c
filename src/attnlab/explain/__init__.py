"""Step-by-step walkthroughs of the attention arithmetic (the seeds' worked examples)."""

from attnlab.explain.examples import EXAMPLES, Example, SeedClaim
from attnlab.explain.walkthrough import Walkthrough, perturb, walk

__all__ = ["EXAMPLES", "Example", "SeedClaim", "Walkthrough", "perturb", "walk"]
