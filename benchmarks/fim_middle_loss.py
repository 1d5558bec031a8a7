"""Fill-in-Middle pretraining (V3 §4.1, data/fim.py) against none: two tiny models pretrained alike, one with a tenth
of its text documents laid out Prefix-Suffix-Middle and one without, then asked for the middle of held-out text.

The figure is the cross-entropy (nats per token) of the middle, on held-out
standard-library docstrings cut at two random points, given
  - PSM: `<｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>`, what /beta/completions with a suffix sends;
  - prefix only: the prefix as plain text, the best a model without FIM can do (it never learned the layout, so
    its PSM figure is given for completeness only).
A model that uses the suffix predicts the middle better than one that reads only the prefix.

Usage: python benchmarks/fim_middle_loss.py --out DIR [--steps 200] [--batch 8] [--seq-len 128] [--docs 200]
(pretrains into DIR/fim and DIR/plain unless they are there; --only fim or --only plain pretrains that one and
stops, so two processes can train the two side by side)
"""
from __future__ import annotations

import argparse
import random
from itertools import islice
from pathlib import Path

import torch

from nanoseek.checkpoint import load_checkpoint
from nanoseek.data.sources import split_text, text_source
from nanoseek.model import Transformer
from nanoseek.tokenizer import FIM_BEGIN, FIM_END, FIM_HOLE, Tokenizer


def train(out: Path, steps: int, batch: int, seq_len: int, fim_rate: float) -> None:
    from nanoseek.train.loop import TrainConfig
    from nanoseek.train.pretrain import DEFAULT_TRAIN, PretrainConfig, pretrain

    print(f"pretraining tiny for {steps} steps of {batch} x {seq_len} tokens, fim_rate {fim_rate}, into {out}",
          flush=True)
    pretrain(PretrainConfig(preset="tiny", fim_rate=fim_rate, seq_len=seq_len),
             TrainConfig(**{**DEFAULT_TRAIN.__dict__, "max_steps": steps, "batch_size": batch}), out)


def cases(tokenizer: Tokenizer, n: int, context: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prefix, middle, suffix) token ids of n held-out documents cut at two random points (a fixed seed)."""
    rng, out = random.Random(0), []
    for doc in split_text(text_source(())(), "eval"):
        if not 40 <= len(doc) <= 1200:
            continue
        a, b = sorted(rng.randint(0, len(doc)) for _ in range(2))
        pieces = [tokenizer.encode_text(p) for p in (doc[:a], doc[a:b], doc[b:])]
        if sum(map(len, pieces)) + 5 <= context:
            out.append(tuple(pieces))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def middle_loss(model: Transformer, tokenizer: Tokenizer, cases, psm: bool) -> float:
    """Mean cross-entropy per token of the middles."""
    begin, hole, end = (tokenizer.special_id(t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END))
    total = count = 0.0
    for prefix, middle, suffix in cases:
        context = [begin, *prefix, hole, *suffix, end] if psm else [tokenizer.eos_id, *prefix]
        target = middle
        if not target:
            continue
        ids = torch.tensor([context + target])
        logits = model(ids[:, :-1])[0, len(context) - 1:].float()
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum")
        total, count = total + loss.item(), count + len(target)
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["fim", "plain"], help="pretrain this model only, and stop")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"fim": 0.1, "plain": 0.0}
    for name, rate in runs.items():
        if args.only in (None, name) and not (args.out / name / "model.safetensors").is_file():
            train(args.out / name, args.steps, args.batch, args.seq_len, rate)
    if args.only:
        return
    tokenizer = Tokenizer.from_dir(args.out / "fim")
    models = {name: load_checkpoint(args.out / name).eval() for name in runs}
    held = cases(tokenizer, args.docs, models["fim"].config.max_position_embeddings)
    fim_psm = middle_loss(models["fim"], tokenizer, held, psm=True)
    plain_prefix = middle_loss(models["plain"], tokenizer, held, psm=False)
    fim_prefix = middle_loss(models["fim"], tokenizer, held, psm=False)
    plain_psm = middle_loss(models["plain"], tokenizer, held, psm=True)
    print(f"middle-span loss (nats/token) on {len(held)} held-out docstrings cut at two random points; tiny preset, "
          f"{args.steps} pretraining steps of {args.batch} x {args.seq_len} tokens each")
    print(f"{'model':<28} {'PSM prompt':>11} {'prefix only':>12}")
    print(f"{'pretrained with FIM (0.1)':<28} {fim_psm:>11.3f} {fim_prefix:>12.3f}")
    print(f"{'pretrained without FIM':<28} {plain_psm:>11.3f} {plain_prefix:>12.3f}")
    print(f"FIM model with the suffix against the plain model with the prefix: {fim_psm:.3f} vs {plain_prefix:.3f} "
          f"(ratio {fim_psm / plain_prefix:.2f})")


if __name__ == "__main__":
    main()
