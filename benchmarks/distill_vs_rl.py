"""Distillation against RL on the small model (DeepSeek-R1 §4.1): the same dense student, either distilled from the
teacher's verified answers (`nanoseek distill`) or trained by its own cold-start SFT then GRPO (`nanoseek sft`,
`nanoseek grpo`), both from the same start (`--student`: a preset's fresh weights, or a pretrained student such as
`nanoseek run`'s OUT/pretrain-student), each at the stages' default budgets (the student's SFT takes as many steps as
the distillation). Prints held-out accuracy of the teacher and of each student, the student's share of the
teacher's accuracy (the issue asks >= 90%) and of its parameters, and the wall time of each run.

Every run writes into OUT/<name>/ and is skipped when it is there already, so an interrupted benchmark continues.
Accuracy: greedy answers to the same held-out problems as `nanoseek run` evaluates on.

Usage: python benchmarks/distill_vs_rl.py --teacher runs/r1/grpo-final --student runs/r1/pretrain-student
       --out runs/distill-vs-rl [--prompts 4096 --k 4] [--logit-kd] [--n 200] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from nanoseek.atomic import write_atomic
from nanoseek.config import ModelConfig
from nanoseek.train.distill import DEFAULT_TRAIN as DISTILL_TRAIN, DistillConfig, distill
from nanoseek.train.evaluate import EvalConfig, evaluate_checkpoint
from nanoseek.train.grpo import DEFAULT_TRAIN as GRPO_TRAIN, GRPOConfig
from nanoseek.train.rl import grpo
from nanoseek.train.sft import DEFAULT_TRAIN as SFT_TRAIN, SFTConfig, sft

STUDENT = "tiny-student"


def timed(out: Path, run) -> float:
    """Run `run(out)` unless out/report.md shows it finished; the wall seconds, kept in out/seconds.json."""
    if not (out / "report.md").is_file():
        start = time.perf_counter()
        result = run(out)
        if result.interrupted:
            raise KeyboardInterrupt
        write_atomic(out / "seconds.json", json.dumps(time.perf_counter() - start))
    return json.loads((out / "seconds.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher checkpoint (e.g. runs/r1/grpo-final)")
    parser.add_argument("--out", required=True, help="folder for the students")
    parser.add_argument("--student", default=STUDENT, help=f"a preset or a checkpoint (default: {STUDENT})")
    parser.add_argument("--prompts", type=int, default=DistillConfig.prompts, help="questions the teacher answers")
    parser.add_argument("--k", type=int, default=DistillConfig.k, help="answers the teacher samples per question")
    parser.add_argument("--logit-kd", action="store_true", help="also distil with the KL to the teacher's logits")
    parser.add_argument("--n", type=int, default=200, help="held-out problems")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    student = DistillConfig(teacher=args.teacher, student=args.student, prompts=args.prompts, k=args.k)
    runs = {"distill": lambda o: distill(student, DISTILL_TRAIN, o)}
    if args.logit_kd:
        runs["distill + logit KD"] = lambda o: distill(dataclasses.replace(student, logit_kd=True), DISTILL_TRAIN, o)
    sft_train = dataclasses.replace(SFT_TRAIN, max_steps=DISTILL_TRAIN.max_steps)
    start = dict(init=args.student) if Path(args.student).is_dir() else dict(init=None, preset=args.student)
    runs["own SFT"] = lambda o: sft(SFTConfig(**start), sft_train, o)
    runs["own SFT + GRPO"] = lambda o: grpo(GRPOConfig(init=str(out / "own-sft")), GRPO_TRAIN, o)

    config = EvalConfig(n=args.n, max_new_tokens=192, mtp_sequences=0)
    teacher = evaluate_checkpoint(args.teacher, config)["accuracy"]
    teacher_params = ModelConfig.load(args.teacher).param_counts()["total"]
    rows = [("teacher", teacher, teacher_params, None)]
    for name, run in runs.items():
        folder = out / name.replace(" + ", "-").replace(" ", "-").lower()
        seconds = timed(folder, run)
        if name == "own SFT + GRPO":
            seconds += json.loads((out / "own-sft" / "seconds.json").read_text())
        rows.append((name, evaluate_checkpoint(folder, config)["accuracy"],
                     ModelConfig.load(folder).param_counts()["total"], seconds))
    print(f"\n{args.n} held-out problems, greedy; teacher {args.teacher}; student from {args.student}")
    print(f"{'model':<20} {'accuracy':>9} {'of teacher':>11} {'parameters':>11} {'x teacher':>10} {'wall time':>10}")
    for name, acc, params, seconds in rows:
        share = f"{acc / teacher:.0%}" if teacher else "n/a"
        wall = f"{seconds / 60:.1f} min" if seconds is not None else "-"
        print(f"{name:<20} {acc:>9.1%} {share:>11} {params:>11,} {params / teacher_params:>10.2f} {wall:>10}")


if __name__ == "__main__":
    main()
