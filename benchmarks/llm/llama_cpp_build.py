"""llama.cpp's ``llama-bench``, the LLM benchmark's peer (issue 23, item 5): built once from the
llama-cpp-python sdist on the package registry into a cache folder, and run with JSON output.

    .venv/bin/python benchmarks/llm/llama_cpp_build.py            # builds (or reuses), prints the path
    .venv/bin/python benchmarks/llm/llama_cpp_build.py --cache DIR

Why the sdist: it vendors the whole llama.cpp source tree (``vendor/llama.cpp``) at a pinned
commit, and pip is the one route to the outside this machine has. The build is for the
benchmark only; ``make run`` and ``make test`` never build it. Layout of the cache folder
(default ``~/.cache/attnlab/llama.cpp``, or ``$ATTNLAB_LLAMA_CPP_CACHE``)::

    <cache>/<version>/llama_cpp_python-<version>.tar.gz   the sdist as pip downloaded it
    <cache>/<version>/src/llama_cpp_python-<version>/     unpacked
    <cache>/<version>/build/bin/llama-bench               the binary
    <cache>/<version>/build/attnlab-build.json            what was built, how, and in how long

A build whose ``attnlab-build.json`` names the same version and CMake options is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.3.16"  # llama-cpp-python; its vendor/llama.cpp is llama.cpp at a pinned commit
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary in the cache
    "-DGGML_NATIVE=ON",  # this machine's CPU flags (AVX2/AVX-512 where present), as attnlab's torch uses
    "-DLLAMA_CURL=OFF",  # no downloads; libcurl's headers are not needed
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",  # llama-bench lives in tools/
)
CXX_NAMES = ("c++", "g++", "clang++")
CC_NAMES = ("cc", "gcc", "clang")


class LlamaCppUnavailable(RuntimeError):
    """llama-bench cannot be had here; the message is the reason the benchmark prints."""


def default_cache() -> Path:
    env = os.environ.get("ATTNLAB_LLAMA_CPP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attnlab" / "llama.cpp"


def _find(names: tuple[str, ...], env: str) -> str | None:
    chosen = os.environ.get(env)
    for name in ((chosen,) if chosen else ()) + names:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_tools() -> str | None:
    """None when CMake and a C and C++ compiler are on PATH, else a sentence naming what is not."""
    missing = []
    if shutil.which("cmake") is None:
        missing.append("cmake (not on PATH)")
    if _find(CXX_NAMES, "CXX") is None:
        missing.append(f"a C++ compiler (looked for $CXX, {', '.join(CXX_NAMES)})")
    if _find(CC_NAMES, "CC") is None:
        missing.append(f"a C compiler (looked for $CC, {', '.join(CC_NAMES)})")
    if not missing:
        return None
    return "cannot build llama.cpp's llama-bench: missing " + "; ".join(missing)


def binary_path(cache: Path | None = None, version: str = VERSION) -> Path:
    return (cache or default_cache()) / version / "build" / "bin" / "llama-bench"


def _stamp(version: str) -> dict:
    return {"version": version, "cmake_options": list(CMAKE_OPTIONS)}


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise LlamaCppUnavailable(f"`{' '.join(cmd)}` failed (exit {done.returncode}); log {log}:\n"
                                  + "\n".join(tail))


def build_llama_bench(cache: Path | None = None, version: str = VERSION, jobs: int = 2,
                      say=print) -> Path:
    """The path of ``llama-bench``, downloading and building it on first use (~minutes on 2 cores).

    Raises :class:`LlamaCppUnavailable` with the reason when tools are missing or a step fails.
    """
    root = (cache or default_cache()) / version
    binary = binary_path(cache, version)
    stamp_file = root / "build" / "attnlab-build.json"
    if binary.is_file() and stamp_file.is_file():
        stamp = json.loads(stamp_file.read_text(encoding="utf-8"))
        if {k: stamp.get(k) for k in _stamp(version)} == _stamp(version):
            return binary
    reason = missing_tools()
    if reason:
        raise LlamaCppUnavailable(reason)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    t0 = time.perf_counter()
    sdist = root / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        say(f"downloading the llama-cpp-python {version} sdist into {root}")
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
              f"llama-cpp-python=={version}", "-d", str(root)], log)
    src = root / "src" / f"llama_cpp_python-{version}"
    if not (src / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        say(f"unpacking {sdist.name}")
        shutil.rmtree(root / "src", ignore_errors=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(root / "src", filter="data")  # refuses absolute paths and links out
    llama = src / "vendor" / "llama.cpp"
    build = root / "build"
    say(f"configuring llama.cpp with CMake in {build} (log: {log})")
    _run(["cmake", "-S", str(llama), "-B", str(build), *CMAKE_OPTIONS], log)
    say(f"building llama-bench with -j{jobs} (several minutes on 2 cores)")
    _run(["cmake", "--build", str(build), "--target", "llama-bench", "-j", str(jobs)], log)
    if not binary.is_file():
        raise LlamaCppUnavailable(f"the build finished but {binary} is not there; log {log}")
    stamp = _stamp(version) | {"build_s": round(time.perf_counter() - t0, 1), "jobs": jobs,
                               "cxx": _find(CXX_NAMES, "CXX"), "built": time.strftime("%Y-%m-%d %H:%M")}
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    say(f"built {binary} in {stamp['build_s']:.0f} s")
    return binary


def build_info(cache: Path | None = None, version: str = VERSION) -> dict:
    """The stamp of an existing build (version, options, build time), or {}."""
    f = (cache or default_cache()) / version / "build" / "attnlab-build.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


@dataclass
class LlamaBenchTest:
    """One row of ``llama-bench -o json``: a prompt test (pp512) or a generation test (tg128)."""

    name: str  # "pp512" or "tg128", as llama-bench's own table names them
    n_prompt: int
    n_gen: int
    n_threads: int
    samples_ts: list[float]  # tokens/s of each repetition
    build_commit: str
    cpu_info: str
    model_type: str

    @property
    def median_ts(self) -> float:
        return statistics.median(self.samples_ts)


def parse_llama_bench_json(text: str) -> dict[str, LlamaBenchTest]:
    """``llama-bench -o json`` stdout -> {"pp512": ..., "tg128": ...}.

    The fields used (llama.cpp's ``test::get_fields()`` plus the samples): ``n_prompt``,
    ``n_gen``, ``n_threads``, ``samples_ts`` (one tokens/s per ``-r`` repetition; ``avg_ts`` is
    their mean), ``build_commit``, ``cpu_info``, ``model_type``.
    """
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"llama-bench output: expected a JSON array (-o json), got {text[:200]!r}") from e
    if not isinstance(rows, list):
        raise ValueError(f"llama-bench output: expected a JSON array, got {type(rows).__name__}")
    tests = {}
    for row in rows:
        n_prompt, n_gen = int(row["n_prompt"]), int(row["n_gen"])
        if n_prompt and n_gen:
            name = f"pp{n_prompt}+tg{n_gen}"
        else:
            name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
        samples = [float(x) for x in row.get("samples_ts") or [row["avg_ts"]]]
        tests[name] = LlamaBenchTest(name, n_prompt, n_gen, int(row["n_threads"]), samples,
                                     str(row.get("build_commit", "")), str(row.get("cpu_info", "")),
                                     str(row.get("model_type", "")))
    return tests


def llama_bench_command(binary: Path, model: Path, threads: int, n_prompt: int = 512, n_gen: int = 128,
                        reps: int = 3) -> list[str]:
    return [str(binary), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
            "-r", str(reps), "-o", "json"]


def run_llama_bench(binary: Path, model: Path, threads: int, n_prompt: int = 512, n_gen: int = 128,
                    reps: int = 3) -> dict[str, LlamaBenchTest]:
    cmd = llama_bench_command(binary, model, threads, n_prompt, n_gen, reps)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return parse_llama_bench_json(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {default_cache()})")
    ap.add_argument("--version", default=VERSION, help="llama-cpp-python version whose sdist to build")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    try:
        path = build_llama_bench(args.cache, args.version, args.jobs,
                                 say=lambda m: print(m, file=sys.stderr, flush=True))
    except LlamaCppUnavailable as e:
        sys.exit(f"error: {e}")
    print(path)


if __name__ == "__main__":
    main()
