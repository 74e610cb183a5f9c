"""A GGUF file is untrusted input (issue 24, items 1, 2, 4 and the GGUF part of 8): lengths and
tensor extents are checked against the file before anything is allocated, hyper-parameters are
ranges compared with the tensors before the model is built, weights must be finite; each defect
is one ValueError naming the file and the field, one line and exit code 2 at the CLI.

Files are the tiny models of ``conftest`` written by ``gguf.GGUFWriter`` (``meta=`` replaces
fields), or their bytes patched. Checks that on unfixed code looped or allocated without end run
under :func:`bounded` (address space +2 GiB, 20 s), so a regression fails instead of swapping.
"""

from __future__ import annotations

import contextlib
import random
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf import GGUFReader
from gguf import GGUFValueType as T

from attnlab.models import load_model

from .conftest import write_llama_gguf
from .gemma3_builders import gemma_pieces, make_gemma3, write_gemma3_gguf

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="rlimit and /proc bounds are Linux's")


@contextlib.contextmanager
def bounded(seconds: float = 20.0, extra: int = 2 << 30) -> Iterator[None]:
    """Let the address space grow by ``extra`` bytes at most, and stop the check after ``seconds``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    limit = vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard)

    def stop(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(path: Path, message: str) -> str:
    """load_model(path) must stop, bounded, with one ValueError naming the file and ``message``."""
    with bounded(), pytest.raises(ValueError) as e:
        load_model(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def llama_q41(tiny_llama, tmp_path_factory) -> Path:
    return write_llama_gguf(tiny_llama, tmp_path_factory.mktemp("q41") / "m.gguf", qtype="Q4_1")


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory) -> Path:
    return make_gemma3(tmp_path_factory.mktemp("gemma") / "m", vocab_size=len(gemma_pieces()),
                       num_hidden_layers=2)


def write(kind: str, folder: Path, out: Path, meta: dict) -> Path:
    """The tiny llama or gemma3 of ``folder`` as a GGUF with ``meta`` ({field: value}) replaced."""
    arch = "llama" if kind == "llama" else "gemma3"

    def typed(v: object) -> tuple[object, T]:
        if isinstance(v, str):
            return v, T.STRING
        if isinstance(v, float):
            return v, T.FLOAT32
        return v, T.UINT64 if v >= 1 << 32 else T.UINT32

    fields = {f"{arch}.{k}": typed(v) for k, v in meta.items()}
    if kind == "llama":
        return write_llama_gguf(folder, out, qtype="Q4_1", meta=fields)
    return write_gemma3_gguf(folder, out, meta=fields)


def patched(src: Path, out: Path, at: int, fmt: str, value: object) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, at, value)
    out.write_bytes(bytes(data))
    return out


def after_key(data: bytes, key: str) -> int:
    """Offset just past a metadata key's bytes (then: value type, and for arrays item type, length)."""
    k = key.encode()
    return data.index(struct.pack("<Q", len(k)) + k) + 8 + len(k)


def tensor_info(data: bytes, name: str) -> tuple[int, int]:
    """Offsets of a tensor's type and data offset fields in its info record."""
    i = after_key(data, name)
    (nd,) = struct.unpack_from("<I", data, i)
    return i + 4 + 8 * nd, i + 4 + 8 * nd + 4


def raw(*kvs: bytes, n_tensors: int = 0, n_kv: int | None = None) -> bytes:
    head = struct.pack("<IQQ", 3, n_tensors, len(kvs) if n_kv is None else n_kv)
    return b"GGUF" + head + b"".join(kvs)


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


# --- 1. lengths, counts and nesting against the file's size, before any allocation ---


def test_49_byte_file_declaring_2_63_items_is_refused_at_once(tmp_path):
    f = tmp_path / "t.gguf"
    f.write_bytes(raw(kv("x", T.ARRAY, struct.pack("<IQ", T.UINT8, 1 << 63))))
    assert f.stat().st_size == 49
    refused(f, "metadata x: expected at most 0 items (0 bytes left in the file, 1 byte each), "
               f"got {1 << 63}")


@pytest.mark.parametrize("length", [10**8, 1 << 40])
def test_token_type_array_longer_than_the_file(llama_q41, tmp_path, length):
    data = llama_q41.read_bytes()
    at = after_key(data, "tokenizer.ggml.token_type") + 8  # value type, item type, then the length
    f = patched(llama_q41, tmp_path / "t.gguf", at, "<Q", length)
    refused(f, "metadata tokenizer.ggml.token_type: expected at most")


