"""MTP self-speculative decoding on a checkpoint with an MTP module (V3 report §2.2 and §5.4.3: 85-90% of second
tokens accepted, 1.8x tokens per second).

Held-out problems of the task mix (`nanoseek.data`), as plain text (the problem and a newline, as pretraining shows
them; --chat: in the chat template), --batch prompts at a time (default 1). Each batch runs without and with
speculation, alternately, after a warm-up of both (which compiles their decode steps); tokens/s counts new tokens
over the whole call. Greedy outputs must be identical; with --temperature > 0 they differ by chance but keep the
model's distribution. Reported: acceptance rate a, tokens/s of both, what a speculative step costs against a plain
one (c), measured, so that the speedup is (1 + a) / c, and the ceiling the model's shape allows: (1 + a) / c with c
from the weights a step multiplies with (a speculative step reads the main model's weights once for its two tokens,
the second token's routed experts besides, and the MTP module's block, projection and output head).

V3 runs one MTP module beside 61 layers, so its draft costs a small share of a step. `tiny` has 4 layers, where the
module is a fifth of the model; `--train tiny-deep` pretrains a model with tiny's width and 12 layers into --out
(once; later runs reuse it) and measures that.

Usage: python benchmarks/mtp_speculative.py CHECKPOINT [--prompts 8] [--batch 1] [--max-tokens 128] [--threads 2]
                                                      [--temperature 0] [--chat]
       python benchmarks/mtp_speculative.py --train tiny-deep --out runs/tiny-deep [--steps 600] [...]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from nanoseek.threads import spin_briefly  # noqa: E402  (no torch import)

spin_briefly()  # as the nanoseek command does, before torch loads

import torch  # noqa: E402

from nanoseek import load_checkpoint  # noqa: E402
from nanoseek.config import ModelConfig  # noqa: E402
from nanoseek.data.tasks import generate_mix  # noqa: E402
from nanoseek.infer import Engine, EngineConfig, SamplingParams  # noqa: E402
from nanoseek.tokenizer import Tokenizer, render_chat  # noqa: E402


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    return outs, time.perf_counter() - start


def step_weights(config: ModelConfig, speculative: bool) -> int:
    """Weights a batch-1 decode step multiplies with: the main model's for one token; with speculation, for two
    tokens (the second one's routed experts besides, at worst all different) and the MTP module's block (two tokens
    too), its projection and the output head once more."""
    from nanoseek.model import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    expert = 3 * config.hidden_size * config.moe_intermediate_size
    idle = (config.n_routed_experts - config.num_experts_per_tok) * expert  # per MoE layer, for one token
    L = config.num_hidden_layers
    main_moe, mtp_moe = sum(config.is_moe_layer(i) for i in range(L)), int(config.is_moe_layer(L))
    main = sum(p.numel() for name, p in model.named_parameters()
               if p.ndim > 1 and not name.startswith(("mtp.", "embed_tokens"))) - main_moe * idle
    if not speculative:
        return main
    mtp = sum(p.numel() for p in model.mtp[0].parameters() if p.ndim > 1) - mtp_moe * idle
    second = (main_moe + mtp_moe) * config.num_experts_per_tok * expert
    return main + mtp + second + config.vocab_size * config.hidden_size


def train(preset: str, out: Path, steps: int) -> None:
    from nanoseek.train.loop import TrainConfig
    from nanoseek.train.pretrain import DEFAULT_TRAIN, PretrainConfig, pretrain

    print(f"pretraining {preset} for {steps} steps into {out}", flush=True)
    pretrain(PretrainConfig(preset=preset), TrainConfig(**{**DEFAULT_TRAIN.__dict__, "max_steps": steps}), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--train", metavar="PRESET", help="pretrain this preset into --out first, unless it is there")
    ap.add_argument("--out", type=Path, help="where --train writes (and later runs read) the model")
    ap.add_argument("--steps", type=int, default=600, help="pretraining steps with --train (default 600)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chat", action="store_true", help="the chat template instead of the problem as plain text")
    args = ap.parse_args()
    if (args.checkpoint is None) == (args.train is None) or (args.train and args.out is None):
        ap.error("give a CHECKPOINT, or --train PRESET with --out DIR")
    torch.set_num_threads(args.threads)
    if args.train:
        if not (args.out / "model.safetensors").is_file():
            train(args.train, args.out, args.steps)
        args.checkpoint = args.out
    model = load_checkpoint(args.checkpoint)
    tokenizer = Tokenizer.from_dir(args.checkpoint)
    # every request prefills its whole prompt, with or without MTP
    plain = Engine(model, EngineConfig(prefix_cache=False), tokenizer)
    spec = Engine(model, EngineConfig(prefix_cache=False, speculative=True), tokenizer)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=0)
    problems = generate_mix(args.prompts, seed=0, split="eval")
    texts = [render_chat([{"role": "user", "content": p.prompt}], add_generation_prompt=True) if args.chat else
             p.prompt + "\n" for p in problems]
    prompts = [tokenizer.encode(t, add_bos=not args.chat) for t in texts]
    run(plain, prompts[:args.batch], params), run(spec, prompts[:args.batch], params)  # warm-up: compiles
    spec.stats.drafted = spec.stats.accepted = 0
    tokens_plain = tokens_spec = seconds_plain = seconds_spec = same = 0
    c = model.config
    print(f"{args.checkpoint}: {c.num_hidden_layers} layers and {len(model.mtp)} MTP module(s); batch {args.batch}, "
          f"{len(prompts)} prompts, max {args.max_tokens} new tokens, temperature {args.temperature}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i:i + args.batch]
        out_plain, t_plain = run(plain, chunk, params)
        out_spec, t_spec = run(spec, chunk, params)
        tokens_plain, seconds_plain = tokens_plain + sum(map(len, out_plain)), seconds_plain + t_plain
        tokens_spec, seconds_spec = tokens_spec + sum(map(len, out_spec)), seconds_spec + t_spec
        same += sum(a == b for a, b in zip(out_plain, out_spec))
    a = spec.stats.acceptance_rate
    speedup = (tokens_spec / seconds_spec) / (tokens_plain / seconds_plain)
    c_weights = step_weights(c, True) / step_weights(c, False)
    print(f"{'plain decoding':<22}{tokens_plain / seconds_plain:>10.1f} tok/s")
    print(f"{'MTP speculation':<22}{tokens_spec / seconds_spec:>10.1f} tok/s   {speedup:.2f}x")
    print(f"draft acceptance a = {spec.stats.accepted}/{spec.stats.drafted} = {a:.1%}; a speculative step costs "
          f"c = {(1 + a) / speedup:.2f} plain steps, so the speedup is (1 + a) / c")
    print(f"ceiling from the shape: a speculative step multiplies with {c_weights:.2f}x a plain step's weights "
          f"({step_weights(c, True) / 1e6:.2f}M against {step_weights(c, False) / 1e6:.2f}M), so at a = {a:.1%} "
          f"the speedup is at most {(1 + a) / c_weights:.2f}x (at a = 100%: {2 / c_weights:.2f}x)")
    if args.temperature == 0:
        print(f"greedy outputs identical with and without speculation: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
