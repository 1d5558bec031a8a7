"""Whether this process runs its training blocks and the engine's decode steps through torch.compile (the default)
or eagerly: the command line's --no-compile, and the test suite, which compiles only where a test asks."""
from __future__ import annotations

_enabled = True


def set_compile(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def compile_enabled() -> bool:
    return _enabled
