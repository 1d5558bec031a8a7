"""The `nanoseek` command. Each subcommand maps its flags onto the library's dataclasses and calls it;
library code never reads sys.argv. Errors from `nanoseek.errors` print one line and exit non-zero.

A command is two functions, `<name>_args(parser)` adding its flags and `<name>_run(args)` doing the work
(imports inside, so `nanoseek --help` stays fast), listed once in COMMANDS below, by area: models and their files
(model.py), running a model (serve.py), training (train.py). The flags of a config dataclass are generated from
it (flags.py)."""
from __future__ import annotations

import argparse
import sys

from nanoseek.cli.model import (checkpoint_args, checkpoint_run, cost_args, cost_run, data_args, data_run, info_args,
                                info_run, quantize_args, quantize_run, tokenizer_args, tokenizer_run)
from nanoseek.cli.serve import chat_args, chat_run, generate_args, generate_run, serve_args, serve_run
from nanoseek.cli.train import (distill_args, distill_run, eval_args, eval_run, grpo_args, grpo_run, plot_args,
                                plot_run, pretrain_args, pretrain_run, rejection_sample_args, rejection_sample_run,
                                run_args, run_run, sft_args, sft_run)
from nanoseek.errors import NanoseekError

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the flags of every command, or of `command` only: generating a command's flags imports its
    config dataclasses (and torch), which `nanoseek --help` and the other commands need not wait for."""
    parser = argparse.ArgumentParser(prog="nanoseek", description="DeepSeek-V3 / R1 in miniature.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        if command in (None, name):
            add_args(p)
        if name in COMPILING:
            p.add_argument("--no-compile", action="store_true",
                           help="run eagerly: no torch.compile of the training blocks and the engine's decode step "
                                "(compiling takes seconds to a minute the first time; inductor caches it on disk)")
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "")
    try:
        args = parser.parse_args(argv)  # a generated flag's parser raises ConfigError on a bad value
        args.argv = argv  # for --nproc, which starts torchrun with them
        if getattr(args, "no_compile", False):
            from nanoseek.compiling import set_compile

            set_compile(False)
        args.run(args)
    except NanoseekError as e:
        print(f"nanoseek: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("nanoseek: interrupted", file=sys.stderr)
        sys.exit(130)
