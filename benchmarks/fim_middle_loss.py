"""Fill-in-Middle pretraining (V3 §4.1, data/fim.py) against none: two tiny models pretrained alike, one with a tenth
of its text documents laid out Prefix-Suffix-Middle and one without, then asked for the middle of held-out text.

The figure is the cross-entropy (nats per token) of the middle, on held-out
standard-library docstrings cut at two random points, given
  - PSM: `<｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>`, what /beta/completions with a suffix sends;
  - prefix only: the prefix as plain text, the best a model without FIM can do (it never learned the layout, so
    its PSM figure is given for completeness only).
A model that uses the suffix predicts the middle better than one that reads only the prefix; the suffix tells most
about the middle's last tokens, the ones that join it, so the loss of the last TAIL tokens is given apart too.

Usage: python benchmarks/fim_middle_loss.py --out DIR [--steps 200] [--batch 8] [--seq-len 128] [--docs 200]
(pretrains into DIR/fim and DIR/plain unless they are there; --only fim or --only plain pretrains that one and
stops, so two processes can train the two side by side)
"""
from __future__ import annotations

import argparse
import random
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


TAIL = 8


@torch.no_grad()
def middle_loss(model: Transformer, tokenizer: Tokenizer, cases, psm: bool) -> tuple[float, float]:
    """Mean cross-entropy per token of the middles, and of their last TAIL tokens."""
    begin, hole, end = (tokenizer.special_id(t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END))
    losses, tails = [], []
    for prefix, middle, suffix in cases:
        context = [begin, *prefix, hole, *suffix, end] if psm else [tokenizer.eos_id, *prefix]
        if not middle:
            continue
        ids = torch.tensor([context + middle])
        logits = model(ids[:, :-1])[0, len(context) - 1:].float()
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(middle), reduction="none")
        losses.append(loss)
        tails.append(loss[-TAIL:])
    return torch.cat(losses).mean().item(), torch.cat(tails).mean().item()


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
    print(f"{'model':<28} {'PSM prompt':>11} {'prefix only':>12} {f'PSM, last {TAIL}':>12} "
          f"{f'prefix, last {TAIL}':>15}")
    for name, psm, prefix in (("pretrained with FIM (0.1)", fim_psm, fim_prefix),
                              ("pretrained without FIM", plain_psm, plain_prefix)):
        print(f"{name:<28} {psm[0]:>11.3f} {prefix[0]:>12.3f} {psm[1]:>12.3f} {prefix[1]:>15.3f}")
    print(f"FIM model with the suffix against the plain model with the prefix: {fim_psm[0]:.3f} vs "
          f"{plain_prefix[0]:.3f} (ratio {fim_psm[0] / plain_prefix[0]:.2f}); last {TAIL} tokens {fim_psm[1]:.3f} vs "
          f"{plain_prefix[1]:.3f} (ratio {fim_psm[1] / plain_prefix[1]:.2f})")


if __name__ == "__main__":
    main()
