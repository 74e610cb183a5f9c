"""Small file helpers: atomic writes and JSON with errors that name the file.

An atomic write goes to a temporary file in the *same* folder, is flushed and fsynced, and
is then renamed over the target with ``os.replace`` (atomic on POSIX and Windows): a reader,
or a run killed at any moment, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class FormatError(ValueError):
    """A file exists but its content is not what attnlab expects."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files 0600


def atomic_write_stream(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file beside ``path``, synced, then renamed over it: readers
    see the old file or the whole new one, never a part (large files stream through ``write``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # write() and fsync() errors carry no file name: a full disk said only "[Errno 27]
            # File too large" and the user could not tell which file or folder it was
            raise OSError(e.errno, f"{e.strerror or e} (writing)", str(path)) from e
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected the file {path}, which does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: expected valid UTF-8 JSON ({what}), got an error: {e}") from e