def test_string_and_counts_longer_than_the_file(llama_q41, tmp_path):
    data = llama_q41.read_bytes()
    first_token = after_key(data, "tokenizer.ggml.tokens") + 16  # type, item type, length
    refused(patched(llama_q41, tmp_path / "s.gguf", first_token, "<Q", 1 << 62),
            "metadata tokenizer.ggml.tokens[0]: expected a string of at most")
    refused(patched(llama_q41, tmp_path / "kv.gguf", 16, "<Q", 1 << 62), "metadata count: expected at most")
    refused(patched(llama_q41, tmp_path / "t.gguf", 8, "<Q", 1 << 40), "tensor count: expected at most")


def test_nested_arrays_and_too_many_items_are_refused(tmp_path, monkeypatch):
    from attnlab.models import gguf_scan

    nested = tmp_path / "nested.gguf"
    inner = struct.pack("<IQB", T.UINT8, 1, 7)
    nested.write_bytes(raw(kv("x", T.ARRAY, struct.pack("<IQ", T.ARRAY, 1) + inner)))
    refused(nested, "metadata x: expected an array of scalars or strings, got an array of arrays")
    monkeypatch.setattr(gguf_scan, "MAX_ARRAY_ITEMS", 10)
    many = tmp_path / "many.gguf"
    many.write_bytes(raw(kv("a", T.ARRAY, struct.pack("<IQ", T.UINT8, 6) + bytes(6)),
                         kv("b", T.ARRAY, struct.pack("<IQ", T.UINT8, 6) + bytes(6))))
    refused(many, "metadata b: expected at most 4 items (at most 10 in all metadata arrays), got 6")


# --- 2. hyper-parameters as ranges, names and shapes compared with the tensors before building ---

HELD = "block_count: expected 2 (the file holds tensors for layers 0 to 1)"
HPARAMS = [
    ("attention.head_count", 0, "attention.head_count: expected an integer >= 1, got 0"),
    ("attention.head_count_kv", 0, "attention.head_count_kv: expected an integer >= 1, got 0"),
    ("attention.head_count_kv", 3, "attention.head_count_kv: expected a divisor of"),
    ("attention.key_length", 7, "attention.key_length: expected an even head size"),
    ("block_count", 1 << 31, f"{HELD}, got 2147483648"),
    ("block_count", 10**6, f"{HELD}, got 1000000"),
    ("block_count", "thirty", "block_count: expected an integer >= 1, got 'thirty'"),
    ("vocab_size", 1 << 31, "tensor token_embd.weight: expected shape (2147483648, 32)"),
    ("feed_forward_length", 1 << 31, "tensor blk.0.ffn_gate.weight: expected shape (2147483648, 32)"),
    ("embedding_length", 1 << 31, "tensor token_embd.weight: expected shape"),
    ("context_length", 0, "context_length: expected an integer >= 1, got 0"),
]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize(("field", "value", "message"), HPARAMS, ids=[f"{f}={v}" for f, v, _ in HPARAMS])
def test_hyper_parameters_are_checked_before_the_model_is_built(kind, field, value, message, tiny_llama,
                                                                gemma_folder, tmp_path):
    folder = tiny_llama if kind == "llama" else gemma_folder
    f = write(kind, folder, tmp_path / "t.gguf", {field: value})
    refused(f, f"{kind}.{message}" if not message.startswith("tensor") else message)


def test_a_missing_tensor_is_named(tiny_llama, tmp_path):
    f = write_llama_gguf(tiny_llama, tmp_path / "t.gguf", qtype="Q4_1", bad_tensor=None)
    data = f.read_bytes()
    name = b"blk.1.ffn_up.weight"  # renamed to a tensor the table does not know
    f.write_bytes(data.replace(name, b"blk.1.ffn_XX.weight"))
    refused(f, "tensor blk.1.ffn_up.weight: expected in the file (llama.block_count 2), it is missing")


# --- 4. NaN never passes silently: tensor layout, epsilons and bases, the weights themselves ---


def test_a_type_flipped_to_f32_overlaps_the_next_tensors(llama_q41, tmp_path):
    at, _ = tensor_info(llama_q41.read_bytes(), "blk.0.attn_q.weight")
    f = patched(llama_q41, tmp_path / "t.gguf", at, "<I", 0)  # Q4_1 -> F32
    refused(f, "tensor blk.0.attn_v.weight: expected its data at offset")
    assert "aligned end of blk.0.attn_q.weight, F32 32x32 = 4096 bytes" in refused(f, "")


@pytest.mark.parametrize(("name", "shift"), [("blk.0.attn_q.weight", 32), ("blk.0.attn_q.weight", 4),
                                             ("blk.1.ffn_down.weight", -32), ("token_embd.weight", 32)])
def test_a_shifted_offset_is_refused(llama_q41, tmp_path, name, shift):
    data = llama_q41.read_bytes()
    _, at = tensor_info(data, name)
    (offset,) = struct.unpack_from("<Q", data, at)
    refused(patched(llama_q41, tmp_path / "t.gguf", at, "<Q", offset + shift),
            f"tensor {name}: expected its data at offset {offset}")


