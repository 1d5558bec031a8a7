"""The training commands of `nanoseek` (pretrain, sft, eval, plot, grpo, rejection-sample, distill, run), in the
pattern of nanoseek/cli.py: `<name>_args(parser)` adds the flags, `<name>_run(args)` maps them onto the stage's
dataclasses and calls it (imports inside, so `nanoseek --help` stays fast)."""
from __future__ import annotations

import argparse
import sys

from nanoseek.threads import set_threads, spin_briefly


def _training_args(p: argparse.ArgumentParser, stage: str, steps: int, batch: int, seq_len: int, lr: float,
                   save_every: int, mtp_weight: float = 0.3) -> None:
    """Flags shared by the training stages; None means the stage's calibrated default (train/<stage>.py)."""
    p.add_argument("--preset", default="tiny" if stage == "pretrain" else None,
                   help="model shape (default: tiny)" if stage == "pretrain" else "when given, --init must have this shape")
    if stage == "pretrain":
        p.add_argument("--init", default=None, help="start from this checkpoint instead of random weights")
        p.add_argument("--data", action="append", default=[], metavar="PATH",
                       help=".txt, .jsonl (text field) or .parquet text; repeatable (default: the standard library's "
                            "docstrings, with worked problems as 30%% of the text)")
        p.add_argument("--trace-styles", default=None, metavar="STYLE=SHARE,...",
                       help="shares of the worked problems' styles: answer (the answer alone), worked, checked (a "
                            "self-check after the steps), corrected (a slip caught and corrected) (default: "
                            "answer=0.25,worked=0.62,checked=0.09,corrected=0.04)")
    else:
        p.add_argument("--init", default="runs/pretrain", help="the base model (default: runs/pretrain)")
        p.add_argument("--data", action="append", default=[], metavar="PATH",
                       help="JSONL of problems {prompt, reasoning, answer} or conversations {messages}; repeatable "
                            "(default: generated train-split problems with worked traces)")
    p.add_argument("--out", default=f"runs/{stage}", help=f"output folder, new or empty (default: runs/{stage})")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR exactly where its last checkpoint stopped, with its saved settings")
    p.add_argument("--max-steps", type=int, default=None, help=f"optimizer steps (default: {steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"sequences per optimizer step (default: {batch})")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="sequences per forward pass; gradients accumulate over the batch (default: the whole batch)")
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"{'tokens per sequence' if stage == 'pretrain' else 'longest conversation'} "
                        f"(default: {seq_len})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {lr:g})")
    p.add_argument("--schedule", default=None, help="cosine or wsd, both after a linear warmup (default: cosine)")
    p.add_argument("--save-every", type=int, default=None, help=f"checkpoint interval in steps (default: {save_every})")
    p.add_argument("--eval-every", type=int, default=None, help="validation interval in steps (default: 50)")
    p.add_argument("--seed", type=int, default=None, help="seed of the initial weights and the data (default: 0)")
    p.add_argument("--gamma", type=float, default=None,
                   help="routing-bias update speed of aux-loss-free balancing, V3 §2.1.2 (default: 0.001)")
    p.add_argument("--mtp-weight", type=float, default=None,
                   help=f"MTP loss weight λ, V3 §2.2; 0 skips the MTP module (default: {mtp_weight:g})")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on GPUs and AMX CPUs only)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    _distributed_args(p)


def _distributed_args(p: argparse.ArgumentParser, expert_parallel: bool = True) -> None:
    p.add_argument("--nproc", type=int, default=None,
                   help="run under torchrun with this many processes on this machine (FSDP2 data parallel; gloo on "
                        "CPU, NCCL with one GPU each); --batch-size stays the global batch")
    if expert_parallel:
        p.add_argument("--expert-parallel", action="store_true",
                       help="with several processes: split the routed experts across them, tokens dispatched by "
                            "all-to-all")


def _relaunch(args: argparse.Namespace) -> bool:
    """Start torchrun for --nproc N (N > 1, not already under torchrun); True when it ran and this process is done."""
    from nanoseek import distributed

    if args.nproc is not None and args.nproc < 1:
        from nanoseek.errors import ConfigError
        raise ConfigError(f"--nproc {args.nproc}: expected an int >= 1")
    if args.nproc in (None, 1) or distributed.launched():
        return False
    code = distributed.launch(args.nproc, distributed.without_flag(args.argv, "--nproc"))
    if code:
        sys.exit(code)
    return True


