"""Reading and writing record files: JSONL and Parquet, atomically, with errors that name file:line.

Shared by every stage (infer, evalsuite, train, the Beam pipelines). Needs only pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from records.errors import InputError


class RecordError(InputError):
    """A record file could not be read; the message names the file and line."""


def iter_jsonl(
    path: str | os.PathLike, skip_bad: bool = False, bad: list[str] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yields (1-based line number, parsed JSON) for each non-empty line.

    A line that does not parse raises RecordError("file:line: ...") unless `skip_bad`, in which case
    the problem is appended to `bad` (if given) and the line is skipped.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"
                if not skip_bad:
                    raise RecordError(msg) from None
                if bad is not None:
                    bad.append(msg)


def read_table(path: str | os.PathLike) -> pa.Table:
    """Reads a Parquet file, with a RecordError naming the file if it is not one."""
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise RecordError(f"{path}: not a readable Parquet file ({e})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it, even briefly, for
    every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """The one atomic writer: `write(file)` into a temporary file in the same folder, fsync, chmod to what
    a plain `open` would give (0666 & ~umask, not mkstemp's 0600), atomic rename, fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Writes `table` to `path` atomically (atomic_write)."""
    atomic_write(path, lambda f: pq.write_table(table, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Writes text atomically (atomic_write)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Writes bytes atomically (atomic_write)."""
    atomic_write(path, lambda f: f.write(data))
