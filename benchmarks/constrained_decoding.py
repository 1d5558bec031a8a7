"""Constrained decoding's cost to a batch (infer/grammar.py): decode tokens per second at batch 8 with half the
requests constrained to a JSON schema, against the same 8 requests all unconstrained. Target of the issue: at most
10% slower. The masks are computed on llguidance's threads while the decode forward runs; what remains on the step's
path is applying them to the constrained rows and sampling those rows from the masked logits.

The schema's one string has no length limit, so the random model's replies never close it and every request decodes
to max_tokens: both runs decode the same number of tokens. Only decode steps are timed (the prompts are prefilled
first); each figure is the best of --repeats runs, and the runs alternate so a busy machine slows both alike.

Usage: python benchmarks/constrained_decoding.py [--preset tiny] [--tokens 128] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

from nanoseek.threads import spin_briefly  # noqa: E402  (no torch import)

spin_briefly()  # as the nanoseek command does, before torch loads

import torch  # noqa: E402

from nanoseek.config import ModelConfig  # noqa: E402
from nanoseek.infer import Engine, EngineConfig, SamplingParams  # noqa: E402
from nanoseek.infer.grammar import json_schema_grammar  # noqa: E402
from nanoseek.model import Transformer  # noqa: E402
from nanoseek.train.default_tokenizer import default_tokenizer  # noqa: E402

BATCH = 8
SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
          "required": ["title", "year"], "additionalProperties": False}


def decode_rate(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> float:
    """Tokens per second of the decode steps that run all 8 requests."""
    ids = [engine.add_request(p, s) for p, s in zip(prompts, params)]
    while engine.waiting or engine.prefilling:   # prefill, untimed
        engine.step()
    tokens, start = 0, time.perf_counter()
    while all(i in engine.requests for i in ids):
        tokens += sum(len(u.token_ids) for u in engine.step())
    seconds = time.perf_counter() - start
    for i in ids:
        if i in engine.requests:
            engine.cancel(i)
    return tokens / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = default_tokenizer()
    model = Transformer(ModelConfig.from_preset(args.preset)).eval()
    engine = Engine(model, EngineConfig(cache_mb=64, max_seqs=BATCH, prefix_cache=False), tokenizer)
    prompts = [tokenizer.encode(f"Describe film number {i} as JSON.") for i in range(BATCH)]
    free = [SamplingParams(temperature=1.0, max_tokens=args.tokens, ignore_eos=True, seed=i) for i in range(BATCH)]
    grammar = json_schema_grammar(SCHEMA)
    half = [SamplingParams(temperature=1.0, max_tokens=args.tokens, ignore_eos=True, seed=i,
                           grammar=grammar if i % 2 else None) for i in range(BATCH)]
    decode_rate(engine, prompts, free)   # warm-up: compiles the decode step, builds the grammar's tokenizer
    decode_rate(engine, prompts, half)
    rates = {"free": [], "half": []}
    for _ in range(args.repeats):
        rates["free"].append(decode_rate(engine, prompts, free))
        rates["half"].append(decode_rate(engine, prompts, half))
    base, constrained = max(rates["free"]), max(rates["half"])
    print(f"decode tokens/s, batch {BATCH}, preset {args.preset}, {args.tokens} new tokens per request, "
          f"{args.threads} thread(s), {'compiled' if engine.forward.compile else 'eager'}, best of {args.repeats}")
    print(f"{'requests':<40} {'tokens/s':>10} {'ratio':>7}")
    print(f"{'8 unconstrained':<40} {base:>10.1f} {1:>7.2f}")
    print(f"{'4 unconstrained + 4 JSON schema':<40} {constrained:>10.1f} {constrained / base:>7.2f}")
    print(f"slowdown {1 - constrained / base:+.1%} (target: at most 10%)")


if __name__ == "__main__":
    main()