def _training_run(args: argparse.Namespace, stage: str) -> None:
    import dataclasses

    spin_briefly()
    if _relaunch(args):
        return
    from nanoseek import distributed
    from nanoseek.errors import ConfigError

    if args.expert_parallel and not distributed.launched():
        raise ConfigError("--expert-parallel splits the experts across processes: add --nproc N (N > 1) or run "
                          "under torchrun")
    set_threads(args.threads)
    if args.resume is not None and args.out not in (f"runs/{stage}", args.resume):
        raise ConfigError(f"--resume {args.resume} continues in that folder; --out {args.out} contradicts it")
    if stage == "pretrain":
        from nanoseek.train.pretrain import DEFAULT_TRAIN, PretrainConfig as StageConfig, pretrain as run
    else:
        from nanoseek.train.sft import DEFAULT_TRAIN, SFTConfig as StageConfig, sft as run
    train_flags = {"max_steps": args.max_steps, "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
                   "lr": args.lr, "schedule": args.schedule, "save_every": args.save_every,
                   "eval_every": args.eval_every, "seed": args.seed, "bias_update_speed": args.gamma,
                   "mtp_weight": args.mtp_weight, "bf16": args.bf16 or None,
                   "expert_parallel": args.expert_parallel or None}
    train_config = dataclasses.replace(DEFAULT_TRAIN, **{k: v for k, v in train_flags.items() if v is not None})
    stage_flags = {"preset": args.preset, "data": tuple(args.data), "seq_len": args.seq_len, "device": args.device}
    if stage == "pretrain":
        stage_flags["trace_styles"] = args.trace_styles
    if args.init is not None:
        stage_flags["init"] = args.init
    config = dataclasses.replace(StageConfig(), **{k: v for k, v in stage_flags.items() if v is not None})
    _run_stage(args, stage, run, config, train_config)


def _run_stage(args: argparse.Namespace, stage: str, run, config, train_config) -> None:
    """Run a training stage, in torchrun's process group when started by it, and say how it went (rank 0)."""
    from nanoseek import distributed

    out = args.resume or args.out
    if args.resume and distributed.is_main():
        print(f"resuming {out} with the settings saved in {out}/run.json", flush=True)
    with distributed.process_group(args.device):
        result = run(config, train_config, out, resume=args.resume is not None)
        if distributed.is_main():
            _training_done(result, stage, out)


def _training_done(result, stage: str, out: str) -> None:
    """A training stage's last words: how to resume an interrupted run, or what the run did."""
    if result.interrupted:
        print(f"nanoseek: interrupted at step {result.step}; continue with: nanoseek {stage} --resume {out}",
              file=sys.stderr)
        sys.exit(130)
    mfu = f", MFU {result.mfu:.1%}" if result.mfu is not None else ""
    print(f"{stage}: {result.step} steps, {result.tokens:,} tokens in {result.elapsed_s / 60:.1f} min "
          f"({result.tokens_per_s:,.0f} tokens/s{mfu}), final loss {result.loss:.4f}; model in {out}")


def pretrain_args(p: argparse.ArgumentParser) -> None:
    _training_args(p, "pretrain", steps=420, batch=16, seq_len=256, lr=3e-3, save_every=100)


def pretrain_run(args: argparse.Namespace) -> None:
    _training_run(args, "pretrain")


def sft_args(p: argparse.ArgumentParser) -> None:
    _training_args(p, "sft", steps=500, batch=8, seq_len=256, lr=3e-3, save_every=100, mtp_weight=0.0)


