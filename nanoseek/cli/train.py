"""The training commands: pretrain, sft, grpo, distill (a stage each, their flags generated from the stage's config
and its TrainConfig), rejection-sample, eval, plot and run."""
from __future__ import annotations

import argparse
import sys

from nanoseek.cli.flags import add_flags, from_flags
from nanoseek.threads import set_threads, spin_briefly

# TrainConfig fields without a flag: compile (--no-compile), and what a stage decides itself
TRAIN_SKIP = {"pretrain": ("compile",), "sft": ("compile",), "distill": ("compile", "expert_parallel"),
              "grpo": ("compile", "batch_size", "expert_parallel", "mtp_weight", "balance_weight")}
RENAMED = {"bias_update_speed": "gamma"}
DISTRIBUTED = ("pretrain", "sft", "grpo")  # the stages that run under torchrun (--nproc)


def stage_defaults(stage: str):
    """The stage's run function, its config's defaults and its calibrated TrainConfig."""
    if stage == "pretrain":
        from nanoseek.train.pretrain import DEFAULT_TRAIN, PretrainConfig as Config, pretrain as run
    elif stage == "sft":
        from nanoseek.train.sft import DEFAULT_TRAIN, SFTConfig as Config, sft as run
    elif stage == "grpo":
        from nanoseek.train.grpo import DEFAULT_TRAIN, GRPOConfig as Config
        from nanoseek.train.rl import grpo as run
    else:
        from nanoseek.train.distill import DEFAULT_TRAIN, DistillConfig as Config, distill as run
    return run, Config(), DEFAULT_TRAIN


def _stage_args(stage: str):
    def add(p: argparse.ArgumentParser) -> None:
        _, config, train = stage_defaults(stage)
        add_flags(p, config)
        add_flags(p, train, skip=TRAIN_SKIP[stage], renamed=RENAMED)
        p.add_argument("--out", default=f"runs/{stage}", help=f"output folder, new or empty (default: runs/{stage})")
        p.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the run in DIR exactly where its last checkpoint stopped, with its saved settings")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
        if stage in DISTRIBUTED:
            p.add_argument("--nproc", type=int, default=None,
                           help="run under torchrun with this many processes on this machine (FSDP2 data parallel; "
                                "gloo on CPU, NCCL with one GPU each); the batch stays the global batch")
    return add


def _relaunch(args: argparse.Namespace) -> bool:
    """Start torchrun for --nproc N (N > 1, not already under torchrun); True when it ran and this process is done."""
    from nanoseek import distributed
    from nanoseek.errors import ConfigError

    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc {nproc}: expected an int >= 1")
    if nproc in (None, 1) or distributed.launched():
        return False
    code = distributed.launch(nproc, distributed.without_flag(args.argv, "--nproc"))
    if code:
        sys.exit(code)
    return True


def _stage_run(stage: str):
    def run_command(args: argparse.Namespace) -> None:
        spin_briefly()
        if _relaunch(args):
            return
        from nanoseek import distributed
        from nanoseek.errors import ConfigError

        run, config, train = stage_defaults(stage)
        if getattr(args, "expert_parallel", None) and not distributed.launched():
            raise ConfigError("--expert-parallel splits the experts across processes: add --nproc N (N > 1) or run "
                              "under torchrun")
        set_threads(args.threads)
        if args.resume is not None and args.out not in (f"runs/{stage}", args.resume):
            raise ConfigError(f"--resume {args.resume} continues in that folder; --out {args.out} contradicts it")
        config, train = from_flags(args, config), from_flags(args, train, skip=TRAIN_SKIP[stage], renamed=RENAMED)
        out = args.resume or args.out
        if args.resume and distributed.is_main():
            print(f"resuming {out} with the settings saved in {out}/run.json", flush=True)
        with distributed.process_group(config.device):
            result = run(config, train, out, resume=args.resume is not None)
            if distributed.is_main():
                _training_done(result, stage, out)
    return run_command


