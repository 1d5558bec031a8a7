"""Greedy decoding: nanoseek's Engine against transformers' DeepseekV3ForCausalLM.generate, same weights, same run.

Reference shape (no MTP), prompt 32 tokens, 128 new tokens, end of sequence ignored. Tokens/s counts new tokens
over the whole call (prefill included, for both). Each side runs once to warm up (nanoseek compiles its decode step
for the batch's bucket then; the seconds are printed), then the two run back to back `--repeats` times: the table
shows each one's best tokens/s and the median ratio of the pairs, so a change of machine load between pairs does
not count; the outputs are checked equal. `--no-compile` runs nanoseek's eager path instead. Also: KV cache bytes
per token (what each actually allocates), and batch 1 against its physical limit, the bytes of the weights a token
multiplies with over the memory bandwidth.

Usage: python benchmarks/decode_vs_hf.py [--threads 2] [--repeats 5] [--batches 1,8,32,64] [--bf16-tokens 8]
                                         [--bandwidth-gbs 26] [--no-compile]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

# Idle OpenMP threads spin only briefly, as the nanoseek command sets them (nanoseek.threads.spin_briefly): on a CPU
# shared with other work, long spinning makes every multi-threaded product of both implementations many times slower.
from machine import machine  # noqa: E402
from nanoseek.threads import spin_briefly  # noqa: E402  (no torch import)

spin_briefly()

import torch  # noqa: E402
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

from nanoseek import load_checkpoint  # noqa: E402
from nanoseek.cost import matmul_params_per_token  # noqa: E402
from nanoseek.infer import Engine, EngineConfig, SamplingParams  # noqa: E402
from nanoseek.infer.forward import PARALLEL_TOKENS  # noqa: E402

REFERENCE = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4, first_k_dense_replace=1,
                 num_attention_heads=8, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                 v_head_dim=32, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1,
                 moe_intermediate_size=128, intermediate_size=512, n_group=4, topk_group=2,
                 routed_scaling_factor=2.5, tie_word_embeddings=False, num_nextn_predict_layers=0)
PROMPT = 32


def models(dtype: torch.dtype):
    """transformers builds the weights (with a routing bias, so that routing is not trivial); nanoseek loads the
    very same checkpoint."""
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**REFERENCE, num_key_value_heads=8)).eval()
    with torch.no_grad():
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_checkpoint(d)
    return ours.to(dtype), hf.to(dtype)


def hf_generate(hf, prompts: torch.Tensor, new: int) -> list[list[int]]:
    out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
                      do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, prompts.shape[1]:].tolist()


def engine_generate(engine: Engine, prompts: torch.Tensor, new: int) -> list[list[int]]:
    return engine.generate(prompts.tolist(), SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))


def paired(a, b, repeats: int):
    """Seconds of a and of b, run back to back `repeats` times, and their last outputs."""
    times, outs = [], [None, None]
    for _ in range(repeats):
        pair = []
        for i, fn in enumerate((a, b)):
            start = time.perf_counter()
            outs[i] = fn()
            pair.append(time.perf_counter() - start)
        times.append(pair)
    return times, outs


def kv_bytes_per_token(hf, ours) -> tuple[float, float]:
    """Bytes each implementation's cache holds per token: transformers' DynamicCache after a forward, nanoseek's
    block pool per token slot."""
    ids = torch.randint(0, REFERENCE["vocab_size"], (1, PROMPT))
    with torch.no_grad():
        cache = hf(ids, use_cache=True).cache
    hf_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    pool = Engine(ours, EngineConfig(cache_mb=1, prefix_cache=False)).pool
    return hf_bytes / PROMPT, pool.bytes_per_block / pool.block_size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new", type=int, default=128, help="new tokens per prompt (default 128)")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--no-compile", action="store_true", help="nanoseek decodes eagerly")
    ap.add_argument("--bf16-tokens", type=int, default=8,
                    help="new tokens for the bf16 rows, batches 1 and 8 (bf16 matmuls are slow on CPUs without AMX); 0 skips")
    ap.add_argument("--bandwidth-gbs", type=float, default=26.0, help="memory bandwidth for the batch-1 limit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '-')}")
    print(f"reference shape, prompt {PROMPT}, greedy; tokens/s = new tokens / wall time of the whole generate call, "
          f"best of {args.repeats}; ratio = median over the {args.repeats} back-to-back pairs; nanoseek runs "
          f"forwards of < {PARALLEL_TOKENS} tokens on one thread")
    print(f"{'dtype':<9}{'batch':>6}{'new':>5}{'nanoseek tok/s':>16}{'transformers tok/s':>20}{'ratio':>8}{'same':>6}"
          f"{'compile s':>11}")
    rows = [(torch.float32, int(b), args.new) for b in args.batches.split(",")]
    if args.bf16_tokens:
        rows += [(torch.bfloat16, int(b), args.bf16_tokens) for b in args.batches.split(",")[:2]]
    results = {}
    for dtype in dict.fromkeys(d for d, _, _ in rows):
        ours, hf = models(dtype)
        for d, batch, new in rows:
            if d != dtype:
                continue
            torch.manual_seed(batch)
            prompts = torch.randint(0, REFERENCE["vocab_size"], (batch, PROMPT))
            # built once, like the transformers model; no prefix cache, so every repeat prefills its prompts
            engine = Engine(ours, EngineConfig(cache_mb=64, prefix_cache=False, max_seqs=max(64, batch),
                                               compile=not args.no_compile))
            engine_generate(engine, prompts, new), hf_generate(hf, prompts, new)  # warm-up
            times, (o_ours, o_hf) = paired(lambda: engine_generate(engine, prompts, new),
                                          lambda: hf_generate(hf, prompts, new), args.repeats)
            t_ours, t_hf = min(t for t, _ in times), min(t for _, t in times)
            ratio = statistics.median(h / o for o, h in times)
            results[dtype, batch] = batch * new / t_ours
            print(f"{str(dtype).removeprefix('torch.'):<9}{batch:>6}{new:>5}{batch * new / t_ours:>16.1f}"
                  f"{batch * new / t_hf:>20.1f}{ratio:>7.2f}x{'yes' if o_ours == o_hf else 'NO':>6}"
                  f"{engine.forward.compile_seconds:>11.1f}", flush=True)
        if dtype == torch.float32:
            hf_kv, ours_kv = kv_bytes_per_token(hf, ours)
    print(f"KV cache per token (float32, all layers): nanoseek {ours_kv:.0f} B, transformers {hf_kv:.0f} B "
          f"(both keep MLA's latent c_kv + k_rope; transformers decompresses every cached token's keys and values "
          f"at each step, nanoseek attends in the latent space)")
    weights = matmul_params_per_token(ours.config, mtp=False) * 4
    limit = args.bandwidth_gbs * 1e9 / weights
    if (torch.float32, 1) in results:
        print(f"batch 1 limit: {weights / 1e6:.1f} MB of float32 weights per token at {args.bandwidth_gbs:.0f} GB/s "
              f"= {limit:.0f} tok/s; nanoseek reaches {results[torch.float32, 1]:.0f} "
              f"({results[torch.float32, 1] / limit:.1%})")
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
