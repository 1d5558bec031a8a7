"""The two ways `Experts` runs the routed experts (model/moe.py) side by side: gathering each (token, expert) pair's
matrices by index, and sorting the pairs by expert to run each expert once. Sets GATHER_MAX, the number of pairs up
to which a forward gathers (docs/moe.md).

Two measurements, each the best of --repeats runs, on --threads CPU threads (or the GPU with --device cuda):
- one forward of a preset's routed experts on random tokens and routing, each way, the tokens doubling from 1;
- greedy decoding through the engine of --batch sequences with a randomly initialised model of the preset, with
  GATHER_MAX set to each of --gather-max in turn (interleaved, so that a load on a shared machine hits all alike).

Usage: python benchmarks/expert_dispatch.py [--preset tiny] [--max-pairs 128] [--repeats 50] [--threads 1]
                                            [--device cpu] [--batch 4] [--gather-max 4 8]
"""
from __future__ import annotations

import argparse
import time

import torch

from nanoseek.config import ModelConfig
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.model import Transformer, moe


def seconds(run, gather_max: int, device: str) -> float:
    """Wall-clock seconds of `run()` with GATHER_MAX set to gather_max."""
    moe.GATHER_MAX = gather_max
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def forwards(config: ModelConfig, args) -> None:
    g = torch.Generator().manual_seed(0)
    experts = moe.Experts(config.n_routed_experts, config.hidden_size, config.moe_intermediate_size)
    for p in experts.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * config.initializer_range)
    experts.to(args.device)
    k = config.num_experts_per_tok
    print("| pairs | tokens | gather (ms) | sort (ms) | gather / sort |\n| --- | --- | --- | --- | --- |")
    tokens = 1
    while tokens * k <= args.max_pairs:
        x = torch.randn(tokens, config.hidden_size, generator=g).to(args.device)
        indices = torch.rand(tokens, config.n_routed_experts, generator=g).topk(k, dim=-1).indices.to(args.device)
        weights = torch.rand(tokens, k, generator=g).to(args.device)
        gather, sort = (min(seconds(lambda: experts(x, weights, indices), gather_max, args.device)
                            for _ in range(args.repeats)) for gather_max in (10**9, 0))
        print(f"| {tokens * k} | {tokens} | {gather * 1e3:.3f} | {sort * 1e3:.3f} | {gather / sort:.2f} |")
        tokens *= 2


def decoding(config: ModelConfig, args) -> None:
    torch.manual_seed(0)
    model = Transformer(config).to(args.device).eval()
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    prompts = [list(range(1, 9))] * args.batch

    def run():
        Engine(model, EngineConfig(prefix_cache=False)).generate(prompts, params)

    best = dict.fromkeys(args.gather_max, float("inf"))
    for _ in range(args.repeats):
        for gather_max in args.gather_max:
            best[gather_max] = min(best[gather_max], seconds(run, gather_max, args.device))
    print(f"engine, {args.batch} sequences x 48 greedy tokens: " + ", ".join(
        f"GATHER_MAX {m}: {args.batch * 48 / s:.0f} tokens/s" for m, s in best.items()))


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--max-pairs", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gather-max", type=int, nargs="+", default=[4, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig.from_preset(args.preset)
    print(f"{args.preset}: {config.n_routed_experts} experts of {config.hidden_size} x "
          f"{config.moe_intermediate_size}, top-{config.num_experts_per_tok}, {args.device}, {args.threads} thread(s)")
    forwards(config, args)
    decoding(config, args)


if __name__ == "__main__":
    main()
