"""The `nanoseek` command. Each subcommand maps its flags onto the library's dataclasses and calls it;
library code never reads sys.argv. Errors from `nanoseek.errors` print one line and exit non-zero.

A command is two functions, `<name>_args(parser)` adding its flags and `<name>_run(args)` doing the work
(imports inside, so `nanoseek --help` stays fast), listed once in COMMANDS at the bottom."""
from __future__ import annotations

import argparse
import sys

from nanoseek.errors import NanoseekError


def info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="tiny",
                   help="a preset (tiny, small, deepseek-v2-lite, deepseek-v3) or a checkpoint directory (default: tiny)")


def info_run(args: argparse.Namespace) -> None:
    from nanoseek.info import describe

    print(describe(args.model))


def tokenizer_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train a byte-level BPE on UTF-8 text files",
                           description="train a byte-level BPE on UTF-8 text files")
    train.add_argument("files", nargs="+", help="UTF-8 text files, read line by line")
    train.add_argument("--vocab-size", type=int, required=True,
                       help="largest vocabulary, special tokens included (at least 262)")
    train.add_argument("--out", required=True, help="directory for tokenizer.json and tokenizer_config.json")


def tokenizer_run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from nanoseek.tokenizer import train_tokenizer

    # "train" is the only action so far
    megabytes = sum(Path(f).stat().st_size for f in args.files if Path(f).is_file()) / 1e6
    print(f"training a byte-level BPE of up to {args.vocab_size} tokens on {len(args.files)} file(s), "
          f"{megabytes:.1f} MB", flush=True)
    tokenizer = train_tokenizer(args.files, args.vocab_size, args.out)
    print(f"vocab size {tokenizer.vocab_size}, saved to {args.out}")


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="arithmetic, expression, linear, countdown, or mix (all four interleaved)")
    p.add_argument("--split", default="train", help="train or eval (disjoint by a hash of the prompt; default: train)")
    p.add_argument("--n", type=int, default=1000, help="number of problems (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--difficulty", type=int, default=None, help="level 1..5 (default: each task's own)")
    p.add_argument("--out", required=True, help="JSONL file to write, one problem per line")


def data_run(args: argparse.Namespace) -> None:
    from itertools import islice

    from tqdm import tqdm

    from nanoseek.data.tasks import check_count, save_jsonl, stream, stream_mix

    problems = (stream_mix(args.seed, args.split, args.difficulty) if args.task == "mix"
                else stream(args.task, args.seed, args.split, args.difficulty))
    n = check_count(args.n)
    rows = save_jsonl(tqdm(islice(problems, n), total=n, desc=f"{args.task} {args.split}", unit="problem"), args.out)
    print(f"wrote {rows} {args.task} problems ({args.split}) to {args.out}")


def cost_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="tiny", help="a preset or a checkpoint directory (default: tiny)")
    p.add_argument("--tokens", default="14.8T", help="training tokens, e.g. 14.8T (default: 14.8T, V3's corpus)")
    p.add_argument("--seq-len", type=int, default=4096, help="training sequence length (default: 4096)")
    p.add_argument("--gpu", default="h800", help="h800, h100, a100, or cpu (this machine's measured fp32 peak)")
    p.add_argument("--precision", default="bf16", help="bf16 or fp8: which tensor-core peak (default: bf16)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation in (0, 1] (default: 0.4)")
    group.add_argument("--hours", default=None, help="device-hours actually spent, e.g. 2.788M: solve for the MFU")
    p.add_argument("--price", type=float, default=2.0, help="dollars per device-hour (default: 2, as the V3 report)")
    p.add_argument("--serve-tps", type=float, default=None,
                   help="measured generation tokens/s of one device: also print the price per million tokens")


