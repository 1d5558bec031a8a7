"""The engine against its naive counterpart, same model, same run: continuous batching (32 requests of mixed prompt
and output lengths submitted together, against the same requests one at a time) and the prefix cache (a request
sharing a 1,024-token prefix with an earlier one, against the first request's cold prefill). Targets of the engine
issue: 4x and 5x. Greedy outputs are checked equal. Each timing is the best of --repeats.

Usage: python benchmarks/batching_and_prefix_cache.py [--preset tiny] [--threads 2] [--repeats 3]
(random weights of the preset, its context widened to hold the 1,024-token prefix)
"""
from __future__ import annotations

import argparse
import time

from nanoseek.threads import spin_briefly  # noqa: E402  (no torch import)

spin_briefly()  # as the nanoseek command does, before torch loads

import torch  # noqa: E402

from nanoseek.config import ModelConfig  # noqa: E402
from nanoseek.infer import Engine, EngineConfig, SamplingParams  # noqa: E402
from nanoseek.model import Transformer  # noqa: E402


def best(fn, repeats: int):
    """The shortest of `repeats` runs of fn, and its last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def batching(model: Transformer, repeats: int) -> tuple[float, float, bool]:
    g = torch.Generator().manual_seed(12)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in torch.randint(4, 120, (32,), generator=g)]
    params = [SamplingParams(temperature=0, max_tokens=int(n), ignore_eos=True)
              for n in torch.randint(8, 64, (32,), generator=g)]
    engine = Engine(model, EngineConfig(cache_mb=16, prefix_cache=False))
    engine.generate(prompts[:4], params[0])  # warm-up

    def together():
        ids = [engine.add_request(p, s) for p, s in zip(prompts, params)]
        done = {u.request_id: u.sequence.output_ids for u in engine.stream(ids) if u.finish_reason}
        return [done[i] for i in ids]

    t_together, a = best(together, repeats)
    t_apart, b = best(lambda: [engine.generate([p], s)[0] for p, s in zip(prompts, params)], repeats)
    return t_together, t_apart, a == b


def prefix_cache(model: Transformer, repeats: int) -> tuple[float, float, int]:
    g = torch.Generator().manual_seed(7)
    vocab = model.config.vocab_size
    prefix = torch.randint(0, vocab, (1024,), generator=g).tolist()
    params = SamplingParams(temperature=0, max_tokens=1)
    cold, warm = [], []
    for _ in range(repeats):  # a fresh cache each time, so the first request is cold
        engine = Engine(model, EngineConfig(cache_mb=64))
        engine.generate([torch.randint(0, vocab, (1030,), generator=g).tolist()], params)  # warm-up
        first, second = (prefix + torch.randint(0, vocab, (8,), generator=g).tolist() for _ in range(2))
        for prompt, times in ((first, cold), (second, warm)):
            start = time.perf_counter()
            engine.generate([prompt], params)
            times.append(time.perf_counter() - start)
    # only the second request shares a prefix with an earlier one: the engine's cached tokens are all its own
    return min(cold), min(warm), engine.stats.cached_tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset)
    model = Transformer(config.replace(max_position_embeddings=max(config.max_position_embeddings, 2048))).eval()
    print(f"preset {args.preset} (random weights), float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; best of {args.repeats}")
    print(f"{'':<44}{'engine (s)':>12}{'naive (s)':>11}{'ratio':>8}{'target':>8}")
    t_together, t_apart, same = batching(model, args.repeats)
    print(f"{'32 mixed requests: together / one at a time':<44}{t_together:>12.2f}{t_apart:>11.2f}"
          f"{t_apart / t_together:>7.1f}x{'4x':>8}   outputs equal: {'yes' if same else 'NO'}")
    t_cold, t_warm, cached = prefix_cache(model, args.repeats)
    print(f"{'1,024-token shared prefix: cached / cold':<44}{t_warm:>12.3f}{t_cold:>11.3f}"
          f"{t_cold / t_warm:>7.1f}x{'5x':>8}   cached tokens: {cached}")


if __name__ == "__main__":
    main()
