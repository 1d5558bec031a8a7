"""The commands that run a model: serve (the API), generate and chat (the terminal)."""
from __future__ import annotations

import argparse
import sys

from nanoseek.threads import set_threads, spin_briefly


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