def cost_run(args: argparse.Namespace) -> None:
    from nanoseek.cost import GPUS, measure_matmul_peak, parse_amount, serving_price_per_million, training_cost
    from nanoseek.errors import ConfigError
    from nanoseek.info import resolve_config

    config = resolve_config(args.model)
    if args.gpu == "cpu":
        peak, device = measure_matmul_peak(), "this CPU (measured fp32 matmul peak)"
    elif args.gpu in GPUS:
        if args.precision not in GPUS[args.gpu]:
            raise ConfigError(f"--precision {args.precision!r} has no peak for {args.gpu}; "
                              f"choose one of {', '.join(GPUS[args.gpu])}")
        peak, device = GPUS[args.gpu][args.precision], f"{args.gpu.upper()} {args.precision}"
    else:
        raise ConfigError(f"--gpu must be one of {', '.join([*GPUS, 'cpu'])}, got {args.gpu!r}")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.price < 0:
        raise ConfigError(f"--price must not be negative, got {args.price}")
    hours = parse_amount(args.hours) if args.hours else None
    mfu = args.mfu if args.mfu is not None or hours is not None else 0.4
    c = training_cost(config, parse_amount(args.tokens), args.seq_len, peak, mfu, hours, args.price)
    print(f"model                {args.model}")
    print(f"FLOPs per token      {c['flops_per_token'] / 1e9:,.1f} GFLOP (training, MTP included, seq {args.seq_len})")
    print(f"total FLOPs          {c['total_flops']:.3e} for {parse_amount(args.tokens):.4g} tokens")
    print(f"device               {device}: {c['peak'] / 1e12:,.1f} TFLOP/s peak")
    print(f"MFU                  {c['mfu']:.2%}" + (" (solved from --hours)" if hours else ""))
    print(f"device-hours         {c['device_hours']:,.0f} ({c['device_hours'] / 1e6:.3f}M)")
    print(f"cost                 ${c['dollars']:,.0f} (${c['dollars'] / 1e6:.3f}M at ${args.price}/device-hour)")
    if args.serve_tps:
        per_m = serving_price_per_million(args.serve_tps, args.price)
        print(f"serving              ${per_m:.4f} per million output tokens at {args.serve_tps:g} tokens/s")


