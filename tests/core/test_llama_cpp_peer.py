"""benchmarks/llm/vs_llama_cpp.py and llama_cpp_build.py, the pure parts (issue 23, item 5):
parsing llama-bench's JSON, the skip-with-reason path where no compiler is found, reuse of a
build, the verdicts. Nothing is built, run or loaded here; the timings are in the benchmark."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "llm"

# `llama-bench -m SmolLM2-135M-Instruct.Q4_1.gguf -p 64 -n 16 -t 1 -r 2 -o json`, llama-cpp-python
# 0.3.16's llama.cpp (4227c9b) on a 2-core AMD EPYC; only model_filename shortened.
SAMPLE = """\
[
  {
    "build_commit": "4227c9b",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama 256M Q4_1",
    "model_size": 96576768,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 1,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": 99,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": false,
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "defrag_thold": -1.000000,
    "use_mmap": true,
    "embeddings": false,
    "no_op_offload": 0,
    "n_prompt": 64,
    "n_gen": 0,
    "n_depth": 0,
    "test_time": "2026-12-06T15:51:18Z",
    "avg_ns": 756691240,
    "stddev_ns": 64165455,
    "avg_ts": 84.883934,
    "stddev_ts": 7.197936,
    "samples_ns": [ 711319420, 802063061 ],
    "samples_ts": [ 89.9736, 79.7942 ]
  },
  {
    "build_commit": "4227c9b",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama 256M Q4_1",
    "model_size": 96576768,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 1,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": 99,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": false,
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "defrag_thold": -1.000000,
    "use_mmap": true,
    "embeddings": false,
    "no_op_offload": 0,
    "n_prompt": 0,
    "n_gen": 16,
    "n_depth": 0,
    "test_time": "2026-12-06T15:51:21Z",
    "avg_ns": 389408979,
    "stddev_ns": 17262930,
    "avg_ts": 41.128321,
    "stddev_ts": 1.823264,
    "samples_ns": [ 401615714, 377202244 ],
    "samples_ts": [ 39.8391, 42.4176 ]
  }
]
"""


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("vs_llama_cpp"), importlib.import_module("llama_cpp_build")


@pytest.fixture
def no_tools(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)

    def never(*a, **k):
        raise AssertionError(f"nothing may run without tools, ran {a}")

    monkeypatch.setattr(subprocess, "run", never)


def test_parse_recorded_llama_bench_json(bench):
    _, lb = bench
    tests = lb.parse_llama_bench_json(SAMPLE)
    assert set(tests) == {"pp64", "tg16"}
    pp, tg = tests["pp64"], tests["tg16"]
    assert (pp.n_prompt, pp.n_gen, tg.n_prompt, tg.n_gen) == (64, 0, 0, 16)
    assert pp.samples_ts == [89.9736, 79.7942] and tg.samples_ts == [39.8391, 42.4176]
    assert pp.median_ts == pytest.approx((89.9736 + 79.7942) / 2)
    assert tg.n_threads == 1 and tg.build_commit == "4227c9b" and tg.model_type == "llama 256M Q4_1"


def test_parse_falls_back_to_avg_ts_and_refuses_non_json(bench):
    _, lb = bench
    row = json.loads(SAMPLE)[1]
    del row["samples_ts"]
    assert lb.parse_llama_bench_json(json.dumps([row]))["tg16"].samples_ts == [row["avg_ts"]]
    with pytest.raises(ValueError, match="llama-bench output: expected a JSON array"):
        lb.parse_llama_bench_json("| model | size |")


def test_command_uses_the_same_file_and_threads(bench):
    _, lb = bench
    cmd = lb.llama_bench_command(Path("/b/llama-bench"), Path("/m.gguf"), 2, 512, 128, 3)
    assert cmd == ["/b/llama-bench", "-m", "/m.gguf", "-p", "512", "-n", "128", "-t", "2", "-r", "3",
                   "-o", "json"]


def test_no_compiler_skips_with_a_reason(bench, no_tools, tmp_path):
    vs, lb = bench
    reason = lb.missing_tools()
    assert "cmake" in reason and "C++ compiler" in reason and "C compiler" in reason
    with pytest.raises(lb.LlamaCppUnavailable, match="missing cmake"):
        lb.build_llama_bench(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded
    peer, skipped = vs.find_peer(None, tmp_path, skip=False, say=lambda m: None)
    assert peer is None and skipped == reason
    assert vs.verdicts({}, skipped) == [f"No target checked: the llama.cpp column was skipped ({reason})."]


def test_an_existing_build_of_the_same_version_is_reused(bench, no_tools, tmp_path):
    _, lb = bench
    binary = lb.binary_path(tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    stamp = binary.parent.parent / "attnlab-build.json"
    stamp.write_text(json.dumps({"version": lb.VERSION, "cmake_options": list(lb.CMAKE_OPTIONS)}))
    assert lb.build_llama_bench(tmp_path) == binary  # no tools needed, nothing run
    stamp.write_text(json.dumps({"version": lb.VERSION, "cmake_options": ["-DGGML_NATIVE=OFF"]}))
    with pytest.raises(lb.LlamaCppUnavailable):  # other options: a rebuild, which needs the tools
        lb.build_llama_bench(tmp_path)


def test_ratios_verdicts_and_markdown(bench):
    vs, _ = bench
    samples = {"llama.cpp decode": [40.0, 50.0, 45.0], "llama.cpp prefill": [100.0],
               "attnlab float32 decode": [45.0], "attnlab float32 prefill": [150.0],
               "attnlab int8 decode": [90.0], "attnlab int8 prefill": [250.0]}
    med, ratios = vs.summarize(samples)
    assert med["llama.cpp decode"] == 45.0
    assert ratios == {"float32 decode": 1.0, "int8 decode": 2.0, "float32 prefill": 1.5, "int8 prefill": 2.5}
    per = {"1": {"median": med, "ratios": ratios}}
    v = vs.verdicts(per, None)
    assert "decode, 1 thread(s), attnlab float32: 1.00x llama.cpp (target >= 1x): met." in v
    assert "prefill, 1 thread(s), attnlab float32: 1.50x llama.cpp (target >= 2x): NOT met." in v
    assert "prefill, 1 thread(s), attnlab int8: 2.50x llama.cpp (target >= 2x): met." in v
    result = {"command": "benchmarks/llm/vs_llama_cpp.py --rounds 3", "machine": "2 CPUs", "cpus": 2,
              "load_before": [3.0, 2.0, 1.0], "load_after": [0.1, 0.2, 0.3], "rounds": 3,
              "n_gen": 128, "n_prompt": 512, "threads": per, "verdicts": v,
              "llama_cpp": {"skipped": None, "version": "0.3.16", "build_commit": "4227c9b",
                            "cmake_options": "-DGGML_NATIVE=ON", "build_s": 349.0,
                            "command": "llama-bench -m F -p 512 -n 128 -t THREADS -r 3 -o json"}}
    md = vs.render_markdown(result)
    assert "| 1 | decode | 45.0 | 45.0 | **1.00x** | 90.0 | **2.00x** | >= 1x |" in md
    assert "before 3.00, 2.00, 1.00" in md and "more runnable work than the 2 CPUs" in md
    assert "noisy" in vs.render_markdown(result | {"load_before": [1.0, 1.0, 1.0]})
    quiet = vs.render_markdown(result | {"load_before": [0.0, 0.0, 0.0]})
    assert "before 0.00, 0.00, 0.00; after 0.10, 0.20, 0.30.\n" in quiet
    skipped = result | {"llama_cpp": {"skipped": "no cmake"},
                        "threads": {"1": {"median": {k: x for k, x in med.items() if "attnlab" in k},
                                          "ratios": {}}}}
    md = vs.render_markdown(skipped)
    assert "llama.cpp: **skipped** — no cmake" in md
    assert "| 1 | decode | skipped | 45.0 | — | 90.0 | — | >= 1x |" in md
