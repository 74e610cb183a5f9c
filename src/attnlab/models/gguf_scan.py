"""A GGUF file is untrusted input: its header is walked once, every length read with ``struct``
against the bytes that remain, before the ``gguf`` package's reader or attnlab allocate anything
from what the file declares.

Why: the reader of ``gguf`` 0.19 loops over an array's declared length, so a 49-byte file
declaring 2**63 items grows without end (the upstream guard is merged, not released), and it
sizes each tensor's view from the declared type and shape without comparing them with the file
or with the other tensors. This scan refuses, naming the field and the file:

- counts, strings and arrays longer than the rest of the file can hold;
- arrays of arrays (llama.cpp's ``gguf_init_from_file`` refuses them too; nothing attnlab reads
  is one), and more array items in all than any vocabulary needs (:data:`MAX_ARRAY_ITEMS`: the
  reader keeps a few numpy views per item, so the cap is what bounds its memory);
- duplicate keys or tensor names, unknown value or tensor types, more than 4 dimensions;
- tensors that do not tile the data section: each must start at the aligned end of the one
  before it, in file order, and end inside the file (llama.cpp's rule). A type flipped from
  Q4_1 to F32, or a shifted offset, otherwise reads the bytes of its neighbours as weights.

Then :func:`attnlab.models.gguf_file.open_gguf` hands the file to ``GGUFReader``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what gguf's reader parses (v1 had 32-bit lengths)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
# All metadata arrays together: Gemma 3's vocabulary (262,144 tokens, scores and types: 786,432
# items) is the largest the embedded models carry; 2**21 leaves 2.7x room and bounds the
# reader's views of the items to a few hundred MB whatever the file declares.
MAX_ARRAY_ITEMS = 1 << 21
# GGUFValueType -> bytes of one value (8 = STRING and 9 = ARRAY are variable)
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MIN_KV = 8 + 4 + 1  # key length, value type, a 1-byte value
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


@dataclass(frozen=True)
class TensorExtent:
    """Where one tensor's bytes lie, as its info record declares and the scan checked."""

    name: str
    dims: tuple[int, ...]  # GGUF order, fastest first (ne0 = columns)
    type_name: str  # GGMLQuantizationType name
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFLayout:
    size: int  # of the file, in bytes
    version: int
    alignment: int
    data_offset: int  # start of the data section in the file
    tensors: tuple[TensorExtent, ...]  # in file order


def _align(n: int, alignment: int) -> int:
    return n + (-n % alignment)