def _training_args(p: argparse.ArgumentParser, stage: str, steps: int, batch: int, seq_len: int, lr: float,
                   save_every: int) -> None:
    """Flags shared by the training stages; None means the stage's calibrated default (train/<stage>.py)."""
    p.add_argument("--preset", default="tiny" if stage == "pretrain" else None,
                   help="model shape (default: tiny)" if stage == "pretrain" else "when given, --init must have this shape")
    if stage == "pretrain":
        p.add_argument("--init", default=None, help="start from this checkpoint instead of random weights")
        p.add_argument("--data", action="append", default=[], metavar="PATH",
                       help=".txt, .jsonl (text field) or .parquet text; repeatable (default: the standard library's "
                            "docstrings mixed with 30%% worked problems)")
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
    p.add_argument("--mtp-weight", type=float, default=None, help="MTP loss weight λ, V3 §2.2 (default: 0.3)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on GPUs and AMX CPUs only)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def _passive_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning threads that wait
    for a descheduled sibling made training steps several times slower. Set before torch loads; a value the user
    exported wins."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None: torch's choice)."""
    import torch

    from nanoseek.errors import ConfigError

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: expected an int >= 1")
        torch.set_num_threads(threads)


def _training_run(args: argparse.Namespace, stage: str) -> None:
    import dataclasses

    _passive_threads()
    from nanoseek.errors import ConfigError

    _set_threads(args.threads)
    if args.resume is not None and args.out not in (f"runs/{stage}", args.resume):
        raise ConfigError(f"--resume {args.resume} continues in that folder; --out {args.out} contradicts it")
    if stage == "pretrain":
        from nanoseek.train.pretrain import DEFAULT_TRAIN, PretrainConfig as StageConfig, pretrain as run
    else:
        from nanoseek.train.sft import DEFAULT_TRAIN, SFTConfig as StageConfig, sft as run
    train_flags = {"max_steps": args.max_steps, "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
                   "lr": args.lr, "schedule": args.schedule, "save_every": args.save_every,
                   "eval_every": args.eval_every, "seed": args.seed, "bias_update_speed": args.gamma,
                   "mtp_weight": args.mtp_weight, "bf16": args.bf16 or None}
    train_config = dataclasses.replace(DEFAULT_TRAIN, **{k: v for k, v in train_flags.items() if v is not None})
    stage_flags = {"preset": args.preset, "data": tuple(args.data), "seq_len": args.seq_len, "device": args.device}
    if args.init is not None:
        stage_flags["init"] = args.init
    config = dataclasses.replace(StageConfig(), **{k: v for k, v in stage_flags.items() if v is not None})
    out = args.resume or args.out
    if args.resume:
        print(f"resuming {out} with the settings saved in {out}/run.json", flush=True)
    _training_done(run(config, train_config, out, resume=args.resume is not None), stage, out)


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
    _training_args(p, "pretrain", steps=300, batch=16, seq_len=256, lr=3e-3, save_every=100)


def pretrain_run(args: argparse.Namespace) -> None:
    _training_run(args, "pretrain")


def sft_args(p: argparse.ArgumentParser) -> None:
    _training_args(p, "sft", steps=150, batch=16, seq_len=512, lr=1e-3, save_every=50)


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
    p.add_argument("--max-new-tokens", type=int, default=320, help="longest response (default: 320)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def eval_run(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    _passive_threads()
    from nanoseek.train.evaluate import EvalConfig, evaluate_checkpoint, format_report

    temperature = args.temperature if args.temperature is not None else (0.7 if args.samples > 1 else 0.0)
    flags = {"data": args.data, "n": args.n, "difficulty": args.difficulty, "samples": args.samples,
             "temperature": temperature, "few_shot": args.few_shot, "max_new_tokens": args.max_new_tokens,
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


def quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a checkpoint directory, ours or Hugging Face / DeepSeek layout")
    p.add_argument("--to", required=True, metavar="FORMAT", dest="format",
                   help="bf16, int8 (per-row scales), int4 (group-wise scales) or fp8 (DeepSeek's 128x128 blocks)")
    p.add_argument("--group-size", type=int, default=64,
                   help="int4: input columns per scale, 32, 64, 128 or 256 (default: 64)")
    p.add_argument("--out", required=True, help="directory for the quantized checkpoint")


def quantize_run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from nanoseek.checkpoint import load_checkpoint, save_quantized
    from nanoseek.quant import check_format

    check_format(args.format, args.group_size)
    model = load_checkpoint(args.src)
    extras = tuple(sorted(p for p in Path(args.src).iterdir()
                          if p.is_file() and (p.name.startswith("tokenizer") or p.name == "special_tokens_map.json")))
    out = save_quantized(model, args.out, args.format, args.group_size, extra_files=extras, progress=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(f"wrote {args.format} checkpoint to {out}: {size / 2**20:.1f} MiB of weights"
          + (f", with {', '.join(p.name for p in extras)}" if extras else ""))


def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory with its tokenizer.json (e.g. runs/sft)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key-file", metavar="FILE", default=None,
                   help="require one of the keys in FILE (one per line) as 'Authorization: Bearer KEY'")
    p.add_argument("--prices", metavar="FILE", default=None,
                   help="JSON prices in USD per million tokens, any of input_cache_hit, input_cache_miss, output "
                        "(default: DeepSeek V3's 0.07, 0.27, 1.10)")
    p.add_argument("--tls-cert", metavar="FILE", default=None, help="PEM certificate: serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--cache-mb", type=float, default=256.0, help="latent cache budget in MiB (default: 256)")
    p.add_argument("--prefix-cache-dir", metavar="DIR", default=None,
                   help="also keep cached prefixes on disk, across restarts (default: memory only)")
    p.add_argument("--log-prompts", action="store_true",
                   help="log prompts and completions (without it they are never logged)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for their first token at most; more get 429 (default: 256)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body; larger ones get 413 (default: 1048576)")
    p.add_argument("--default-max-tokens", type=int, default=4096,
                   help="max_tokens of a request that sets none (default: 4096, clipped to the context)")


def serve_run(args: argparse.Namespace) -> None:
    import ipaddress
    import logging
    from pathlib import Path

    _passive_threads()
    from nanoseek.errors import ConfigError
    from nanoseek.infer import Engine, EngineConfig
    from nanoseek.serve import Prices, ServeConfig, load_prices, serve
    from nanoseek.serve.auth import load_api_keys

    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    config = ServeConfig(
        model_name=Path(args.checkpoint).resolve().name, host=args.host, port=args.port,
        api_keys=load_api_keys(args.api_key_file) if args.api_key_file else (),
        prices=load_prices(args.prices) if args.prices else Prices(), tls_cert=args.tls_cert, tls_key=args.tls_key,
        log_prompts=args.log_prompts, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.default_max_tokens)
    try:
        local = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        local = args.host == "localhost"
    if not local and not config.api_keys:
        print(f"nanoseek: warning: listening on {args.host} without --api-key-file: anyone who can reach it may "
              "use it", file=sys.stderr)
    if not local and not config.tls_cert:
        print(f"nanoseek: warning: listening on {args.host} without TLS: prompts and replies cross the network "
              "unencrypted", file=sys.stderr)
    engine = Engine(args.checkpoint, EngineConfig(cache_mb=args.cache_mb, prefix_cache_dir=args.prefix_cache_dir))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    print(f"serving {config.model_name} at {config.scheme}://{args.host}:{args.port}/ (chat page at /, API at /v1)",
          flush=True)
    serve(engine, config)


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
                   help="worked examples before each question: a base model's prompt (R1-Zero); default 0, the chat "
                        "template")
    p.add_argument("--rewards", default=None, metavar="NAME=W,...",
                   help="weighted rewards from accuracy, format, language, length (default: accuracy=1,format=0.5)")
    p.add_argument("--group-size", type=int, default=None, help="G, completions per question (default: 8)")
    p.add_argument("--prompts-per-step", type=int, default=None, help="questions per rollout (default: 8)")
    p.add_argument("--mu", type=int, default=None, help="μ, policy updates per rollout (default: 1)")
    p.add_argument("--beta", type=float, default=None,
                   help="β, weight of the KL to the starting policy; 0 keeps no reference model (default: 0.04)")
    p.add_argument("--clip-eps", type=float, default=None, help="ε of the clipped ratio (default: 0.2)")
    p.add_argument("--loss-agg", default=None,
                   help="sequence (DeepSeekMath: mean over each completion's tokens) or token (DAPO, Dr. GRPO) "
                        "(default: sequence)")
    p.add_argument("--adv-scale", default=None,
                   help="std (advantage = (r - mean) / std) or none (Dr. GRPO: r - mean) (default: std)")
    p.add_argument("--mask-truncated", action="store_true",
                   help="completions cut at --max-new-tokens take no loss (DAPO's overlong filtering)")
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


def grpo_run(args: argparse.Namespace) -> None:
    import dataclasses

    _passive_threads()
    from nanoseek.errors import ConfigError
    from nanoseek.train.grpo import DEFAULT_TRAIN, GRPOConfig, grpo

    _set_threads(args.threads)
    if args.resume is not None and args.out not in ("runs/grpo", args.resume):
        raise ConfigError(f"--resume {args.resume} continues in that folder; --out {args.out} contradicts it")
    train_flags = {"max_steps": args.max_steps, "lr": args.lr, "micro_batch_size": args.micro_batch_size,
                   "save_every": args.save_every, "seed": args.seed}
    train_config = dataclasses.replace(DEFAULT_TRAIN, **{k: v for k, v in train_flags.items() if v is not None})
    flags = {"init": args.init, "preset": args.preset, "prompts": args.prompts, "difficulty": args.difficulty,
             "few_shot": args.few_shot, "rewards": args.rewards, "group_size": args.group_size,
             "prompts_per_step": args.prompts_per_step, "mu": args.mu, "beta": args.beta, "clip_eps": args.clip_eps,
             "loss_agg": args.loss_agg, "adv_scale": args.adv_scale, "mask_truncated": args.mask_truncated or None,
             "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "device": args.device}
    config = dataclasses.replace(GRPOConfig(), **{k: v for k, v in flags.items() if v is not None})
    out = args.resume or args.out
    if args.resume:
        print(f"resuming {out} with the settings saved in {out}/run.json", flush=True)
    _training_done(grpo(config, train_config, out, resume=args.resume is not None), "grpo", out)


def rejection_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the model to sample from (e.g. runs/grpo)")
    p.add_argument("--prompts", required=True, metavar="FILE", help="JSONL of problems from `nanoseek data`")
    p.add_argument("--k", type=int, default=4, help="completions sampled per question (default: 4)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="JSONL of kept rows, SFT data for `nanoseek sft --data`")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest completion (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def rejection_sample_run(args: argparse.Namespace) -> None:
    _passive_threads()
    from nanoseek.train.rejection import RejectionConfig, rejection_sample

    _set_threads(args.threads)
    config = RejectionConfig(checkpoint=args.checkpoint, prompts=args.prompts, k=args.k, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device)
    c = rejection_sample(config, args.out)
    print(f"kept {c['kept']} of {c['samples']} completions ({c['questions_solved']} of {c['questions']} questions "
          f"have one); rejected: {c['truncated']} truncated, {c['format']} ill-formed, {c['language']} "
          f"mixed-language, {c['incorrect']} incorrect, {c['duplicate']} duplicates; wrote {args.out}")


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
                   help="train-split questions the teacher answers (default: 1024)")
    p.add_argument("--temperature", type=float, default=None, help="the teacher's sampling temperature (default: 0.6)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest teacher completion (default: 192)")
    p.add_argument("--logit-kd", action="store_true",
                   help="also match the teacher's token distribution: (1-α) SFT + α T² KL(teacher || student)")
    p.add_argument("--kd-temperature", type=float, default=None, help="T of --logit-kd (default: 2.0)")
    p.add_argument("--kd-alpha", type=float, default=None, help="α of --logit-kd, in [0, 1] (default: 0.5)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: 400)")
    p.add_argument("--batch-size", type=int, default=None, help="conversations per optimizer step (default: 16)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-3)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the student's weights, the questions and the sampling (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def distill_run(args: argparse.Namespace) -> None:
    import dataclasses

    _passive_threads()
    from nanoseek.errors import ConfigError
    from nanoseek.train.distill import DEFAULT_TRAIN, DistillConfig, distill

    _set_threads(args.threads)
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
                                                        "(default: about 45)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # a few steps per stage, for CI
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def run_run(args: argparse.Namespace) -> None:
    _passive_threads()
    from nanoseek.pipeline import run

    _set_threads(args.threads)
    records = run(args.out, "smoke" if args.smoke else "quick" if args.quick else "default")
    width = max(len(r["name"]) for r in records)
    for r in records:
        print(f"{r['name']:<{width}}  accuracy {r['accuracy']:6.1%}  format {r['format_rate']:6.1%}  "
              f"length {r['mean_length']:5.0f}  {r['seconds'] / 60:5.1f} min")
    print(f"report: {args.out}/report.md")


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    """Flags of SamplingParams and of the engine, shared by `generate` and `chat`."""
    p.add_argument("checkpoint", help="a checkpoint directory with its tokenizer.json (e.g. runs/sft)")
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"new tokens at most (default: {max_tokens})")
    p.add_argument("--temperature", type=float, default=0.6, help="0 is greedy (default: 0.6, as DeepSeek advises for R1)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling, in (0, 1] (default: 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 keeps all (default: 0)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability (default: 0)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's, in [-2, 2] (default: 0)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's, in [-2, 2] (default: 0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL's; 1 is off (default: 1)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at TEXT (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="same seed, same output (default: random)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")
    p.add_argument("--speculative", action="store_true",
                   help="MTP self-speculative decoding (V3 §2.2), for checkpoints with an MTP module")
    p.add_argument("--cache-mb", type=float, default=256.0, help="latent cache budget in MiB (default: 256)")
    p.add_argument("--prefix-cache-dir", metavar="DIR", default=None,
                   help="keep cached prefixes on disk too, across runs (default: memory only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def _engine_and_params(args: argparse.Namespace):
    _passive_threads()
    from nanoseek.checkpoint import load_checkpoint
    from nanoseek.infer import Engine, EngineConfig, SamplingParams
    from nanoseek.tokenizer import Tokenizer

    _set_threads(args.threads)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, min_p=args.min_p, presence_penalty=args.presence_penalty,
                            frequency_penalty=args.frequency_penalty, repetition_penalty=args.repetition_penalty,
                            stop=tuple(args.stop), seed=args.seed, ignore_eos=args.ignore_eos)
    tokenizer = Tokenizer.from_dir(args.checkpoint)
    config = EngineConfig(cache_mb=args.cache_mb, prefix_cache_dir=args.prefix_cache_dir, speculative=args.speculative)
    return Engine(load_checkpoint(args.checkpoint), config, tokenizer), tokenizer, params


def generate_args(p: argparse.ArgumentParser) -> None:
    _sampling_args(p, max_tokens=256)
    p.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")


def generate_run(args: argparse.Namespace) -> None:
    engine, tokenizer, params = _engine_and_params(args)
    from nanoseek.infer.terminal import generate

    generate(engine, tokenizer, args.prompt, params, chat=args.chat)


def chat_args(p: argparse.ArgumentParser) -> None:
    _sampling_args(p, max_tokens=2048)
    p.add_argument("--system", default=None, help="a system message before the conversation")


def chat_run(args: argparse.Namespace) -> None:
    engine, tokenizer, params = _engine_and_params(args)
    from nanoseek.infer.terminal import chat

    chat(engine, tokenizer, params, system=args.system)


COMMANDS = {
    "info": ("parameters, active fraction, KV cache bytes and FLOPs of a preset or checkpoint", info_args, info_run),
    "tokenizer": ("byte-level BPE with DeepSeek's special tokens and chat template", tokenizer_args, tokenizer_run),
    "cost": ("training FLOPs, device-hours and dollars; serving price per million tokens", cost_args, cost_run),
    "data": ("write verifiable reasoning problems with worked traces to a JSONL file", data_args, data_run),
    "pretrain": ("pretrain a model with MTP and aux-loss-free balancing on text + worked problems", pretrain_args,
                 pretrain_run),
    "sft": ("fine-tune on chat-template conversations, loss on assistant tokens only", sft_args, sft_run),
    "eval": ("accuracy, format rate, pass@k / maj@k on verifiable problems; MTP accuracy", eval_args, eval_run),
    "plot": ("PNG plots of a training run: loss, learning rate, expert load, throughput", plot_args, plot_run),
    "quantize": ("write a checkpoint as bf16, int8, int4 or FP8 (DeepSeek's block layout)", quantize_args,
                 quantize_run),
    "generate": ("continue a prompt with a checkpoint, streaming to the terminal", generate_args, generate_run),
    "chat": ("talk to a checkpoint: chat template, reasoning shown dimmed, /reset, /exit", chat_args, chat_run),
    "serve": ("an OpenAI/DeepSeek-compatible API and chat page over the engine, with cache-aware prices", serve_args,
              serve_run),
    "grpo": ("reinforcement learning by GRPO with rule-based rewards, rollouts sampled by the engine", grpo_args,
             grpo_run),
    "rejection-sample": ("sample k completions per question, keep the verified, well-formed ones as SFT data",
                         rejection_sample_args, rejection_sample_run),
    "distill": ("train a small dense student on a teacher's verified completions (R1 §2.4), optionally its logits",
                distill_args, distill_run),
    "run": ("the R1 recipe end to end: pretrain, R1-Zero, cold-start SFT, GRPO, rejection sampling, final GRPO",
            run_args, run_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek", description="DeepSeek-V3 / R1 in miniature.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except NanoseekError as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("nanoseek: interrupted", file=sys.stderr)
        sys.exit(130)