def sft_run(args: argparse.Namespace) -> None:
    _training_run(args, "sft")


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory (e.g. runs/sft)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="JSONL of problems from `nanoseek data` (default: a generated held-out mix)")
    p.add_argument("--n", type=int, default=200, help="problems in the generated mix (default: 200)")
    p.add_argument("--difficulty", type=int, default=None, help="level of the generated mix (default: the pipeline's)")
    p.add_argument("--samples", type=int, default=1, help="responses per problem, k of pass@k and maj@k (default: 1)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature; 0 is greedy (default: 0, or 0.7 with --samples > 1)")
    p.add_argument("--few-shot", type=int, default=0,
                   help="prompt a base model with this many worked problems instead of the chat template (default: 0)")
    p.add_argument("--template", default="chat",
                   help="the prompt without --few-shot: chat (the chat template) or r1-zero (R1-Zero's plain-text "
                        "template for a base model, R1 §2.2.1) (default: chat)")
    p.add_argument("--max-new-tokens", type=int, default=320, help="longest response (default: 320)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def eval_run(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    spin_briefly()
    from nanoseek.train.evaluate import EvalConfig, evaluate_checkpoint, format_report

    temperature = args.temperature if args.temperature is not None else (0.7 if args.samples > 1 else 0.0)
    flags = {"data": args.data, "n": args.n, "difficulty": args.difficulty, "samples": args.samples,
             "temperature": temperature, "few_shot": args.few_shot, "template": args.template,
             "max_new_tokens": args.max_new_tokens,
             "seed": args.seed, "device": args.device}
    config = dataclasses.replace(EvalConfig(), **{k: v for k, v in flags.items() if v is not None})
    figures = evaluate_checkpoint(args.checkpoint, config)
    print(json.dumps(figures, indent=1) if args.json else format_report(figures))


def plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="a training run's folder (with metrics.jsonl)")


def plot_run(args: argparse.Namespace) -> None:
    from nanoseek.train.plot import plot_run as plot

    for path in plot(args.folder):
        print(f"wrote {path}")


