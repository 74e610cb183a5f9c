"""Builds attnlab's C++ decode kernel (``csrc/decode_step.cpp``) on first use and loads it.

The source has no torch headers: it compiles with the system's C++ compiler in about a second
(``$CXX``, else ``c++``/``g++``), ``-O3 -march=native -fopenmp``, into
``$ATTNLAB_CACHE/kernels/`` (default ``~/.cache/attnlab/kernels/``), named by a hash of the
source, the compiler's version, the flags and this CPU's feature flags, written to a temporary
file and renamed into place (two processes building at once each get a whole file). It is
loaded with ctypes after torch, so its OpenMP calls run on the OpenMP runtime torch already
loaded (one thread pool, not two: torch's wheel bundles GNU libgomp under its usual soname; a
torch built on another OpenMP runtime would get a second pool). Where no compiler is found, or the
build fails, callers get the reason and keep to the PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "decode_step.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


class KernelUnavailable(RuntimeError):
    """The decode kernel cannot be built or loaded here; the message says why."""


def kernel_dir() -> Path:
    """``$ATTNLAB_CACHE/kernels`` or ``~/.cache/attnlab/kernels``."""
    root = os.environ.get("ATTNLAB_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "attnlab") / "kernels"


def compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else the first of c++, g++, clang++ on PATH."""
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or None
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); empty
    where it cannot be read. Keys the kernel's build (``-march=native``) and tells
    :func:`attnlab.models.quantized.bf16_gemm` whether bfloat16 is native."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def build(flags: tuple[str, ...] = FLAGS, folder: Path | None = None) -> Path:
    """The shared library for ``flags``, compiled unless a build of the same source, compiler,
    flags and CPU is already in ``folder``. Raises :class:`KernelUnavailable` with the reason."""
    cxx = compiler()
    if cxx is None:
        raise KernelUnavailable("no C++ compiler found ($CXX, c++, g++ or clang++ on PATH)")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"{cxx} --version failed: {e}") from e
    cpu = " ".join(sorted(cpu_flags())) or platform.machine()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), version.encode(), " ".join(flags).encode(),
                                     cpu.encode()]))
    folder = kernel_dir() if folder is None else folder
    target = folder / f"decode_step-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise KernelUnavailable(f"{cxx} failed to build {SOURCE.name}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"{cxx} could not build {SOURCE.name}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with its functions' argument types declared."""
    import torch  # noqa: F401  (first: the kernel's OpenMP must bind to the runtime torch loaded)

    lib = ctypes.CDLL(str(path))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.attnlab_vnni.restype = ctypes.c_int
    lib.attnlab_vnni.argtypes = []
    lib.decode_scratch.restype = i64
    lib.decode_scratch.argtypes = [p, i64]
    lib.decode_step.restype = ctypes.c_int
    lib.decode_step.argtypes = [p, i32, i32, p, p, p, p, p, p, p, i32]
    return lib


@functools.cache
def decode_library() -> ctypes.CDLL | str:
    """The built and loaded kernel, or why it is unavailable (built once per process)."""
    try:
        return load(build())
    except (KernelUnavailable, OSError) as e:
        return str(e)
