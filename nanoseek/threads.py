"""CPU threads for torch, as every command sets them: idle threads spin only briefly, and `--threads N`."""
from __future__ import annotations


def spin_briefly() -> None:
    """Idle OpenMP threads spin briefly (GOMP_SPINCOUNT=1000), then sleep. Spinning long (libgomp's default) made
    training steps several times slower on a CPU shared with other work, where a spinning thread waits for a
    descheduled sibling; sleeping at once (OMP_WAIT_POLICY=PASSIVE) cost the tiny model a quarter of its speed on an
    idle machine, since every one of its many small ops must wake a thread. Measured on 2 cores, tiny pretraining
    steps: 1.33 s passive, 1.02 s with this setting, 0.9 s spinning; two such runs side by side: 1.7-1.85 s passive,
    1.8 s with this setting, 3.3 s spinning 10x longer. Set before torch loads; a value the user exported wins."""
    import os

    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None: torch's choice)."""
    import torch

    from nanoseek.errors import ConfigError

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: expected an int >= 1")
        torch.set_num_threads(threads)