def grpo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", default=None, help="the policy to start from (default: runs/sft)")
    p.add_argument("--preset", default=None, help="when given, --init must have this shape")
    p.add_argument("--out", default="runs/grpo", help="output folder, new or empty (default: runs/grpo)")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR exactly where its last checkpoint stopped, with its saved settings")
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="JSONL of problems from `nanoseek data` (default: generated train-split problems)")
    p.add_argument("--difficulty", type=int, default=None, help="level of the generated problems (default: 1)")
    p.add_argument("--few-shot", type=int, default=None,
                   help="worked examples before each question: a base model's prompt; default 0, --template's")
    p.add_argument("--template", default=None,
                   help="the prompt without --few-shot: chat (the chat template) or r1-zero (R1-Zero's plain-text "
                        "template for a base model, R1 §2.2.1) (default: chat)")
    p.add_argument("--rewards", default=None, metavar="NAME=W,...",
                   help="weighted rewards from accuracy, format, language, length (default: accuracy=1,format=0.5)")
    p.add_argument("--group-size", type=int, default=None, help="G, completions per question (default: 8)")
    p.add_argument("--prompts-per-step", type=int, default=None, help="questions per rollout (default: 8)")
    p.add_argument("--mu", type=int, default=None, help="μ, policy updates per rollout (default: 1)")
    p.add_argument("--beta", type=float, default=None,
                   help="β, weight of the KL to the starting policy; 0 keeps no reference model (default: 0.04)")
    p.add_argument("--clip-eps", type=float, default=None,
                   help="ε of the clipped ratio, ε_low with --clip-eps-high (default: 0.2)")
    p.add_argument("--clip-eps-high", type=float, default=None,
                   help="ε_high of clip-higher, DAPO §3.1 (0.28 there): the ratio is clipped to [1 - ε, 1 + ε_high] "
                        "(default: ε)")
    p.add_argument("--loss-agg", default=None,
                   help="sequence (DeepSeekMath: mean over each completion's tokens) or token (DAPO, Dr. GRPO) "
                        "(default: sequence)")
    p.add_argument("--adv-scale", default=None,
                   help="std (advantage = (r - mean) / std) or none (Dr. GRPO: r - mean) (default: std)")
    p.add_argument("--mask-truncated", action="store_true",
                   help="completions cut at --max-new-tokens take no loss (DAPO's overlong filtering)")
    p.add_argument("--dynamic-sampling", type=int, default=None, metavar="ROUNDS",
                   help="keep the groups whose answers are neither all right nor all wrong and replace the others "
                        "with new questions, sampling at most ROUNDS rounds of --prompts-per-step questions a step "
                        "(DAPO §3.2); 0: off, groups whose rewards are all equal are dropped only (default: 0)")
    p.add_argument("--curriculum", default=None, metavar="LOW,HIGH",
                   help="move each task's level one up when its running pass rate is above HIGH, one down when below "
                        "LOW, e.g. 0.1,0.9 (the edge of competence, arXiv 2512.07783); starts at --difficulty "
                        "(default: off)")
    p.add_argument("--curriculum-levels", default=None, metavar="LOWEST,HIGHEST",
                   help="the levels the curriculum moves between (default: 1,5)")
    p.add_argument("--curriculum-window", type=int, default=None, metavar="N",
                   help="completions of a task's running pass rate (default: 64)")
    p.add_argument("--heldout", type=int, default=None, metavar="N",
                   help="held-out problems evaluated greedily every --eval-every steps and at the end, and by "
                        "pass@k at the start and the end; 0: none (default: 100)")
    p.add_argument("--pass-k", type=int, default=None, help="k of the held-out pass@k; 0: none (default: 8)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="held-out greedy evaluation interval in steps; 0: at the end only (default: 0)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest completion (default: 160)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1.0)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: 40)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="completions per forward pass; gradients accumulate over the rollout (default: all at once)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint interval in steps (default: 20)")
    p.add_argument("--seed", type=int, default=None, help="seed of the questions and the sampling (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    _distributed_args(p, expert_parallel=False)


def grpo_run(args: argparse.Namespace) -> None:
    import dataclasses

    spin_briefly()
    if _relaunch(args):
        return
    from nanoseek.errors import ConfigError
    from nanoseek.train.grpo import DEFAULT_TRAIN, GRPOConfig, grpo

    set_threads(args.threads)
    if args.resume is not None and args.out not in ("runs/grpo", args.resume):
        raise ConfigError(f"--resume {args.resume} continues in that folder; --out {args.out} contradicts it")
    train_flags = {"max_steps": args.max_steps, "lr": args.lr, "micro_batch_size": args.micro_batch_size,
                   "save_every": args.save_every, "eval_every": args.eval_every, "seed": args.seed}
    train_config = dataclasses.replace(DEFAULT_TRAIN, **{k: v for k, v in train_flags.items() if v is not None})
    flags = {"init": args.init, "preset": args.preset, "prompts": args.prompts, "difficulty": args.difficulty,
             "few_shot": args.few_shot, "template": args.template, "rewards": args.rewards,
             "group_size": args.group_size, "prompts_per_step": args.prompts_per_step, "mu": args.mu,
             "beta": args.beta, "clip_eps": args.clip_eps, "clip_eps_high": args.clip_eps_high,
             "loss_agg": args.loss_agg, "adv_scale": args.adv_scale, "mask_truncated": args.mask_truncated or None,
             "dynamic_sampling": args.dynamic_sampling,
             "curriculum": _pair(args.curriculum, float, "--curriculum", "LOW,HIGH"),
             "curriculum_levels": _pair(args.curriculum_levels, int, "--curriculum-levels", "LOWEST,HIGHEST"),
             "curriculum_window": args.curriculum_window, "heldout": args.heldout, "pass_k": args.pass_k,
             "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "device": args.device}
    config = dataclasses.replace(GRPOConfig(), **{k: v for k, v in flags.items() if v is not None})
    _run_stage(args, "grpo", grpo, config, train_config)


def _pair(text: str | None, kind: type, flag: str, expected: str) -> tuple | None:
    """'0.1,0.9' -> (0.1, 0.9); None stays None."""
    if text is None:
        return None
    from nanoseek.errors import ConfigError

    try:
        low, high = (kind(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected {expected}") from None
    return low, high


def rejection_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the model to sample from (e.g. runs/grpo)")
    p.add_argument("--prompts", required=True, metavar="FILE", help="JSONL of problems from `nanoseek data`")
    p.add_argument("--k", type=int, default=4, help="completions sampled per question (default: 4)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="JSONL of kept rows, SFT data for `nanoseek sft --data`")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest completion (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--edge", action="store_true",
                   help="keep only questions at the edge of competence: the greedy answer wrong, some sample right "
                        "(one more greedy completion per question)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def rejection_sample_run(args: argparse.Namespace) -> None:
    spin_briefly()
    from nanoseek.train.rejection import RejectionConfig, rejected, rejection_sample

    set_threads(args.threads)
    config = RejectionConfig(checkpoint=args.checkpoint, prompts=args.prompts, k=args.k, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, edge=args.edge, device=args.device)
    c = rejection_sample(config, args.out)
    edge = f", {c['at_edge']} at the edge" if args.edge else ""
    print(f"kept {c['kept']} of {c['samples']} completions ({c['questions_solved']} of {c['questions']} questions "
          f"have one{edge}); rejected: {rejected(c)}; wrote {args.out}")


def distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="runs/r1/grpo-final",
                   help="the teacher checkpoint (default: runs/r1/grpo-final, the end of `nanoseek run`)")
    p.add_argument("--student", default="tiny-student",
                   help="a preset, trained from fresh weights with the teacher's tokenizer, or a checkpoint "
                        "(default: tiny-student)")
    p.add_argument("--out", default="runs/distill", help="output folder, new or empty (default: runs/distill)")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR exactly where its last checkpoint stopped, with its saved settings")
    p.add_argument("--traces", metavar="FILE", default=None,
                   help="train on these verified teacher completions (`nanoseek rejection-sample`) instead of "
                        "sampling them")
    p.add_argument("--k", type=int, default=None, help="completions the teacher samples per question (default: 4)")
    p.add_argument("--prompts", type=int, default=None,
                   help="train-split questions the teacher answers (default: 4096)")
    p.add_argument("--temperature", type=float, default=None, help="the teacher's sampling temperature (default: 0.6)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest teacher completion (default: 192)")
    p.add_argument("--logit-kd", action="store_true",
                   help="also match the teacher's token distribution: (1-α) SFT + α T² KL(teacher || student)")
    p.add_argument("--kd-temperature", type=float, default=None, help="T of --logit-kd (default: 2.0)")
    p.add_argument("--kd-alpha", type=float, default=None, help="α of --logit-kd, in [0, 1] (default: 0.5)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: 800)")
    p.add_argument("--batch-size", type=int, default=None, help="conversations per optimizer step (default: 16)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 6e-3)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the student's weights, the questions and the sampling (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def distill_run(args: argparse.Namespace) -> None:
    import dataclasses

    spin_briefly()
    from nanoseek.errors import ConfigError
    from nanoseek.train.distill import DEFAULT_TRAIN, DistillConfig, distill

    set_threads(args.threads)
    if args.resume is not None and args.out not in ("runs/distill", args.resume):
        raise ConfigError(f"--resume {args.resume} continues in that folder; --out {args.out} contradicts it")
    train_flags = {"max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    train_config = dataclasses.replace(DEFAULT_TRAIN, **{k: v for k, v in train_flags.items() if v is not None})
    flags = {"teacher": args.teacher, "student": args.student, "traces": args.traces, "k": args.k,
             "prompts": args.prompts, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
             "logit_kd": args.logit_kd or None, "kd_temperature": args.kd_temperature, "kd_alpha": args.kd_alpha,
             "device": args.device}
    config = dataclasses.replace(DistillConfig(), **{k: v for k, v in flags.items() if v is not None})
    out = args.resume or args.out
    if args.resume:
        print(f"resuming {out} with the settings saved in {out}/run.json", flush=True)
    _training_done(distill(config, train_config, out, resume=args.resume is not None), "distill", out)


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/r1", help="output folder; run again to finish an interrupted run "
                                                    "(default: runs/r1)")
    p.add_argument("--quick", action="store_true", help="small budgets: about 10 minutes on 2 CPU cores "
                                                        "(default: 30-60)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # a few steps per stage, for CI
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def run_run(args: argparse.Namespace) -> None:
    spin_briefly()
    from nanoseek.pipeline import run

    set_threads(args.threads)
    records = run(args.out, "smoke" if args.smoke else "quick" if args.quick else "default")
    width = max(len(r["name"]) for r in records)
    for r in records:
        print(f"{r['name']:<{width}}  accuracy {r['accuracy']:6.1%}  format {r['format_rate']:6.1%}  "
              f"length {r['mean_length']:5.0f}  {r['seconds'] / 60:5.1f} min")
    print(f"report: {args.out}/report.md")
