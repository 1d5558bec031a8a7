"""What a training run records: `metrics.jsonl` (one JSON object per optimizer step, flushed as it is written) and
the expert-load figures of DeepSeekMoE's auxiliary-loss-free balancing (V3 §2.1.2: the load each expert received in
the step)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nanoseek.errors import DataError


class MetricsLog:
    """Appends one JSON line per record to `path` and flushes it, so a killed run loses at most the line in
    flight and `tail -f` follows the run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file; a half-written last line (a killed run) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no metrics file at {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop the records after `step` (written after the checkpoint a resumed run restarts from), atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def expert_load(loads: list[torch.Tensor]) -> dict:
    """Per MoE layer: max/mean of the tokens each expert received (1.0 = perfectly balanced), and the raw counts."""
    ratios = [float(l.max() / l.mean()) if l.sum() > 0 else 1.0 for l in loads]
    return {"expert_load": [round(r, 4) for r in ratios],
            "expert_tokens": [[int(x) for x in l.tolist()] for l in loads]}
