"""Context-parallel attention on gloo: every case against the single-process tiled result.

Processes are spawned once per world size (2 and 4) with a file store; every case runs inside
that one launch and the parent waits at most TIMEOUT seconds (a hang fails, it never blocks
the suite). The plan (which rank needs which shard) is tested without processes.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from attnlab import masks, score_mods
from attnlab.distributed import make_layout, ring_attention, ring_plan, shard, unshard

from .conftest import run_ranks

TIMEOUT = 120  # seconds for one world (spawn + every case); a hang fails the test


# ---- without processes ---------------------------------------------------------------------------

def test_sliding_window_needs_one_hop_whatever_the_world_size():
    for world in (2, 4, 8, 16):
        plan = ring_plan(masks.sliding_window(64, 0), make_layout("contiguous", world), 256, 256)
        assert plan.hops() == [0, 1]  # a window narrower than a shard: the previous rank only
        need = plan.needed
        assert int(need.sum(1).max()) == 2  # at most 2 shards' K/V per rank (its own + one)
        assert bool(need[0, 0]) and not bool(need[0, 1:].any())


def test_causal_contiguous_is_skewed_and_zigzag_is_balanced():
    for world in (2, 4, 8):
        contig = ring_plan(masks.causal(), make_layout("contiguous", world), 512, 512)
        assert [int(x) for x in contig.needed.sum(1)] == list(range(1, world + 1))  # rank r: r + 1 shards
        zig = ring_plan(masks.causal(), make_layout("zigzag", world), 512, 512)
        tiles = torch.tensor([zig.tiles(r) for r in range(world)], dtype=torch.float64)
        assert float(tiles.max() / tiles.mean()) <= 1.1  # the balance target
        ct = torch.tensor([contig.tiles(r) for r in range(world)], dtype=torch.float64)
        assert float(ct.max() / ct.mean()) > 1.3


def test_full_attention_needs_every_shard():
    plan = ring_plan(None, make_layout("contiguous", 4), 8, 8)
    assert plan.hops() == [0, 1, 2, 3] and bool(plan.needed.all())


def test_shard_and_unshard_round_trip_and_refuse_uneven_lengths():
    x = torch.arange(2 * 3 * 24 * 2).view(2, 3, 24, 2)
    for layout in ("contiguous", "zigzag"):
        parts = [shard(x, r, 4, layout=layout) for r in range(4)]
        assert torch.equal(unshard(parts, layout=layout), x)
    assert torch.equal(shard(x, 1, 4, layout="zigzag")[0, 0, :, 0],
                       torch.tensor([3, 4, 5, 18, 19, 20]) * 2)  # chunks 1 and 6 of 8
    with pytest.raises(ValueError, match="does not split into 8 equal chunks"):
        shard(torch.zeros(1, 1, 20, 2), 0, 4, layout="zigzag")
    with pytest.raises(ValueError, match="layout: expected one of"):
        make_layout("spiral", 2)


def test_without_a_process_group_the_error_says_what_to_call():
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        ring_attention(q, q, q)


# ---- with processes ------------------------------------------------------------------------------

def _cases(L: int, H: int) -> dict:
    docs = torch.tensor([0] * (L // 4) + [1] * (L // 2) + [2] * (L - L // 4 - L // 2))
    g = torch.Generator().manual_seed(5)
    layout = torch.rand(L // 8, L // 8, generator=g) < 0.4
    return {
        "full": (None, None),
        "causal": (masks.causal(), None),
        "window": (masks.sliding_window(5, 0) & masks.causal(), None),
        "documents": (masks.document(docs) & masks.causal(), None),
        "block_sparse": (masks.block_sparse(layout, 8), None),
        "alibi": (masks.causal(), score_mods.alibi(H)),  # per-head slopes: heads in global order
        "masked_row": (masks.padding(q_lengths=[L - 3, L - 3]), None),  # the last 3 rows see nothing
    }


def _check(name, got, want, tol, what):
    err = (got - want).abs().max().item()
    assert err <= tol, f"{name}: {what} differs by {err:.3g} (tolerance {tol:.1g})"


def _ref(q, k, v, mask, score_mod, weight):
    from attnlab import attention

    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = attention(qr, kr, vr, mask=mask, score_mod=score_mod, backend="tiled")
    (out.context * weight).sum().backward()
    return out, qr.grad, kr.grad, vr.grad


def _run_cases(rank: int, world: int) -> None:
    import torch.distributed as dist

    from attnlab.distributed import CommStats

    B, H, Hkv, L, D = 2, 2 * world, world, 16 * world, 8  # GQA; heads divisible for ulysses
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, L, D, generator=g, dtype=torch.float64) for _ in range(2))  # GQA
    w = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    for name, (mask, mod) in _cases(L, H).items():
        ref, dq, dk, dv = _ref(q, k, v, mask, mod, w)
        for layout in ("contiguous", "zigzag"):
            for mode in ("ring", "allgather", "ulysses"):
                sh = lambda t, lay=layout: shard(t, rank, world, layout=lay)  # noqa: E731
                qs, ks, vs = (sh(t).requires_grad_() for t in (q, k, v))
                st = CommStats()
                out = ring_attention(qs, ks, vs, mask=mask, score_mod=mod, layout=layout, mode=mode, stats=st)
                (out.context * sh(w)).sum().backward()
                tag = f"{name}/{layout}/{mode}"
                _check(tag, out.context, sh(ref.context), 1e-10, "context")
                ref_lse = shard(ref.lse, rank, world, layout=layout, dim=-1)  # (B, H, L/P)
                lse_ok = torch.isfinite(ref_lse)
                assert torch.equal(torch.isfinite(out.lse), lse_ok), f"{tag}: -inf rows differ"
                _check(tag, out.lse[lse_ok], ref_lse[lse_ok], 1e-10, "lse")
                assert not out.context.isnan().any(), tag
                for got, want, what in ((qs.grad, dq, "dq"), (ks.grad, dk, "dk"), (vs.grad, dv, "dv")):
                    _check(tag, got, sh(want), 1e-10, what)
                if mode == "ring":  # bytes and steps as the plan says
                    plan = ring_plan(mask, make_layout(layout, world), L // world, L // world,
                                     batch=B, heads=H)
                    shard_bytes = (ks.numel() + vs.numel()) * 8
                    sends = sum(plan.sends(rank, s) for s in plan.hops())
                    assert st.bytes_sent == sends * shard_bytes, tag
                    assert st.hops == plan.hops(), tag
    _float32_case(rank, world, q, k, v)
    _bad_input(rank, world)
    dist.barrier()


def _float32_case(rank, world, q, k, v):
    """float32 by the error-ratio rule: the ring's error against float64 at most 2x eager's."""
    from attnlab import attention
    from attnlab.testing import assert_error_ratio

    m = masks.causal()
    ref = attention(q, k, v, mask=m, backend="eager").context
    low = attention(q.float(), k.float(), v.float(), mask=m, backend="eager").context
    sh = lambda t: shard(t, rank, world, layout="zigzag")  # noqa: E731
    out = ring_attention(sh(q.float()), sh(k.float()), sh(v.float()), mask=m, layout="zigzag")
    assert_error_ratio(out.context, sh(ref), sh(low), what="float32 ring context")


def _bad_input(rank, world):
    q = torch.zeros(1, 2, 4 + 2 * rank, 4)  # a different shard length on every rank
    with pytest.raises(ValueError, match="same shape on every rank"):
        ring_attention(q, q, q)
    z = torch.zeros(1, 2, 3, 4)  # odd: zigzag needs two chunks per rank
    with pytest.raises(ValueError, match="divisible by 2"):
        ring_attention(z, z, z, layout="zigzag")
    with pytest.raises(TypeError, match="global positions, got a Tensor"):
        ring_attention(z, z, z, mask=torch.ones(3, 3, dtype=torch.bool))
    table = torch.zeros(8, requires_grad=True)
    learned = lambda s, b, h, qi, ki: s + table[(qi - ki).clamp(0, 7)]  # noqa: E731
    with pytest.raises(ValueError, match="score_mod: it holds tensors that want gradients"):
        ring_attention(z, z, z, score_mod=learned)
    if world > 2:
        with pytest.raises(ValueError, match="ulysses"):
            ring_attention(z, z, z, mode="ulysses")  # 2 heads over 4 ranks


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # A collective that waits more than 60 s raises instead of hanging (gloo's default: 30 min).
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        _run_cases(rank, world)
        Path(out_dir, f"ok{rank}").write_text("ok")
    except BaseException:
        Path(out_dir, f"err{rank}").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_every_mode_matches_single_process_tiled(world):
    run_ranks(_worker, world, TIMEOUT, f"world {world}: ")

