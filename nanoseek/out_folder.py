"""The `--out` folder of a command, checked before anything is written. The path is resolved first: spelled
`runs/missing/../r1` it writes to `runs/r1`, and that is the folder that must be new or empty (unresolved, the
missing folder in it hides the run already there). It must also be one a folder can be made in: a path under
/proc, or below a file, is refused in one line here rather than with a traceback at the first save."""
from __future__ import annotations

import tempfile
from pathlib import Path

from nanoseek.errors import ConfigError


def check_new_folder(out: str | Path, hint: str) -> Path:
    """`out`, resolved, if it is new or empty and can be written; `hint` follows the refusal of a non-empty one."""
    path = Path(out).resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"output folder {path} is not empty; {hint}")
    check_writable(path)
    return path


def check_writable(path: Path) -> None:
    """A folder can be made at `path`: one is made and removed in its nearest existing ancestor."""
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    try:
        tempfile.TemporaryDirectory(dir=ancestor).cleanup()
    except OSError as e:
        raise ConfigError(f"cannot write the output folder {path}: {e.strerror or e}") from None