def _training_done(result, stage: str, out: str) -> None:
    """A training stage's last words: how to resume an interrupted run, or what the run did."""
    if result.interrupted:
        print(f"nanoseek: interrupted at step {result.step}; continue with: nanoseek {stage} --resume {out}",
              file=sys.stderr)
        sys.exit(130)
    from nanoseek.cost import utilisation

    mfu = f", MFU {utilisation(result.mfu)}" if result.mfu is not None else ""
    print(f"{stage}: {result.step} steps, {result.tokens:,} tokens in {result.elapsed_s / 60:.1f} min "
          f"({result.tokens_per_s:,.0f} tokens/s{mfu}), final loss {result.loss:.4f}; model in {out}")


pretrain_args, pretrain_run = _stage_args("pretrain"), _stage_run("pretrain")
sft_args, sft_run = _stage_args("sft"), _stage_run("sft")
grpo_args, grpo_run = _stage_args("grpo"), _stage_run("grpo")
distill_args, distill_run = _stage_args("distill"), _stage_run("distill")


def eval_args(p: argparse.ArgumentParser) -> None:
    from nanoseek.train.evaluate import EvalConfig

    p.add_argument("checkpoint", help="a checkpoint directory (e.g. runs/sft)")
    add_flags(p, EvalConfig(), skip=("temperature",))
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature; 0 is greedy (default: 0, or 0.7 with --samples > 1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def eval_run(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    spin_briefly()
    from nanoseek.train.evaluate import EvalConfig, evaluate_checkpoint, format_report

    samples = args.samples if args.samples is not None else EvalConfig.samples
    temperature = args.temperature if args.temperature is not None else (0.7 if samples > 1 else 0.0)
    config = from_flags(args, dataclasses.replace(EvalConfig(), temperature=temperature), skip=("temperature",))
    figures = evaluate_checkpoint(args.checkpoint, config)
    print(json.dumps(figures, indent=1) if args.json else format_report(figures))


def plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="a training run's folder (with metrics.jsonl)")


def plot_run(args: argparse.Namespace) -> None:
    from nanoseek.train.plot import plot_run as plot

    for path in plot(args.folder):
        print(f"wrote {path}")


def rejection_sample_args(p: argparse.ArgumentParser) -> None:
    from nanoseek.train.rejection import RejectionConfig

    p.add_argument("checkpoint", help="the model to sample from (e.g. runs/grpo)")
    p.add_argument("--prompts", required=True, metavar="FILE", help="JSONL of problems from `nanoseek data`")
    add_flags(p, RejectionConfig(checkpoint="", prompts=""), skip=("checkpoint", "prompts"))
    p.add_argument("--out", required=True, metavar="FILE",
                   help="JSONL of kept rows, SFT data for `nanoseek sft --data`")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def rejection_sample_run(args: argparse.Namespace) -> None:
    spin_briefly()
    from nanoseek.train.rejection import RejectionConfig, rejected, rejection_sample

    set_threads(args.threads)
    config = from_flags(args, RejectionConfig(checkpoint=args.checkpoint, prompts=args.prompts),
                        skip=("checkpoint", "prompts"))
    c = rejection_sample(config, args.out)
    edge = f", {c['at_edge']} at the edge" if config.edge else ""
    print(f"kept {c['kept']} of {c['samples']} completions ({c['questions_solved']} of {c['questions']} questions "
          f"have one{edge}); rejected: {rejected(c)}; wrote {args.out}")


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/r1", help="output folder; run again to finish an interrupted run "
                                                    "(default: runs/r1)")
    p.add_argument("--quick", action="store_true",
                   help="small budgets, too small to learn the tasks: 6 minutes on 2 Xeon cores with AVX-512 and AMX "
                        "(the default budgets: 35-48 minutes there, longer on other CPUs; see the README)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # a few steps per stage, for CI
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def run_run(args: argparse.Namespace) -> None:
    spin_briefly()
    from nanoseek.recipe.runner import run

    set_threads(args.threads)
    records = run(args.out, "smoke" if args.smoke else "quick" if args.quick else "default")
    width = max(len(r["name"]) for r in records)
    for r in records:
        print(f"{r['name']:<{width}}  accuracy {r['accuracy']:6.1%}  format {r['format_rate']:6.1%}  "
              f"length {r['mean_length']:5.0f}  {r['seconds'] / 60:5.1f} min")
    print(f"report: {args.out}/report.md")
