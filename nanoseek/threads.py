"""CPU threads for torch, as every command sets them: idle threads sleep rather than spin, and `--threads N`."""
from __future__ import annotations


def passive_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning threads that wait
    for a descheduled sibling made training steps several times slower. Set before torch loads; a value the user
    exported wins."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None: torch's choice)."""
    import torch

    from nanoseek.errors import ConfigError

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: expected an int >= 1")
        torch.set_num_threads(threads)
