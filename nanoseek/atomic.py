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
    path = Path(path)
    if not path.parent.is_dir():
        raise NanoseekError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
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
