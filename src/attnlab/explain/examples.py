"""Worked examples from attention tutorials, with the numbers the tutorials print.

Each :class:`SeedClaim` is a value as its source article prints it; the walkthrough recomputes it exactly
and says where the printed rounding differs from the exact result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeedClaim:
    what: str  # "scores" | "weights" | "context"
    row: int  # query row the seed talks about
    values: tuple[float, ...]
    decimals: int  # how many decimals the seed prints


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    source: str
    q_tokens: tuple[str, ...]
    k_tokens: tuple[str, ...]
    q: tuple[tuple[float, ...], ...]
    k: tuple[tuple[float, ...], ...]
    v: tuple[tuple[float, ...], ...]
    scaled: bool  # does the seed divide by sqrt(d)?
    story: str
    claims: tuple[SeedClaim, ...] = field(default=())
    value_labels: tuple[str, ...] | None = None


_CAT = ((0.2, 0.8, 0.1), (0.9, 0.3, 0.7), (0.4, 0.6, 0.5))

EXAMPLES: dict[str, Example] = {
    "cat-sat": Example(
        name="cat-sat",
        title='Self-attention over "The cat sat" (Q = K = V = the embeddings)',
        source="an attention tutorial, §1.7 'Building Intuition: A Visual Walkthrough'",
        q_tokens=("The", "cat", "sat"),
        k_tokens=("The", "cat", "sat"),
        q=_CAT, k=_CAT, v=_CAT,
        scaled=False,
        story='The tutorial skips the projections (Q = K = V) and the 1/sqrt(d) scaling, and follows '
              'the query "sat": it scores highest against "cat".',
        claims=(
            SeedClaim("scores", 2, (0.61, 0.89, 0.77), 2),
            SeedClaim("weights", 2, (0.26, 0.39, 0.35), 2),
            SeedClaim("context", 2, (0.55, 0.50, 0.48), 2),
        ),
    ),
    "library": Example(
        name="library",
        title="The library: a query for books, matched against their labels",
        source="'Attention Mechanism 101' §3 and an attention tutorial, §1.3 'Example: Finding a Book'",
        q_tokens=("machine learning Python",),
        k_tokens=("ML algorithms Python", "Web development JavaScript", "Deep learning PyTorch"),
        # features: [machine learning, python, web/js, deep learning]
        q=((1.0, 1.0, 0.0, 0.0),),
        k=((1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 1.0)),
        # values: which book's content comes back (one-hot), so the context reads as a mix
        v=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        value_labels=("scikit-learn chapter", "React tutorial", "neural networks"),
        scaled=False,
        story="Query = what you want, key = the label on the book, value = its content. Labels "
              "are bag-of-topic vectors [ML, Python, Web/JS, Deep learning]; the articles' weights "
              "are illustrative, so attnlab shows what these vectors really give.",
        claims=(SeedClaim("weights", 0, (0.6, 0.05, 0.35), 2),),
    ),
    "it": Example(
        name="it",
        title='Dot products of the query "it" with "cat", "sat", "mat"',
        source="'Attention Mechanism 101' §3 (the 4-dimensional example)",
        q_tokens=("it",),
        k_tokens=("cat", "sat", "mat"),
        q=((1.0, 0.0, 1.0, 0.0),),
        k=((1.0, 1.0, 0.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, 0.0, 1.0, 1.0)),
        v=((1.0, 1.0, 0.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, 0.0, 1.0, 1.0)),
        scaled=False,
        story="Every dot product is 1, so attention is uniform: the article's point that real, "
              "learned embeddings are what make 'it' prefer 'cat'.",
        claims=(SeedClaim("scores", 0, (1.0, 1.0, 1.0), 0),),
    ),
}
