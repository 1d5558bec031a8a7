"""The commands that run a model: serve (the API), generate and chat (the terminal)."""
from __future__ import annotations

import argparse
import sys

from nanoseek.cli.flags import add_flags, from_flags
from nanoseek.threads import set_threads, spin_briefly


# ServeConfig fields with flags of another form: the model's name is its folder's, keys and prices come from files,
# allowed hosts as one comma-separated list
SERVE_SKIP = ("model_name", "api_keys", "prices", "allowed_hosts")


def serve_args(p: argparse.ArgumentParser) -> None:
    from nanoseek.infer import EngineConfig
    from nanoseek.serve import ServeConfig

    p.add_argument("checkpoint", help="a checkpoint directory with its tokenizer.json (e.g. runs/sft)")
    add_flags(p, ServeConfig(), skip=SERVE_SKIP)
    p.add_argument("--allowed-hosts", metavar="NAMES", default="",
                   help="comma-separated Host header names accepted besides loopback's and --host, e.g. the machine's "
                        "name when --host 0.0.0.0 ('*': any; other names are refused, against DNS rebinding)")
    p.add_argument("--api-key-file", metavar="FILE", default=None,
                   help="require one of the keys in FILE (one per line) as 'Authorization: Bearer KEY'")
    p.add_argument("--prices", metavar="FILE", default=None,
                   help="JSON prices in USD per million tokens, any of input_cache_hit, input_cache_miss, output, "
                        "their off_peak_ rates and the off-peak hours off_peak_start, off_peak_end (UTC HH:MM) "
                        "(default: DeepSeek V3's 0.07, 0.27, 1.10, half that from 16:30 to 00:30 UTC)")
    add_flags(p, EngineConfig(), skip=("compile",))


def serve_run(args: argparse.Namespace) -> None:
    import dataclasses
    import ipaddress
    import logging
    from pathlib import Path

    spin_briefly()
    from nanoseek.infer import Engine, EngineConfig
    from nanoseek.serve import Prices, ServeConfig, load_prices, serve
    from nanoseek.serve.auth import load_api_keys

    config = from_flags(args, dataclasses.replace(
        ServeConfig(), model_name=Path(args.checkpoint).resolve().name,
        api_keys=load_api_keys(args.api_key_file) if args.api_key_file else (),
        prices=load_prices(args.prices) if args.prices else Prices(),
        allowed_hosts=tuple(filter(None, args.allowed_hosts.split(",")))), skip=SERVE_SKIP)
    try:
        local = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        local = config.host == "localhost"
    if not local and not config.api_keys:
        print(f"nanoseek: warning: listening on {config.host} without --api-key-file: anyone who can reach it may "
              "use it", file=sys.stderr)
    if not local and not config.tls_cert:
        print(f"nanoseek: warning: listening on {config.host} without TLS: prompts and replies cross the network "
              "unencrypted", file=sys.stderr)
    engine = Engine(args.checkpoint, from_flags(args, EngineConfig(), skip=("compile",)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    serve(engine, config, lambda url: print(f"serving {config.model_name} at {url} (chat page at /, API at /v1)",
                                            flush=True))


# DeepSeek's advice for R1 (temperature 0.6, top-p 0.95) over SamplingParams' OpenAI defaults
SAMPLING = dict(temperature=0.6, top_p=0.95)
SAMPLING_SKIP = ("stop_token_ids", "n", "logprobs", "grammar")


def _sampling_args(max_tokens: int):
    """Flags of SamplingParams and of the engine, shared by `generate` and `chat`."""
    def add(p: argparse.ArgumentParser) -> None:
        from nanoseek.infer import EngineConfig, SamplingParams

        p.add_argument("checkpoint", help="a checkpoint directory with its tokenizer.json (e.g. runs/sft)")
        add_flags(p, SamplingParams(max_tokens=max_tokens, **SAMPLING), skip=SAMPLING_SKIP)
        add_flags(p, EngineConfig(), skip=("compile",))
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    return add


def _engine_and_params(args: argparse.Namespace, max_tokens: int):
    spin_briefly()
    from nanoseek.checkpoint import load_checkpoint
    from nanoseek.infer import Engine, EngineConfig, SamplingParams
    from nanoseek.tokenizer import Tokenizer

    set_threads(args.threads)
    params = from_flags(args, SamplingParams(max_tokens=max_tokens, **SAMPLING), skip=SAMPLING_SKIP)
    model = load_checkpoint(args.checkpoint)  # a path that is no checkpoint says so before the tokenizer is looked for
    tokenizer = Tokenizer.from_dir(args.checkpoint)
    engine = Engine(model, from_flags(args, EngineConfig(), skip=("compile",)), tokenizer)
    return engine, tokenizer, params


def generate_args(p: argparse.ArgumentParser) -> None:
    _sampling_args(max_tokens=256)(p)
    p.add_argument("prompt", help="a question, or with --prompt-format text the text to continue")
    p.add_argument("--prompt-format", default=None, metavar="FORMAT",
                   help="chat (the chat template, a user turn), r1-zero (R1's plain-text template), K-shot (K worked "
                        "problems before the question, a base model's prompt) or text (continued as it is) "
                        "(default: the one the checkpoint was trained for, its prompt.json; text without one)")


def generate_run(args: argparse.Namespace) -> None:
    engine, tokenizer, params = _engine_and_params(args, max_tokens=256)
    from nanoseek.data.prompts import load_prompt_format, text_prompt_ids
    from nanoseek.infer.terminal import generate

    prompt = args.prompt_format or load_prompt_format(args.checkpoint) or "text"
    print(f"prompt: {prompt}", file=sys.stderr, flush=True)
    generate(engine, tokenizer, text_prompt_ids(tokenizer, args.prompt, prompt), params)


def chat_args(p: argparse.ArgumentParser) -> None:
    _sampling_args(max_tokens=2048)(p)
    p.add_argument("--system", default=None, help="a system message before the conversation")
    p.add_argument("--tools", metavar="FILE", default=None,
                   help="JSON list of tools the model may call (OpenAI's function definitions); you type the results")


def chat_run(args: argparse.Namespace) -> None:
    engine, tokenizer, params = _engine_and_params(args, max_tokens=2048)
    from nanoseek.infer.terminal import chat

    chat(engine, tokenizer, params, system=args.system, tools=_tools(args.tools, tokenizer) if args.tools else [])


def _tools(path: str, tokenizer) -> list[dict]:
    """The tools of `nanoseek chat --tools FILE`, checked as the server checks them."""
    import json

    from nanoseek.errors import ConfigError, ServeError
    from nanoseek.serve.tools import parse_tools

    try:
        tools = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--tools {path}: not a readable JSON list of tools: {e}") from None
    try:
        return parse_tools({"tools": tools}, tokenizer).definitions
    except ServeError as e:
        raise ConfigError(f"--tools {path}: {e}") from None