def test_tensor_past_the_end_of_the_file(llama_q41, tmp_path):
    f = tmp_path / "t.gguf"
    f.write_bytes(llama_q41.read_bytes()[:-100])
    refused(f, "inside the file of")


NAN = float("nan")
EPS = "attention.layer_norm_rms_epsilon"
FLOATS = [("llama", EPS, NAN), ("llama", EPS, -1.0),
          ("llama", "rope.freq_base", 0.0), ("llama", "rope.freq_base", NAN),
          ("gemma3", EPS, -1.0), ("gemma3", "rope.freq_base", 0.0),
          ("gemma3", "rope.freq_base_swa", NAN), ("gemma3", "attention.scale", 0.0),
          ("gemma3", "final_logit_softcapping", NAN)]


@pytest.mark.parametrize(("kind", "field", "value"), FLOATS, ids=[f"{k}-{f}={v}" for k, f, v in FLOATS])
def test_epsilons_bases_and_scales_must_be_finite_and_positive(kind, field, value, tiny_llama, gemma_folder,
                                                               tmp_path):
    f = write(kind, tiny_llama if kind == "llama" else gemma_folder, tmp_path / "t.gguf", {field: value})
    refused(f, f"{kind}.{field}: expected a finite number > 0, got {value!r}")


def test_nan_weights_name_the_tensor(llama_q41, tiny_llama, tmp_path):
    def start(f: Path, name: str) -> int:  # where a tensor's bytes begin, as the stock reader says
        return next(int(t.data_offset) for t in GGUFReader(f).tensors if t.name == name)

    # Q4_1 blocks begin with their f16 scale: a NaN scale makes the block's 32 weights NaN
    f = patched(llama_q41, tmp_path / "q.gguf", start(llama_q41, "blk.0.ffn_up.weight"), "<H", 0x7E00)
    refused(f, "tensor blk.0.ffn_up.weight: expected finite weights, got 32 of 2048 values NaN or infinite")
    f32 = write_llama_gguf(tiny_llama, tmp_path / "f32.gguf", qtype="F32")
    f = patched(f32, tmp_path / "inf.gguf", start(f32, "output_norm.weight") + 8, "<f", float("inf"))
    refused(f, "tensor output_norm.weight: expected finite weights, got 1 of 32 values")


# --- 8. (GGUF) clear errors: a folder, a corrupt header never gives numpy's index errors ---


def test_a_folder_named_gguf_is_said_to_be_a_folder(tmp_path):
    (tmp_path / "x.gguf").mkdir()
    with pytest.raises(IsADirectoryError, match=r"expected a GGUF file, got a folder: .*x\.gguf$"):
        load_model(tmp_path / "x.gguf")


def test_corrupt_headers_give_one_clear_error_each(llama_q41, tmp_path):
    """Cuts and flipped bytes across the header: each file loads or is one ValueError naming it
    (before: IndexError "index 0 is out of bounds for axis 0 with size 0", struct errors...)."""
    data = llama_q41.read_bytes()
    header = GGUFReader(llama_q41).data_offset  # the stock reader, on the valid file
    rng = random.Random(0)
    cuts = [data[:n] for n in sorted(rng.sample(range(1, header), 40))]
    flips = []
    for at in rng.sample(range(4, header), 120):
        b = bytearray(data)
        b[at] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else 0xFF
        flips.append(bytes(b))
    f = tmp_path / "c.gguf"
    for case in cuts + flips:
        f.write_bytes(case)
        try:
            with bounded():
                load_model(f)
        except ValueError as e:
            assert str(e).startswith(f"{f}: ") and "index 0 is out of bounds" not in str(e), str(e)


# --- at the CLI: one line, exit code 2 ---


def test_cli_generate_on_the_49_byte_bomb_is_one_line_exit_2(tmp_path):
    f = tmp_path / "t.gguf"
    f.write_bytes(raw(kv("x", T.ARRAY, struct.pack("<IQ", T.UINT8, 1 << 63))))

    def limit() -> None:  # the child may not grow past 4 GiB of address space
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))

    code = "import sys; from attnlab.cli.main import app; sys.argv[0] = 'attnlab'; app()"
    r = subprocess.run([sys.executable, "-c", code, "generate", "hi", "--model", str(f)], capture_output=True,
                       text=True, timeout=120, preexec_fn=limit)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {f}: metadata x: expected at most 0 items"), r.stderr


def test_cli_heads_on_zero_heads_is_one_line_exit_2(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from attnlab.cli.main import app

    f = write("llama", tiny_llama, tmp_path / "t.gguf", {"attention.head_count": 0})
    with bounded():
        res = CliRunner().invoke(app, ["heads", "--model", str(f)])
    assert res.exit_code == 2, res.output
    assert "llama.attention.head_count: expected an integer >= 1, got 0" in " ".join(res.output.split())
    assert "Traceback" not in res.output
