"""Atomic file writes: write a temporary file in the same folder, fsync, then rename over the target, so a
reader (or a crash) sees either the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from nanoseek.errors import NanoseekError


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """`with open_atomic(p) as f: f.write(...)`; the file appears at `p` only when the block ends without error."""
    with path_atomic(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


@contextlib.contextmanager
def path_atomic(path: str | Path) -> Iterator[Path]:
    """`with path_atomic(p) as tmp: writer.write(tmp)`, for a library that opens the file itself: what it wrote at
    `tmp` (a new file in the same folder) is fsynced and renamed to `p` when the block ends without error."""
    path = Path(path)
    if not path.parent.is_dir():
        raise NanoseekError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    with open_atomic(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def fsync_path(path: str | Path) -> None:
    """Flush a file or a directory entry that something else wrote (safetensors, a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
