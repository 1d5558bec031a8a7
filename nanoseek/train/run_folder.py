"""The run folder: every file a training stage or `nanoseek run` writes is named here, and only here.

    OUT/                      a training stage's --out (`nanoseek pretrain`, sft, grpo, distill)
      run.json                the stage's settings: `--resume OUT` continues with exactly them
      metrics.jsonl           one line per optimizer step (metrics.py)
      checkpoints/step-N/     training checkpoints: state.py's files in one process, DCP's under torchrun
      model.safetensors ...   the final model, its config.json and tokenizer (nanoseek.checkpoint)
      report.md               the stage's figures
      prompt.json             the prompt the model was trained for (data/prompts.py), which `generate` uses
      prompts.jsonl, traces.jsonl, counts.json   distillation's teacher samples

    RECIPE_OUT/               `nanoseek run`'s --out
      recipe.json             which recipe (default, quick, smoke) the folder holds
      <stage>/                a stage's OUT, plus trained.json (its training figures) and stage.json (its record,
                              written last: a stage with one is done)
      rejection/              rejection sampling's prompts.jsonl, samples.jsonl, train.jsonl and counts.json
      distill-traces/         the teacher's samples for the distill stage
      report.md, report.json  the recipe's report

The two checkpoint backends (state.py, dist_checkpoint.py) write inside checkpoints/ with these names.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from nanoseek import distributed
from nanoseek.atomic import fsync_path, write_atomic
from nanoseek.errors import CheckpointError, ConfigError

RUN = "run.json"
METRICS = "metrics.jsonl"
REPORT = "report.md"
CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"step-(\d{6,})")
STATE = "state.safetensors"          # a single-process checkpoint's optimizer moments and RNG states
TRAINER = "trainer.json"             # a checkpoint's step, data position and counters
DCP_METADATA = ".metadata"           # marks a checkpoint written by torch.distributed.checkpoint
PROMPTS = "prompts.jsonl"
SAMPLES = "samples.jsonl"
TRACES = "traces.jsonl"
TRAIN_ROWS = "train.jsonl"
COUNTS = "counts.json"
RECIPE = "recipe.json"
STAGE = "stage.json"
TRAINED = "trained.json"
REPORT_JSON = "report.json"
REJECTION = "rejection"
DISTILL_TRACES = "distill-traces"


def check_out(out: Path, resume: bool) -> None:
    """A new run needs an empty or new folder; a resumed one its run.json and a checkpoint."""
    out = Path(out)
    if resume:
        if not (out / RUN).is_file():
            raise CheckpointError(f"cannot resume {out}: no {RUN} there (is it a training run's --out folder?)")
        latest_checkpoint(out)
    else:
        check_new_folder(out, f"continue that run with --resume {out} or choose another --out")
    distributed.barrier()  # under torchrun, every rank looks before rank 0 writes


# The --out folder of a command is checked resolved: spelled `runs/missing/../r1` it writes to `runs/r1`, and that is
# the folder that must be new or empty (unresolved, the missing folder in it hides the run already there). It must
# also be one a folder can be made in: a path under /proc, or below a file, is refused in one line here rather than
# with a traceback at the first save.
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


def save_run(out: Path, settings: dict) -> None:
    """Write run.json atomically (the stage's settings, as plain JSON); under torchrun, rank 0 does."""
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / RUN, json.dumps(settings, indent=1) + "\n")


def load_run(out: Path) -> dict:
    try:
        return json.loads((Path(out) / RUN).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {Path(out) / RUN}: {e}") from None


def checkpoint_dirs(run: Path) -> list[Path]:
    """The run's whole checkpoints, oldest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.fullmatch(p.name)[1]))


def latest_checkpoint(run: Path) -> Path:
    found = checkpoint_dirs(run)
    if not found:
        raise CheckpointError(f"{run} has no training checkpoint to resume from (expected {run}/{CHECKPOINTS}/step-*)")
    return found[-1]


def step_dir(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:06d}"


def publish(tmp: Path, final: Path, keep_last: int) -> None:
    """Rename the whole checkpoint folder `tmp` into place as `final` (replacing a checkpoint of the same step that
    a resumed run saves again), then keep only the newest `keep_last` checkpoints of its run."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(final.parent)
    for old in checkpoint_dirs(final.parent.parent)[:-keep_last]:
        shutil.rmtree(old)


def is_distributed_checkpoint(path: Path) -> bool:
    return (Path(path) / DCP_METADATA).is_file()
