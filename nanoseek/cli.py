"""The `nanoseek` command. Each subcommand maps its flags onto the library's dataclasses and calls it;
library code never reads sys.argv. Errors from `nanoseek.errors` print one line and exit non-zero.

A command is two functions, `<name>_args(parser)` adding its flags and `<name>_run(args)` doing the work
(imports inside, so `nanoseek --help` stays fast), listed once in COMMANDS at the bottom. The training commands
live in nanoseek/train/commands.py."""
from __future__ import annotations

import argparse
import sys

from nanoseek.errors import NanoseekError
from nanoseek.threads import set_threads, spin_briefly
from nanoseek.train.commands import (distill_args, distill_run, eval_args, eval_run, grpo_args, grpo_run, plot_args,
                                     plot_run, pretrain_args, pretrain_run, rejection_sample_args,
                                     rejection_sample_run, run_args, run_run, sft_args, sft_run)


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

    check_format(args.format, args.group_size)
    if args.calibrate < 0:
        raise ConfigError(f"--calibrate must be >= 0 (0: round to nearest), got {args.calibrate}")
    calibrate = args.calibrate if args.format in ("int8", "int4") else 0
    src = Path(args.src)
    model = load_checkpoint(src)
    if calibrate and not (src / "tokenizer.json").is_file():
        raise ConfigError(f"--calibrate {calibrate} runs worked problems through the model and needs its "
                          f"tokenizer, but {src} has no tokenizer.json; pass --calibrate 0 to round to nearest")
    extras = tuple(sorted(p for p in src.iterdir()
                          if p.is_file() and (p.name.startswith("tokenizer") or p.name == "special_tokens_map.json")))
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
    from nanoseek.errors import ConfigError
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.dist_checkpoint import consolidate, run_tokenizer

    if args.action == "export" and args.format == "gguf":
        from nanoseek.gguf_export import export_gguf
        path, types = export_gguf(args.src, args.out, args.type)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, llama.cpp's deepseek2, MTP modules left out): "
              + ", ".join(f"{n} {t}" for t, n in types.items()) + " tensors")
        return
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} is not empty; choose another --out")
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

    spin_briefly()
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
    spin_briefly()
    from nanoseek.checkpoint import load_checkpoint
    from nanoseek.infer import Engine, EngineConfig, SamplingParams
    from nanoseek.tokenizer import Tokenizer

    set_threads(args.threads)
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
    "plot": ("PNG plots of a training run: loss, learning rate, expert load, throughput; RL: reward, length, held-out "
             "accuracy, self-checks and corrections, curriculum levels", plot_args, plot_run),
    "quantize": ("write a checkpoint as bf16, int8, int4 or FP8 (DeepSeek's block layout)", quantize_args,
                 quantize_run),
    "checkpoint": ("consolidate a distributed (torchrun) checkpoint into one; export to Hugging Face's layout",
                   checkpoint_args, checkpoint_run),
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
    "run": ("the R1 recipe end to end: pretrain, R1-Zero, cold-start SFT, GRPO, rejection sampling, final GRPO, "
            "a dense student pretrained then distilled, int8/int4 quantization; a report with every stage evaluated",
            run_args, run_run),
}


# The commands that train or decode, whose blocks and decode steps are compiled unless --no-compile.
COMPILING = ("pretrain", "sft", "eval", "generate", "chat", "serve", "grpo", "rejection-sample", "distill", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek", description="DeepSeek-V3 / R1 in miniature.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        if name in COMPILING:
            p.add_argument("--no-compile", action="store_true",
                           help="run eagerly: no torch.compile of the training blocks and the engine's decode step "
                                "(compiling takes seconds to a minute the first time; inductor caches it on disk)")
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc, which starts torchrun with them
    if getattr(args, "no_compile", False):
        from nanoseek.compiling import set_compile

        set_compile(False)
    try:
        args.run(args)
    except NanoseekError as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("nanoseek: interrupted", file=sys.stderr)
        sys.exit(130)
