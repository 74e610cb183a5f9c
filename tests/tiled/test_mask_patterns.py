"""Each mask's Pattern against its own predicate: the structure answers the backends rely on.

The block maps built from these answers are checked tile by tile in test_tiled_blockmap.py; here
the answers themselves: interval rows, the pieces a pattern splits into, the SDPA form, the
span. And the promise of the design: a new pattern is one Pattern subclass, no backend edit.
"""

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import attnlab
from attnlab import masks
from attnlab.backends import block_map
from attnlab.functional.masks import Mask, Pattern, as_mask, materialize
from attnlab.functional.masks.intervals import row_intervals

SHAPES = [(23, 29), (24, 24), (6, 17), (29, 23)]


def _dense_rows(lo: torch.Tensor, hi: torch.Tensor, lk: int) -> torch.Tensor:
    j = torch.arange(lk).view(1, 1, -1)
    return (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))  # (Bm, Lq, Lk)


@pytest.mark.parametrize(("lq", "lk"), SHAPES)
def test_interval_answers_equal_the_predicate(tl, lq, lk):
    known = 0
    for name, m in tl.patterns(lq, lk).items():
        if m is None:
            continue
        iv = row_intervals(as_mask(m), lq, lk)
        if iv is None:
            continue
        known += 1
        got = _dense_rows(iv.lo, iv.hi, lk)  # (Bm, Lq, Lk)
        want = materialize(m, lq, lk, batch=2)[:, 0]  # (2, Lq, Lk)
        assert torch.equal(got.expand_as(want), want), name
    assert known >= 8  # causal, windows, document(s), padding, prefix, and their intersection


@pytest.mark.parametrize(("lq", "lk"), [(24, 24), (23, 29), (30, 30)])
@pytest.mark.parametrize("views", [True, False])
def test_parts_partition_the_mask(lq, lk, views):
    cases = [masks.sparse_transformer_strided(4), masks.sparse_transformer_fixed(5, 2),
             masks.sparse_transformer_fixed(5, 2, causal=False), masks.dilated_sliding_window(3, 1, 3),
             masks.dilated_sliding_window(2, 0, 4, align="bottom-right")]
    for m in cases:
        parts = m.pattern.parts(lq, lk, views=views)
        assert parts, m
        cover = torch.zeros(lq, lk, dtype=torch.int64)
        for p in parts:
            if p.residue is not None:  # class r: row t = position r + t·d, keys likewise
                d = p.residue
                inner = materialize(p.mask, lq // d, lk // d)[0, 0]
                for r in range(d):
                    cover[r::d, r::d] += inner.long()
                continue
            kidx = torch.arange(lk) if p.k_index is None else p.k_index
            qidx = torch.arange(lq) if p.q_perm is None else p.q_perm
            local = materialize(p.mask, lq, kidx.numel())[0, 0].long()  # (Lq, Lk') in the part's order
            cover[qidx.view(-1, 1), kidx.view(1, -1)] += local
        assert cover.max() <= 1, f"{m}: parts overlap"
        assert torch.equal(cover.bool(), materialize(m, lq, lk)[0, 0]), m


@pytest.mark.parametrize(("lq", "lk"), [(7, 7), (3, 9), (1, 9), (9, 3)])
def test_sdpa_forms_mean_what_sdpa_does(lq, lk):
    for m in (masks.full(), masks.causal(), masks.causal("bottom-right"), masks.sliding_window(2, 0)):
        form = m.pattern.sdpa_form(lq, lk)
        dense = materialize(m, lq, lk)[0, 0]
        if form == "full":
            assert dense.all(), m
        elif form == "causal":  # SDPA's is_causal: top-left
            assert torch.equal(dense, torch.ones(lq, lk, dtype=torch.bool).tril()), m
        else:
            assert form is None
    assert masks.sliding_window(2, 0).pattern.sdpa_form(7, 7) is None
    assert masks.causal("bottom-right").pattern.sdpa_form(3, 9) is None  # not top-left: materialised


def test_spans_and_layout_blocks():
    assert masks.sliding_window(5, 2).pattern.span(100) == 8
    assert masks.dilated_sliding_window(3, 1, 2).pattern.span(100) == 9
    assert (masks.sliding_window(5, 0) & masks.causal()).pattern.span(100) == 6  # the narrower
    assert (masks.sliding_window(5, 0) | masks.causal()).pattern.span(100) == 100
    assert masks.bigbird(32).pattern.layout_block == 32
    assert masks.causal().pattern.layout_block is None
    assert as_mask(lambda b, h, q, kv: q >= kv).kind == "custom"


@dataclass(frozen=True)
class EveryOther(Pattern):
    """A pattern defined outside attnlab: query i sees keys j <= i of i's parity."""

    kind: ClassVar[str] = "every_other"

    def tiles(self, mask, g, i0, i1, classify):
        _, r1, c0, _ = g.corners(i0, i1)
        ne = c0 <= r1  # some key at or below some row (both parities occur in tiles of >= 2)
        return ne, torch.zeros_like(ne), False

    def span(self, kv_len):
        return max(1, kv_len // 2)


def every_other() -> Mask:
    return Mask(lambda b, h, q, kv, lq, lk: (kv <= q) & ((q - kv) % 2 == 0), "every_other", EveryOther())


def test_a_new_pattern_is_one_class_and_no_backend_edit():
    m = every_other()
    bm = block_map(m, 64, 64, 8, 8)
    assert bm.density() < 0.6  # its tiles answer skipped the upper triangle
    q, k, v = (torch.randn(1, 2, 64, 8, dtype=torch.float64) for _ in range(3))
    got = attnlab.attention(q, k, v, mask=m, backend="tiled")
    want = attnlab.attention(q, k, v, mask=m, backend="eager")
    torch.testing.assert_close(got.context, want.context)


def test_no_backend_compares_mask_kinds():
    """Backends ask a mask's Pattern; only functional/masks reads kinds (issue 15: 33 string
    comparisons in 5 backend files before the patterns). Any ``.kind`` / ``.params`` read in
    backends/ or functional/ outside the masks package fails this test."""
    root = Path(attnlab.__file__).parent
    offenders = []
    for path in [*root.joinpath("backends").rglob("*.py"), *root.joinpath("functional").rglob("*.py")]:
        if path.parent.name == "masks":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("kind", "params"):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders
