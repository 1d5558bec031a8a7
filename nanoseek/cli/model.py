"""The commands about models and their files: info, tokenizer, data, cost, quantize, checkpoint."""
from __future__ import annotations

import argparse


def info_args(p: argparse.ArgumentParser) -> None:
    from nanoseek.config import PRESETS

    p.add_argument("model", nargs="?", default="tiny",
                   help=f"a preset ({', '.join(PRESETS)}) or a checkpoint folder (default: tiny)")


def info_run(args: argparse.Namespace) -> None:
    from nanoseek.info import describe

    print(describe(args.model))


def tokenizer_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train a byte-level BPE on UTF-8 text files",
                           description="train a byte-level BPE on UTF-8 text files")
    train.add_argument("files", nargs="+", help="UTF-8 text files, read line by line")
    train.add_argument("--vocab-size", type=int, required=True,
                       help="largest vocabulary, special tokens included (at least 272)")
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
    from nanoseek.data.sources import DIFFICULTY

    p.add_argument("--difficulty", type=int, default=DIFFICULTY,
                   help=f"level 1..5 (default: {DIFFICULTY}, the level `nanoseek run` trains and evaluates at)")
    p.add_argument("--out", required=True, help="JSONL file to write, one problem per line")


def data_run(args: argparse.Namespace) -> None:
    from itertools import islice

    from tqdm import tqdm

    from nanoseek.data.tasks import TASKS, check_count, save_jsonl, stream, stream_mix
    from nanoseek.errors import ConfigError

    if args.task not in (*TASKS, "mix"):
        raise ConfigError(f"unknown task {args.task!r}: expected one of {', '.join(TASKS)} or mix")
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


def quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a checkpoint directory, ours or Hugging Face / DeepSeek layout")
    p.add_argument("--to", required=True, metavar="FORMAT", dest="format",
                   help="bf16, int8 (per-row scales), int4 (group-wise scales) or fp8 (DeepSeek's 128x128 blocks)")
    p.add_argument("--group-size", type=int, default=64,
                   help="int4: input columns per scale, 32, 64, 128 or 256 (default: 64)")
    p.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    p.add_argument("--calibrate", type=int, default=128, metavar="N",
                   help="int8/int4: round with GPTQ, fitted to N worked training problems run through the model "
                        "(needs the checkpoint's tokenizer.json); 0 rounds each weight to nearest (default: 128)")


def quantize_run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from nanoseek.checkpoint import load_checkpoint, save_quantized
    from nanoseek.errors import ConfigError
    from nanoseek.gptq import calibration_sequences, hessians
    from nanoseek.quant import check_format
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.data.prompts import PROMPT_FORMAT

    check_format(args.format, args.group_size)
    if args.calibrate < 0:
        raise ConfigError(f"--calibrate must be >= 0 (0: round to nearest), got {args.calibrate}")
    calibrate = args.calibrate if args.format in ("int8", "int4") else 0
    src = Path(args.src)
    model = load_checkpoint(src)
    if calibrate and not (src / "tokenizer.json").is_file():
        raise ConfigError(f"--calibrate {calibrate} runs worked problems through the model and needs its "
                          f"tokenizer, but {src} has no tokenizer.json; pass --calibrate 0 to round to nearest")
    extras = tuple(sorted(p for p in src.iterdir() if p.is_file() and (
        p.name.startswith("tokenizer") or p.name in ("special_tokens_map.json", PROMPT_FORMAT))))
    fitted = None
    if calibrate:
        fitted = hessians(model, calibration_sequences(Tokenizer.from_dir(src), calibrate), progress=True)
    out = save_quantized(model, args.out, args.format, args.group_size, extra_files=extras, progress=True,
                         hessians=fitted)
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    rounding = f", GPTQ on {calibrate} problems" if calibrate else ""
    print(f"wrote {args.format} checkpoint to {out}: {size / 2**20:.1f} MiB of weights{rounding}"
          + (f", with {', '.join(p.name for p in extras)}" if extras else ""))


def checkpoint_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    help = "turn a distributed (torchrun) training checkpoint into one safetensors checkpoint"
    c = sub.add_parser("consolidate", help=help, description=help)
    c.add_argument("src", help="RUN/checkpoints/step-N written under torchrun, or RUN itself (its newest checkpoint)")
    help = ("write any checkpoint (ours or Hugging Face layout) in Hugging Face's layout, for vLLM, SGLang, "
            "transformers, or as one GGUF file for llama.cpp and Ollama (docs/llama-cpp.md)")
    e = sub.add_parser("export", help=help, description=help)
    e.add_argument("src", help="a checkpoint directory")
    for a in (c, e):
        a.add_argument("--out", required=True,
                       help="new or empty directory for the weights, config.json and the tokenizer (with --format "
                            "gguf: the .gguf file)")
    e.add_argument("--format", default="hf", choices=("hf", "gguf"), help="Hugging Face's layout or GGUF (default: hf)")
    e.add_argument("--type", default="f32", help="GGUF weights: f32, f16, bf16, q8_0 or q4_0 (default: f32)")
    c.add_argument("--format", default="nanoseek", choices=("nanoseek", "hf"),
                   help="our layout or Hugging Face's (default: nanoseek)")


def checkpoint_run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from nanoseek.checkpoint import load_checkpoint, save_checkpoint
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.dist_checkpoint import consolidate
    from nanoseek.train.run_folder import check_new_folder
    from nanoseek.train.stage import run_tokenizer

    if args.action == "export" and args.format == "gguf":
        from nanoseek.checkpoint.gguf import export_gguf

        path, types = export_gguf(args.src, args.out, args.type)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, llama.cpp's deepseek2, MTP modules left out): "
              + ", ".join(f"{n} {t}" for t, n in types.items()) + " tensors")
        return
    out = check_new_folder(args.out, "choose another --out")
    if args.action == "consolidate":
        model = consolidate(args.src)
        tokenizer, fmt = run_tokenizer(args.src, model.config), args.format
    else:
        model, fmt = load_checkpoint(args.src), "hf"
        tokenizer = Tokenizer.from_dir(args.src) if (Path(args.src) / "tokenizer.json").is_file() else None
    save_checkpoint(model, out, format=fmt)
    if tokenizer is not None:
        tokenizer.save(out)
    print(f"wrote {out} ({'Hugging Face' if fmt == 'hf' else 'nanoseek'} layout): "
          f"{sum(p.numel() for p in model.parameters()):,} parameters" + (" and the tokenizer" if tokenizer else ""))
