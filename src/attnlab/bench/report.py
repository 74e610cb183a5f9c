"""Benchmark output: CSV, JSON, a PNG plot (matplotlib, Agg) and markdown tables with the
issue's targets evaluated from the rows of one run."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from attnlab.bench.harness import Row

K = 1024


def write_csv(rows: Sequence[Row], path: Path) -> None:
    names = [f.name for f in fields(Row)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow(r.as_dict())


def write_json(rows: Sequence[Row], meta: dict, path: Path) -> None:
    path.write_text(json.dumps({**meta, "rows": [r.as_dict() for r in rows]}, indent=1, default=str))


def plot(rows: Sequence[Row], path: Path) -> bool:
    """Time vs n per case (log-log), one line per peer, forward and forward+backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok" and r.seconds]
    cases = sorted({r.case for r in ok})
    modes = [m for m in ("fwd", "fwd+bwd") if any(r.mode == m for r in ok)]
    if not cases or not modes:
        return False
    fig, axes = plt.subplots(len(modes), len(cases), figsize=(3.2 * len(cases), 3.0 * len(modes)),
                             squeeze=False)
    for i, mode in enumerate(modes):
        for j, case in enumerate(cases):
            ax = axes[i][j]
            for peer in ("tiled", "sdpa", "flex", "eager"):
                pts = sorted((r.n, r.seconds) for r in ok
                             if r.case == case and r.mode == mode and r.peer == peer)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=peer)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{case} ({mode})", fontsize=8)
            ax.set_xlabel("n", fontsize=7)
            ax.set_ylabel("seconds", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt_n(n: int) -> str:
    return f"{n // (K * K)}M" if n % (K * K) == 0 else f"{n // K}k" if n % K == 0 else str(n)


def _cell(r: Row | None) -> str:
    if r is None:
        return ""
    if r.status != "ok" or r.seconds is None:
        return r.status
    extra = f" (+{r.compile_s:.0f}s compile)" if r.compile_s else ""
    return f"{r.seconds * 1e3:.1f}{extra}"


def table(rows: Sequence[Row]) -> str:
    """One markdown row per (case, n, mode): milliseconds per peer, tiled's useful GFLOP/s,
    % of peak, useful share of the pairs its tiles compute, peak RSS, and tiled's speedup over
    SDPA and FlexAttention."""
    idx = {(r.case, r.n, r.mode, r.peer): r for r in rows}
    keys = sorted({(r.case, r.mode, r.n) for r in rows})
    out = ["| case | mode | n | tiled ms | GFLOP/s | % peak | useful % | tiled MB | sdpa ms | flex ms "
           "| eager ms | vs sdpa | vs flex |", "|" + "---|" * 13]
    for case, mode, n in keys:
        t, s, f, e = (idx.get((case, n, mode, p)) for p in ("tiled", "sdpa", "flex", "eager"))
        ok = t is not None and t.status == "ok" and t.seconds

        def ratio(o: Row | None, t: Row | None = t, ok: bool = bool(ok)) -> str:
            good = ok and o is not None and o.status == "ok" and o.seconds
            return f"{o.seconds / t.seconds:.2f}x" if good else ""  # type: ignore[union-attr,operator]

        out.append("| " + " | ".join([
            case, mode, _fmt_n(n), _cell(t),
            f"{t.gflops:.0f}" if ok else "", f"{t.pct_peak:.0f}" if ok else "",  # type: ignore[union-attr]
            f"{t.useful_pct:.0f}" if ok and t.useful_pct is not None else "",  # type: ignore[union-attr]
            f"{t.peak_mem_mb:.0f}" if ok and t.peak_mem_mb is not None else "",  # type: ignore[union-attr]
            _cell(s), _cell(f), _cell(e), ratio(s), ratio(f)]) + " |")
    return "\n".join(out)


def notes(rows: Sequence[Row]) -> str:
    """Why peers were skipped or failed (deduplicated)."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        if r.status != "ok" and r.note:
            seen.setdefault(f"{r.peer}: {r.note}", []).append(f"{r.case}/{_fmt_n(r.n)}/{r.mode}")
    return "\n".join(f"- {k} ({', '.join(v[:4])}{', ...' if len(v) > 4 else ''})" for k, v in seen.items())


def _get(rows: Sequence[Row], case: str, n: int, mode: str, peer: str) -> Row | None:
    for r in rows:
        if (r.case, r.n, r.mode, r.peer) == (case, n, mode, peer) and r.status == "ok":
            return r
    return None


def targets(rows: Sequence[Row], shape: str = "standard") -> list[dict[str, object]]:
    """The issues' targets, evaluated on whatever rows this run has (missing -> not measured);
    each shape has its own (a number measured at one shape says nothing of another's target)."""
    res: list[dict[str, object]] = []

    def add(name: str, value: float | None, goal: str, met: bool | None, detail: str = "") -> None:
        res.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

    if shape == "gemma3":
        _gemma3_targets(rows, add)
        return res

    t, f, s = (_get(rows, "sliding_window_256", 16 * K, "fwd", p) for p in ("tiled", "flex", "sdpa"))
    v = t.seconds / f.seconds if t and f else None  # type: ignore[operator]
    add("SW W=256 n=16k fwd: tiled time / FlexAttention compiled time", v, "<= 1.0",
        None if v is None else v <= 1.0,
        f"tiled {t.seconds * 1e3:.0f} ms" if t and t.seconds is not None else "")
    v = s.seconds / t.seconds if t and s else None  # type: ignore[operator]
    add("SW W=256 n=16k fwd: SDPA (dense mask) time / tiled time", v, ">= 10", None if v is None else v >= 10)
    for w in (128, 256, 512):
        a, b = (_get(rows, f"sliding_window_{w}", n, "fwd", "tiled") for n in (16 * K, 64 * K))
        v = b.seconds / a.seconds if a and b else None  # type: ignore[operator]
        add(f"SW W={w} fwd: time(64k) / time(16k)", v, "<= 4.5", None if v is None else v <= 4.5)
    t, s = (_get(rows, "causal", 8 * K, "fwd", p) for p in ("tiled", "sdpa"))
    v = s.seconds / t.seconds if t and s else None  # type: ignore[operator]
    add("causal n=8k fwd: tiled speed / SDPA speed", v, ">= 0.8", None if v is None else v >= 0.8)
    for row in sorted((r for r in rows if r.n == 16 * K and r.mode == "fwd" and r.peer == "tiled"
                       and r.status == "ok"), key=lambda r: r.case):
        add(f"{row.case} n=16k fwd: % of matmul peak (useful FLOPs)", row.pct_peak, ">= 60",
            (row.pct_peak or 0) >= 60)
    r = _get(rows, "causal", 128 * K, "fwd+bwd", "tiled")
    add("causal n=131072 fwd+bwd: peak memory (MB)", r.peak_mem_mb if r else None, "< 4096",
        None if r is None else (r.peak_mem_mb or 0) < 4096, f"{r.seconds:.0f} s" if r else "")
    r = _get(rows, "sliding_window_256", 1024 * K, "fwd", "tiled")
    add("SW n=1,048,576 fwd finishes (seconds)", r.seconds if r else None, "finishes",
        None if r is None else True, f"peak {r.peak_mem_mb:.0f} MB" if r and r.peak_mem_mb else "")
    return res


def _gemma3_targets(rows: Sequence[Row], add: Callable[..., None]) -> None:
    """Gemma 3's local layers (issue 23): >= 60 % of the matmul peak from 4k tokens, and faster
    than compiled FlexAttention on the same mask."""
    for n in sorted({r.n for r in rows if r.case == "sliding_window_512" and r.n >= 4 * K}):
        t, f = (_get(rows, "sliding_window_512", n, "fwd", p) for p in ("tiled", "flex"))
        add(f"Gemma 3 local (W=512) n={_fmt_n(n)} fwd: % of matmul peak (useful FLOPs)",
            t.pct_peak if t else None, ">= 60", None if t is None else (t.pct_peak or 0) >= 60)
        v = t.seconds / f.seconds if t and f else None  # type: ignore[operator]
        add(f"Gemma 3 local (W=512) n={_fmt_n(n)} fwd: tiled time / FlexAttention compiled time", v,
            "< 1.0", None if v is None else v < 1.0)


def targets_markdown(res: list[dict[str, object]]) -> str:
    out = ["| target | value | goal | met |", "|---|---|---|---|"]
    for t in res:
        v = t["value"]
        val = "not measured" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]  # type: ignore[index]
        detail = f" ({t['detail']})" if t["detail"] else ""
        out.append(f"| {t['target']} | {val}{detail} | {t['goal']} | {met} |")
    return "\n".join(out)


def write_all(rows: Sequence[Row], meta: dict, out: Path) -> tuple[str, bool]:
    """``out``/bench.csv, .json (rows and ``meta``, its targets included), .md and, where
    matplotlib draws, .png; returns the markdown and whether the picture was written."""
    write_csv(rows, out / "bench.csv")
    write_json(rows, meta, out / "bench.json")
    plotted = plot(rows, out / "bench.png")
    md = (f"{table(rows)}\n\nSkipped / failed:\n{notes(rows) or '- none'}\n\n"
          f"Targets:\n\n{targets_markdown(meta['targets'])}\n")
    (out / "bench.md").write_text(md)
    return md, plotted
