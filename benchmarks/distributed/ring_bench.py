"""What context parallelism buys on CPUs: memory, bytes and balance per rank, and wall time.

Four processes on two cores cannot show a speed-up, so this reports what scales:

1. ``memory``: peak RSS increase per rank of one causal forward+backward at growing lengths for
   P = 1, 2, 4 (each rank builds only its own shard; one thread per process), next to the
   single-process tiled call (P1_tiled); about 100 MiB of it is the tiled kernel's tile
   scratch, the same at every P and length;
2. ``bytes``: K/V bytes each rank sends, mask-aware ring vs all-gather vs a plain ring (every
   shard to every rank), for causal and a sliding window, P = 2, 4, 8 (measured by running
   for P <= 4, from the plan for P = 8: the plan is what the run follows, a test checks it);
3. ``balance``: (query, key) pairs each rank's kernel computes under a causal mask, contiguous
   vs zigzag (max / mean over ranks);
4. ``time``: one causal forward+backward, P = 1 vs 2, one thread per process, ring vs allgather
   (on a quiet machine only; two cores).

    python benchmarks/distributed/ring_bench.py --write benchmarks/distributed/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

H, D = 4, 64


def _shard_inputs(rank: int, world: int, L: int, layout: str, grad: bool) -> tuple[torch.Tensor, ...]:
    """Only this rank's rows, generated directly (no full tensor anywhere)."""
    from attnlab.distributed import make_layout

    pos = make_layout(layout, world).positions(rank, L // world)
    out = []
    for i in range(3):
        g = torch.Generator().manual_seed(1000 * i + rank)
        t = torch.randn(1, H, pos.numel(), D, generator=g)
        out.append(t.requires_grad_(grad))
    return tuple(out)


def _worker(rank: int, world: int, store: str, job: dict, out: str) -> None:
    import torch.distributed as dist

    from attnlab import masks
    from attnlab.bench.memory import peak_rss
    from attnlab.distributed import CommStats, ring_attention

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    res: dict = {"rank": rank}
    q, k, v = _shard_inputs(rank, world, job["L"], job["layout"], grad=True)
    mask = masks.causal() if job["mask"] == "causal" else masks.sliding_window(job["window"], 0)
    if job["kind"] == "memory":
        dist.barrier()
        with peak_rss() as mem:
            o = ring_attention(q, k, v, mask=mask, layout=job["layout"], mode=job["mode"])
            o.context.sum().backward()
        res["peak_bytes"], res["method"] = mem.bytes, mem.method
    elif job["kind"] == "bytes":
        st = CommStats()
        ring_attention(q.detach(), k.detach(), v.detach(), mask=mask, layout=job["layout"], mode=job["mode"],
                       stats=st)
        res["bytes_sent"], res["hops"] = st.bytes_sent, st.hops
    else:  # time
        times = []
        for _ in range(job["repeats"] + 1):
            dist.barrier()
            t0 = time.perf_counter()
            o = ring_attention(q, k, v, mask=mask, layout=job["layout"], mode=job["mode"])
            o.context.sum().backward()
            dist.barrier()
            times.append(time.perf_counter() - t0)
        res["seconds"] = statistics.median(times[1:])  # the first call builds block maps
    Path(out, f"r{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


def run(world: int, job: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, str(Path(tmp, "store")), job, tmp), nprocs=world,
                           start_method="spawn")
        return [json.loads(Path(tmp, f"r{r}.json").read_text()) for r in range(world)]


def _single_process_memory(L: int) -> int:
    """P = 1 reference: attnlab.attention(backend="tiled") on the whole sequence."""
    from attnlab import attention, masks
    from attnlab.bench.memory import peak_rss

    torch.set_num_threads(1)
    q, k, v = _shard_inputs(0, 1, L, "contiguous", grad=True)
    with peak_rss() as mem:
        attention(q, k, v, mask=masks.causal(), backend="tiled").context.sum().backward()
    return mem.bytes


def memory(lengths: list[int]) -> list[dict]:
    rows = []
    for L in lengths:
        row = {"L": L, "P1_tiled_MiB": _mem_in_subprocess(L) / 2**20}
        for P in (1, 2, 4):
            res = run(P, {"kind": "memory", "L": L, "layout": "zigzag", "mask": "causal", "mode": "ring"})
            row[f"P{P}_ring_max_MiB"] = max(r["peak_bytes"] for r in res) / 2**20
        rows.append(row)
    return rows


def _mem_in_subprocess(L: int) -> int:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:  # a fresh process: the peak is this call's alone
        return int(pool.apply(_single_process_memory, (L,)))


def bytes_table(L: int, window: int) -> list[dict]:
    from attnlab import masks
    from attnlab.distributed import make_layout, ring_plan

    rows = []
    shard_kv = lambda P: 2 * (L // P) * H * D * 4  # noqa: E731  K and V of one shard, float32
    for mask_name in ("causal", "window"):
        for P in (2, 4, 8):
            m = masks.causal() if mask_name == "causal" else masks.sliding_window(window, 0)
            plan = ring_plan(m, make_layout("contiguous", P), L // P, L // P)
            planned = [sum(plan.sends(r, s) for s in plan.hops()) * shard_kv(P) for r in range(P)]
            if P <= 4:
                job = {"kind": "bytes", "L": L, "layout": "contiguous", "mask": mask_name, "mode": "ring",
                       "window": window}
                measured = [r["bytes_sent"] for r in run(P, job)]
                assert measured == planned, (measured, planned)  # the run follows the plan
                job["mode"] = "allgather"
                gathered = max(r["bytes_sent"] for r in run(P, job))
            else:
                measured, gathered = planned, (P - 1) * shard_kv(P)
            rows.append({"mask": mask_name, "P": P, "source": "measured" if P <= 4 else "plan",
                         "mask_aware_max_MiB": max(measured) / 2**20,
                         "shards_max": max(measured) / shard_kv(P),
                         "mask_aware_total_MiB": sum(measured) / 2**20,
                         "plain_ring_MiB": (P - 1) * shard_kv(P) / 2**20,
                         "plain_total_MiB": P * (P - 1) * shard_kv(P) / 2**20,
                         "allgather_MiB": gathered / 2**20})
    return rows


def balance(L: int) -> list[dict]:
    from attnlab import masks
    from attnlab.backends.tiled import block_map, choose_blocks
    from attnlab.distributed import make_layout, ring_plan
    from attnlab.functional.masks import shifted

    rows = []
    for P in (2, 4, 8):
        row: dict = {"P": P}
        for layout in ("contiguous", "zigzag"):
            lay = make_layout(layout, P)
            plan = ring_plan(masks.causal(), lay, L // P, L // P)
            work = []
            for r in range(P):
                pairs = 0
                for src in range(P):
                    for _, gi, _, gj in plan.pairs(r, src):
                        c = plan.q_chunk
                        m = shifted(masks.causal(), gi * c, gj * c, L, L)
                        bq, bk = choose_blocks(m, c, c)
                        pairs += block_map(m, c, c, bq, bk).cols.numel() * bq * bk
                work.append(pairs)
            row[f"{layout}_max_over_mean"] = max(work) / statistics.mean(work)
        rows.append(row)
    return rows


def timing(L: int, repeats: int) -> list[dict]:
    rows = []
    for mode in ("ring", "allgather"):
        for P in (1, 2):
            job = {"kind": "time", "L": L, "layout": "zigzag", "mask": "causal", "mode": mode,
                   "repeats": repeats}
            res = run(P, job)
            rows.append({"mode": mode, "P": P, "seconds": max(r["seconds"] for r in res)})
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda x: f"{x:.2f}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8192,16384,32768", help="memory: global lengths")
    ap.add_argument("--bytes-length", type=int, default=16384)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--time-length", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-time", action="store_true", help="skip wall time (needs a quiet machine)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", type=Path, help="write a markdown report here")
    a = ap.parse_args()
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "memory": memory([int(x) for x in a.lengths.split(",")]),
           "bytes": bytes_table(a.bytes_length, a.window),
           "balance": balance(a.bytes_length),
           "time": [] if a.skip_time else timing(a.time_length, a.repeats)}
    if a.json:
        print(json.dumps(res, indent=1))
    cmd = "python " + " ".join(sys.argv)
    md = [f"# Context parallelism on CPUs\n\n`{cmd}`\n\nH={H}, D={D}, float32, one thread per process.",
          "\n## Peak memory per rank (causal forward + backward, zigzag)\n", _table(res["memory"]),
          f"\n## K/V bytes sent per rank (L={a.bytes_length}, window {a.window})\n", _table(res["bytes"]),
          "\n## Causal work per rank: max / mean over ranks\n", _table(res["balance"])]
    if res["time"]:
        md += [f"\n## Wall time, causal fwd+bwd, L={a.time_length}\n", _table(res["time"])]
    text = "\n".join(md) + "\n"
    if a.write:
        a.write.write_text(text)
    if not a.json:
        print(text)


if __name__ == "__main__":
    main()
