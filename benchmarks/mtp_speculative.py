"""MTP self-speculative decoding on a checkpoint with an MTP module (V3 report §2.2 and §5.4.3: 85-90% of second
tokens accepted, 1.8x tokens per second).

Held-out problems of the task mix (`nanoseek.data`), in the chat template (or as plain text with --plain), --batch
prompts at a time (default 1). Each batch runs without and with speculation, alternately; tokens/s counts new
tokens over the whole call. Greedy outputs must be identical; with --temperature > 0 they differ by chance but
keep the model's distribution. Reported: acceptance rate a, tokens/s of both, and what a speculative step costs
against a plain one (c): each speculative step yields 1 + a tokens, so the speedup is (1 + a) / c.

Usage: python benchmarks/mtp_speculative.py CHECKPOINT [--prompts 8] [--batch 1] [--max-tokens 128]
                                                    [--threads 2] [--temperature 0] [--plain]
"""
from __future__ import annotations

import argparse
import time

from nanoseek.threads import spin_briefly  # noqa: E402  (no torch import)

spin_briefly()  # as the nanoseek command does, before torch loads

import torch  # noqa: E402

from nanoseek import load_checkpoint  # noqa: E402
from nanoseek.data.tasks import generate_mix  # noqa: E402
from nanoseek.infer import Engine, EngineConfig, SamplingParams  # noqa: E402
from nanoseek.tokenizer import Tokenizer, render_chat  # noqa: E402


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    return outs, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="problem text and a newline instead of the chat template")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.from_dir(args.checkpoint)
    config = EngineConfig(prefix_cache=False)  # every request prefills its whole prompt, with or without MTP
    plain, spec = Engine(model, config, tokenizer), Engine(model, EngineConfig(prefix_cache=False, speculative=True),
                                                           tokenizer)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=0)
    problems = generate_mix(args.prompts, seed=0, split="eval")
    texts = [p.prompt + "\n" if args.plain else
             render_chat([{"role": "user", "content": p.prompt}], add_generation_prompt=True) for p in problems]
    prompts = [tokenizer.encode(t, add_bos=args.plain) for t in texts]
    run(plain, prompts[:args.batch], params), run(spec, prompts[:args.batch], params)  # warm-up
    spec.stats.drafted = spec.stats.accepted = 0
    tokens_plain = tokens_spec = seconds_plain = seconds_spec = same = 0
    print(f"{args.checkpoint}: {len(model.mtp)} MTP module(s); batch {args.batch}, {len(prompts)} prompts, max "
          f"{args.max_tokens} new tokens, temperature {args.temperature}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i:i + args.batch]
        out_plain, t_plain = run(plain, chunk, params)
        out_spec, t_spec = run(spec, chunk, params)
        tokens_plain, seconds_plain = tokens_plain + sum(map(len, out_plain)), seconds_plain + t_plain
        tokens_spec, seconds_spec = tokens_spec + sum(map(len, out_spec)), seconds_spec + t_spec
        same += sum(a == b for a, b in zip(out_plain, out_spec))
    a = spec.stats.acceptance_rate
    speedup = (tokens_spec / seconds_spec) / (tokens_plain / seconds_plain)
    print(f"{'plain decoding':<22}{tokens_plain / seconds_plain:>10.1f} tok/s")
    print(f"{'MTP speculation':<22}{tokens_spec / seconds_spec:>10.1f} tok/s   {speedup:.2f}x")
    print(f"draft acceptance a = {spec.stats.accepted}/{spec.stats.drafted} = {a:.1%}; a speculative step costs "
          f"c = {(1 + a) / speedup:.2f} plain steps, so the speedup is (1 + a) / c")
    if args.temperature == 0:
        print(f"greedy outputs identical with and without speculation: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
