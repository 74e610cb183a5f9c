"""`attnlab bench --quick --json`: the smoke run of the benchmark harness."""

import json

import pytest
import typer
from typer.testing import CliRunner

from attnlab.bench.cases import CASES, nnz, parse_n
from attnlab.bench.report import targets
from attnlab.cli import bench_cmd


def app():
    a = typer.Typer(pretty_exceptions_enable=False)
    bench_cmd.register(a)
    a.command("version")(lambda: None)  # keeps Typer in multi-command mode
    return a


def test_bench_quick_json_smoke(tmp_path):
    res = CliRunner().invoke(app(), ["bench", "--quick", "--json", "--threads", "1", "--n", "128",
                                     "--cases", "dense,sliding_window_128", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    rows = data["rows"]
    assert {(r["case"], r["mode"], r["peer"]) for r in rows} == {
        (c, m, p) for c in ("dense", "sliding_window_128") for m in ("fwd", "fwd+bwd")
        for p in ("tiled", "sdpa", "eager")}
    assert all(r["status"] == "ok" and r["seconds"] > 0 and r["gflops"] > 0 for r in rows)
    assert data["matmul_peak_gflops"] > 0 and data["machine"]["cores"] >= 1
    assert all(r["mem_method"] for r in rows)
    for name in ("bench.csv", "bench.json", "bench.md", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| case | mode | n |" in (tmp_path / "bench.md").read_text()


def test_bench_bad_input_is_a_clean_error(tmp_path):
    res = CliRunner().invoke(app(), ["bench", "--quick", "--cases", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "cases: expected names from" in res.output
    res = CliRunner().invoke(app(), ["bench", "--quick", "--n", "-3", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "n: expected a positive length" in res.output


def test_useful_flops_count_only_allowed_pairs():
    assert nnz(CASES["dense"], 1000) == 1000 * 1000
    assert nnz(CASES["causal"], 1000) == 1000 * 1001 // 2
    assert nnz(CASES["sliding_window_128"], 1000) == sum(min(i, 128) + 1 for i in range(1000))
    assert parse_n("16k") == 16384 and parse_n("1m") == 1 << 20
    with pytest.raises(ValueError, match="n: expected"):
        parse_n("0")


def test_targets_are_evaluated_from_rows():
    from attnlab.bench.harness import Row

    rows = [Row("sliding_window_256", 16384, "fwd", "tiled", "ok", seconds=0.1, pct_peak=50.0),
            Row("sliding_window_256", 16384, "fwd", "flex", "ok", seconds=0.12),
            Row("sliding_window_256", 16384, "fwd", "sdpa", "ok", seconds=2.0),
            Row("sliding_window_256", 65536, "fwd", "tiled", "ok", seconds=0.41)]
    got = {t["target"]: t for t in targets(rows)}
    assert got["SW W=256 n=16k fwd: tiled time / FlexAttention compiled time"]["met"] is True
    assert got["SW W=256 n=16k fwd: SDPA (dense mask) time / tiled time"]["met"] is True
    assert abs(got["SW W=256 fwd: time(64k) / time(16k)"]["value"] - 4.1) < 1e-9
    assert got["sliding_window_256 n=16k fwd: % of matmul peak (useful FLOPs)"]["met"] is False
    assert got["causal n=8k fwd: tiled speed / SDPA speed"]["met"] is None  # not measured


def test_useful_share_of_computed_pairs():
    from attnlab import masks
    from attnlab.backends.tiled import computed_pairs, tiled_options

    with tiled_options(block_size=64):
        assert computed_pairs(None, 256, 256) == 256 * 256
        assert computed_pairs(masks.causal(), 256, 256) == 10 * 64 * 64  # 4 diagonal + 6 below
        # window [-64, 0] with 64-tiles: each query block reads its own and the previous block
        assert computed_pairs(masks.sliding_window(64, 0), 256, 256) == 7 * 64 * 64
        # dilated windows run each residue class as its own sequence of n/d
        assert computed_pairs(masks.dilated_sliding_window(64, 0, 4), 1024, 1024) == 4 * 7 * 64 * 64
    rows = bench_row("sliding_window_128")
    assert 0 < rows["useful_pct"] <= 100


def bench_row(case):
    from attnlab.bench.harness import inputs, run_one
    from attnlab.bench.peers import Limits

    lim = Limits(max_seconds=10.0, max_bytes=1e9, peak_gflops=100.0)
    return run_one(case, 512, "fwd", "tiled", inputs(512, "fwd"), lim, repeats=1, long_call=5.0).as_dict()


def test_gemma3_shape_runs_every_peer_with_shared_kv_heads_and_counts_query_heads():
    from attnlab.bench.cases import SHAPES, useful_flops
    from attnlab.bench.harness import inputs, run_one
    from attnlab.bench.peers import Limits
    from attnlab.bench.suites import make_suite

    shape = SHAPES["gemma3"]
    q, k, v, _ = inputs(256, "fwd", shape=shape)
    assert q.shape == (1, 4, 256, 256) and k.shape == v.shape == (1, 1, 256, 256)
    case = CASES["sliding_window_512"]
    assert useful_flops(case, 256, "fwd", shape) == 4.0 * 256 * nnz(case, 256) * 4
    suite = make_suite("gemma3")
    assert suite.shape is shape and {s[1] for s in suite.specs} == {4096, 8192, 16384, 32768}
    lim = Limits(max_seconds=10.0, max_bytes=1e9, peak_gflops=100.0)
    for peer in ("tiled", "sdpa", "eager"):
        row = run_one("sliding_window_512", 256, "fwd", peer, (q, k, v, _), lim, repeats=1, long_call=5.0,
                      shape=shape)
        assert row.status == "ok", row.note


def test_gemma3_targets_are_its_own():
    from attnlab.bench.harness import Row

    rows = [Row("sliding_window_512", 4096, "fwd", "tiled", "ok", seconds=0.1, pct_peak=61.0),
            Row("sliding_window_512", 4096, "fwd", "flex", "ok", seconds=0.08)]
    got = {t["target"]: t for t in targets(rows, "gemma3")}
    assert got["Gemma 3 local (W=512) n=4k fwd: % of matmul peak (useful FLOPs)"]["met"] is True
    assert got["Gemma 3 local (W=512) n=4k fwd: tiled time / FlexAttention compiled time"]["met"] is False
    assert not any(t.startswith("SW W=256") for t in got)  # the standard shape's targets are not evaluated
