"""nanoseek vs transformers' DeepseekV3ForCausalLM on the reference shape, measured side by side in one run.

Training step: batch 8 x 256, forward + backward + AdamW. Prefill: tokens/s of a forward over the same batch.
float32, and bf16 autocast (it pays on CPUs with AVX512-BF16 or AMX); nanoseek eager, and with each block compiled
(`train.loop.compile_blocks`, TrainConfig.compile; the warm-up step compiles, the timed ones do not).
Usage: python benchmarks/model_vs_hf.py [--threads 2] [--steps 5]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

try:
    from nanoseek import load_checkpoint
except ImportError:
    pass
from nanoseek.config import ModelConfig
from nanoseek.train.loop import compile_blocks

REFERENCE = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4, first_k_dense_replace=1,
                 num_attention_heads=8, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                 v_head_dim=32, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1,
                 moe_intermediate_size=128, intermediate_size=512, n_group=4, topk_group=2,
                 routed_scaling_factor=2.5, tie_word_embeddings=False, num_nextn_predict_layers=0)


def models():
    """The HF model builds the weights; nanoseek loads the very same checkpoint."""
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**REFERENCE, num_key_value_heads=8))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_checkpoint(d)
    return ours, hf


def hf_logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def timed_pair(fn_a, fn_b, steps: int) -> tuple[float, float]:
    """Best-of-`steps` seconds of each, alternating a and b so that both see the same machine load."""
    fn_a(), fn_b()  # warm-up
    best_a = best_b = float("inf")
    for _ in range(steps):
        for fn, which in ((fn_a, "a"), (fn_b, "b")):
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            if which == "a":
                best_a = min(best_a, took)
            else:
                best_b = min(best_b, took)
    return best_a, best_b


def train_step_fn(model, forward, ids, autocast):
    # fused AdamW: what nanoseek's loop and transformers' Trainer (torch >= 2.8) both use
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step():
        with autocast():
            logits = forward(model, ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def prefill_fn(model, forward, ids, autocast):
    def run():
        model.eval()
        with torch.no_grad(), autocast():
            forward(model, ids)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, hf = models()
    ids = torch.randint(0, REFERENCE["vocab_size"], (args.batch, args.seq + 1))
    tokens = args.batch * args.seq
    precisions = {"float32": contextlib.nullcontext,
                  "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    print(f"reference shape, batch {args.batch} x {args.seq}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'measure':<38}{'nanoseek':>14}{'transformers':>14}{'ratio':>8}")
    compiled = copy.deepcopy(ours)
    compile_blocks(compiled)
    for name, autocast in precisions.items():
        for what, make, unit in (("train step", train_step_fn, "tok/s"), ("prefill", prefill_fn, "tok/s")):
            for label, model in (("", ours), (", compiled", compiled)):
                t_ours, t_hf = timed_pair(make(model, lambda m, x: m(x), ids, autocast),
                                          make(hf, hf_logits, ids, autocast), args.steps)
                print(f"{what + ' ' + name + label:<38}{tokens / t_ours:>10.0f} {unit}{tokens / t_hf:>10.0f} {unit}"
                      f"{t_hf / t_ours:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