class _Scan:
    def __init__(self, buf: mmap.mmap, size: int, path: Path) -> None:
        self.buf, self.size, self.path, self.pos = buf, size, path, 0
        self.order = "<"

    def fail(self, what: str, expected: str, got: str) -> ValueError:
        return ValueError(f"{self.path}: {what}: expected {expected}, got {got}")

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        """Step over ``n`` bytes; the offset they start at."""
        if n > self.left():
            raise self.fail(what, f"at most {self.left()} bytes (the rest of the file from offset "
                                  f"{self.pos}; truncated or corrupt)", f"{n}")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        s = struct.Struct(self.order + fmt)
        return s.unpack_from(self.buf, self.take(s.size, what))

    def string(self, what: str, *, decode: bool = True) -> str:
        """A key or a name (decoded, to name it in errors), or a value stepped over."""
        (n,) = self.unpack("Q", f"{what} (its length)")
        start = self.take(n, f"{what} (a string of {n} bytes)")
        if not decode:
            return ""
        try:
            return self.buf[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(what, "UTF-8 text", f"invalid bytes at offset {start}") from None

    def count(self, n: int, each: int, what: str, unit: str, exact: bool = False) -> None:
        """``n`` records of at least ``each`` bytes must fit in the rest of the file."""
        most = self.left() // each
        if n > most:
            unit_size = f"{each} byte{'s' if each > 1 else ''}"
            size = f"{unit_size} each" if exact else f"{unit_size} or more each"
            raise self.fail(what, f"at most {most} {unit} ({self.left()} bytes left in the file, {size})",
                            f"{n}")

    def header(self) -> tuple[int, int, int]:
        if self.size < 24 or self.buf[:4] != MAGIC:
            raise ValueError(f"{self.path}: expected a valid GGUF file (magic {MAGIC!r}, then version "
                             f"and counts), got {bytes(self.buf[:4])!r} in a file of {self.size} bytes")
        self.pos = 4
        (version,) = self.unpack("I", "version")
        if version & 0xFFFF == 0:  # written on a big-endian machine (gguf's own test)
            self.order = ">"
            version = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version not in VERSIONS:
            raise self.fail("version", f"a GGUF version in {VERSIONS}", f"{version}")
        tensors, kvs = self.unpack("QQ", "tensor and metadata counts")
        return version, tensors, kvs

    def metadata(self, n_kv: int) -> int:
        """Walk the key-value pairs; the file's ``general.alignment``."""
        self.count(n_kv, _MIN_KV, "metadata count", "key-value pairs")
        alignment, seen, items = DEFAULT_ALIGNMENT, set(), 0
        for _ in range(n_kv):
            key = self.string("a metadata key")
            if key in seen:
                raise self.fail(f"metadata {key}", "each key once", "it twice")
            seen.add(key)
            what = f"metadata {key}"
            (vtype,) = self.unpack("I", f"{what} (its type)")
            if vtype == _ARRAY:
                items += self.array(what, items)
            elif vtype == _STRING:
                self.string(what, decode=False)
            elif vtype in _SCALAR_SIZE:
                if key == "general.alignment":
                    if vtype != _UINT32:
                        raise self.fail(what, "a UINT32", f"value type {vtype}")
                    (alignment,) = self.unpack("I", what)
                    if alignment == 0 or alignment & (alignment - 1):
                        raise self.fail(what, "a power of two", f"{alignment}")
                else:
                    self.take(_SCALAR_SIZE[vtype], what)
            else:
                raise self.fail(what, "a GGUF value type (0 to 12)", f"{vtype}")
        return alignment

    def array(self, what: str, before: int) -> int:
        """Step over one array; its length. Lengths are checked before any item is read."""
        itype, n = self.unpack("IQ", f"{what} (its item type and length)")
        if itype == _ARRAY:
            raise self.fail(what, "an array of scalars or strings", "an array of arrays (nested)")
        if itype != _STRING and itype not in _SCALAR_SIZE:
            raise self.fail(what, "an array of a GGUF value type (0 to 12)", f"item type {itype}")
        each = _SCALAR_SIZE.get(itype, 8)  # a string is at least its 8-byte length
        self.count(n, each, what, "items", exact=itype != _STRING)
        if before + n > MAX_ARRAY_ITEMS:
            raise self.fail(what, f"at most {MAX_ARRAY_ITEMS - before} items (at most {MAX_ARRAY_ITEMS} "
                                  f"in all metadata arrays)", f"{n}")
        if itype != _STRING:
            self.take(n * each, what)
            return n
        # Strings one by one: the hot loop of a 262,144-token vocabulary, so plain locals.
        unpack, buf, pos, size = struct.Struct(self.order + "Q").unpack_from, self.buf, self.pos, self.size
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail(f"{what}[{i}]", "a string length", "the end of the file (truncated)")
            (length,) = unpack(buf, pos)
            if length > size - pos - 8:
                raise self.fail(f"{what}[{i}]", f"a string of at most {size - pos - 8} bytes (the rest of "
                                                f"the file from offset {pos + 8})", f"a length of {length}")
            pos += 8 + length
        self.pos = pos
        return n

    def tensor_infos(self, n: int) -> list[tuple[str, tuple[int, ...], int, int]]:
        self.count(n, _MIN_TENSOR_INFO, "tensor count", "tensors")
        infos, seen = [], set()
        for _ in range(n):
            name = self.string("a tensor name")
            if name in seen:
                raise self.fail(f"tensor {name}", "each name once", "it twice")
            seen.add(name)
            (nd,) = self.unpack("I", f"tensor {name} (its number of dimensions)")
            if nd > MAX_DIMS:
                raise self.fail(f"tensor {name}", f"at most {MAX_DIMS} dimensions", f"{nd}")
            dims = self.unpack("Q" * nd, f"tensor {name} (its dimensions)")
            ttype, offset = self.unpack("IQ", f"tensor {name} (its type and offset)")
            infos.append((name, dims, ttype, offset))
        return infos


def _extents(scan: _Scan, infos: list[tuple[str, tuple[int, ...], int, int]], alignment: int,
             data_offset: int) -> tuple[TensorExtent, ...]:
    """Sizes from the declared types and shapes; the tensors must tile the data section."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    out: list[TensorExtent] = []
    expected = 0
    for name, dims, ttype, offset in infos:
        what = f"tensor {name}"
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise scan.fail(what, "a GGML tensor type the gguf package knows", f"type {ttype}") from None
        if dims and dims[0] % block:
            raise scan.fail(what, f"a first dimension that is a multiple of {qtype.name}'s block of "
                                  f"{block}", f"{dims[0]}")
        nbytes = prod(dims) // block * type_size
        if offset != expected:
            after = "the start of the data section" if not out else (
                f"the {alignment}-byte aligned end of {out[-1].name}, {out[-1].type_name} "
                f"{'x'.join(map(str, out[-1].dims))} = {out[-1].nbytes} bytes")
            raise scan.fail(what, f"its data at offset {expected} of the data section ({after})",
                            f"offset {offset}: a wrong offset here, or a wrong type or shape before it")
        end = data_offset + offset + nbytes
        if end > scan.size:
            raise scan.fail(what, f"its {nbytes} bytes ({qtype.name} {'x'.join(map(str, dims))}) inside "
                                  f"the file of {scan.size} bytes", f"an end at byte {end} (truncated)")
        out.append(TensorExtent(name, tuple(dims), qtype.name, offset, nbytes))
        expected = _align(offset + nbytes, alignment)
    return tuple(out)


def scan_gguf(path: Path) -> GGUFLayout:
    """Check a GGUF file's header and tensor layout against its size; nothing is allocated from
    the declared counts or lengths. Errors are ``ValueError`` naming the file and the field."""
    size = path.stat().st_size
    if size < 24:
        raise ValueError(f"{path}: expected a valid GGUF file (magic, version and counts: 24 bytes or "
                         f"more), got a file of {size} bytes")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        scan = _Scan(buf, size, path)
        version, n_tensors, n_kv = scan.header()
        alignment = scan.metadata(n_kv)
        infos = scan.tensor_infos(n_tensors)
        data_offset = _align(scan.pos, alignment)
        extents = _extents(scan, infos, alignment, data_offset)
        return GGUFLayout(size, version, alignment, data_offset, extents)
