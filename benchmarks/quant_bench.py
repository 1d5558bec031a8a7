"""One checkpoint as fp32, bf16, int8, int4 and fp8 side by side: size on disk, weight bytes in memory, held-out
accuracy and decode tokens/s (V3 §3.3; DeepSeek credits 8-bit and 4-bit weights with -50% and -75% of memory).

Every format takes the real path: `save_quantized` writes it and `load_checkpoint` loads it. int8 and int4 are
rounded by GPTQ on --calibrate worked training problems (`nanoseek quantize`'s default; it needs the tokenizer);
the row "int4 rtn" rounds each weight to nearest instead, for comparison. int8 and int4 layers
stay quantized in memory and run torch's CPU kernels (the routed experts dequantize just the experts a forward
picks), the rest of those models in float32, as `load_checkpoint` and every command load them; bf16 and fp8 load
as bf16 (FP8 is dequantized on load), fp32 as fp32. "quantized x" is the bytes of the quantized matrices (weights and
scales) over the same matrices in bf16; "disk x" the whole checkpoint over the bf16 one.

Accuracy: greedy answers to held-out problems (the pipeline's evaluation set, `data.sources.eval_problems`, or
--eval-data, a JSONL from `nanoseek data`), prompted with the chat template and judged by the task's verifier on the
text after </think>;
it needs the checkpoint's tokenizer.json and prints n/a without one. Decode: tokens/s of batch-1 greedy decoding
through the engine after a 32-token prompt, every format compiled; the formats take
turns, --repeats rounds, and each keeps its best
run, so a load that comes and goes on a shared machine hits them all alike.

--profile prints, for fp32, int8 and int4, torch.profiler's table of one decode run (the operations by their own
CPU time), where the time of a compiled step goes.

Usage: python benchmarks/quant_bench.py CKPT [--eval-data FILE] [--n 50] [--max-new-tokens 320] [--threads 2]
                                             [--calibrate 128] [--profile]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nanoseek.checkpoint import load_checkpoint, save_checkpoint, save_quantized
from nanoseek.data import Problem, verify
from nanoseek.gptq import CALIBRATION_PROBLEMS, calibration_sequences, hessians
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.model import Transformer
from nanoseek.quant import QUANTIZED, quantized_bytes
from nanoseek.tokenizer import END_THINK, Tokenizer, chat_ids
from nanoseek.data.sources import eval_problems
from nanoseek.train.evaluate import generate

FORMATS = ("fp32", "bf16", "int8", "int4", "int4 rtn", "fp8")


def weight_bytes(model: Transformer) -> int:
    """Parameters, persistent buffers (the routing bias) and the quantized layers' and expert stacks' buffers, each
    tensor once."""
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    for m in model.modules():
        if isinstance(m, QUANTIZED):
            tensors.update({b.data_ptr(): b for b in m.buffers()})
    return sum(t.nbytes for t in tensors.values())


def accuracy(model: Transformer, tokenizer: Tokenizer, problems: list[Problem], max_new_tokens: int) -> float:
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": p.prompt}], add_generation_prompt=True)[0]
               for p in problems]
    responses = generate(model, prompts, max_new_tokens, tokenizer.eos_id)  # greedy
    correct = 0
    for problem, response in zip(problems, responses):
        text = tokenizer.decode([t for t in response if t != tokenizer.eos_id])
        correct += verify(problem, text.split(END_THINK, 1)[-1].strip())
    return correct / len(problems)


def decode_tokens_per_second(model: Transformer, tokens: int) -> float:
    """Batch-1 greedy decoding through the engine, a 32-token prompt, after one warm-up run (compiling)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0)).tolist()
    engine = Engine(model, EngineConfig(cache_mb=16, prefix_cache=False))
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    engine.generate(prompt, params)
    start = time.perf_counter()
    engine.generate(prompt, params)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--eval-data", default=None, help="JSONL of problems (default: a generated held-out mix)")
    parser.add_argument("--n", type=int, default=50, help="problems of the generated mix (default: 50)")
    parser.add_argument("--max-new-tokens", type=int, default=320, help="longest answer (default: 320)")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens per decode-speed run (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="decode-speed rounds, the best counts (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--calibrate", type=int, default=CALIBRATION_PROBLEMS,
                        help=f"GPTQ's training problems for int8 / int4 (default: {CALIBRATION_PROBLEMS})")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of fp32, int8, int4 decoding")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    src = Path(args.checkpoint)
    tokenizer = Tokenizer.from_dir(src) if (src / "tokenizer.json").exists() else None
    if args.eval_data:
        lines = Path(args.eval_data).read_text(encoding="utf-8").splitlines()
        problems = [Problem.from_row(json.loads(line)) for line in lines if line.strip()]
    else:
        problems = eval_problems(args.n)
    model = load_checkpoint(src)
    params = sum(p.numel() for p in model.parameters())
    print(f"{src}: {params / 1e6:.1f}M parameters, {torch.get_num_threads()} threads, "
          + (f"accuracy on {len(problems)} held-out problems" if tokenizer else "no tokenizer.json: accuracy n/a"))
    fitted = hessians(model, calibration_sequences(tokenizer, args.calibrate)) if tokenizer and args.calibrate else None
    rows, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            out = Path(tmp) / fmt.replace(" ", "-")
            if fmt == "fp32":
                save_checkpoint(model, out)
            else:
                save_quantized(model, out, fmt.split()[0], hessians=None if fmt.endswith("rtn") else fitted)
            disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            loaded = load_checkpoint(out, dtype=None if fmt == "fp32" or fmt.startswith("int") else torch.bfloat16)
            held, bf16 = quantized_bytes(loaded)
            acc = accuracy(loaded, tokenizer, problems, args.max_new_tokens) if tokenizer else None
            rows.append((fmt, disk, weight_bytes(loaded), held / bf16 if bf16 else None, acc))
            models.append(loaded)
    speeds = [0.0] * len(models)
    for _ in range(args.repeats + 1):  # the first round warms up
        for i, loaded in enumerate(models):
            speeds[i] = max(speeds[i], decode_tokens_per_second(loaded, args.decode_tokens))
    bf16_disk = rows[1][1]
    print(f"{'format':<9}{'disk MiB':>10}{'disk x':>8}{'memory MiB':>12}{'quantized x':>13}{'accuracy':>10}"
          f"{'decode tok/s':>14}")
    for (fmt, disk, memory, ratio, acc), tps in zip(rows, speeds):
        print(f"{fmt:<9}{disk / 2**20:>10.2f}{disk / bf16_disk:>8.2f}{memory / 2**20:>12.2f}"
              f"{(f'{ratio:.3f}' if ratio else '-'):>13}{(f'{100 * acc:.1f}%' if acc is not None else 'n/a'):>10}"
              f"{tps:>14.1f}")
    if args.profile:
        for (fmt, *_), loaded in zip(rows, models):
            if fmt in ("fp32", "int8", "int4"):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    tps = decode_tokens_per_second(loaded, args.decode_tokens)
                print(f"\n{fmt}: {args.decode_tokens} tokens at batch 1 under the profiler, {tps:.1f} tok/s")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
