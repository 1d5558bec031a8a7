"""Prefill and decode: nanoseek's engine against llama.cpp, the same checkpoint on the same CPU at equal threads.

llama.cpp runs through llama-cpp-python's bindings to its C API (a batch of sequences per `llama_decode`, greedy
choices by argmax over the logits, as our engine makes them), without its repacked weight buffers (see
LlamaCpp). The checkpoint is exported with
`nanoseek checkpoint export --format gguf` three times, each type against its counterpart of ours: f32 against our
float32, q8_0 against int8, q4_0 against int4 (ours rounded to nearest, as ggml's types are; the rest of our model in
float32, as `load_checkpoint` loads it). First the greedy tokens of f32 and float32 are checked equal over --check
new tokens of a text prompt. Then, at batch 1 and 8, with random prompts of --prompt tokens:

  prefill tok/s  B x prompt / t(1 new token): the prompts in one batch, to the first new token;
  decode tok/s   B x (new - 1) / (t(new tokens) - t(1 new token)): the prefill cancels out.

Each time is the best of --repeats, the two engines taking turns. "x f32" is an engine's speed over its own
f32 / float32 at the same batch and phase; "of limit" is decode speed over the memory-bandwidth limit: the bytes a
step reads (every matrix once, the routed experts that B tokens can pick, at most B x top-k of them, the embedding's
rows not counted) at --bandwidth-gbs. A model this small can sit in the CPU's caches, so it can pass that limit.

Needs llama-cpp-python (CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python: it builds llama.cpp, some
10-20 minutes on 2 cores) and the gguf package (pip install 'nanoseek[gguf]').

Usage: python benchmarks/decode_vs_llamacpp.py CKPT [--threads 1] [--repeats 3] [--new 64] [--prompt 128]
                                                    [--bandwidth-gbs 26]
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

from machine import machine
from nanoseek.threads import spin_briefly

spin_briefly()  # as decode_vs_hf.py: OpenMP threads that wait spin only briefly, for both engines

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import llama_cpp
except ImportError:
    sys.exit('llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python '
             "(it builds llama.cpp from source)")
import gguf  # noqa: E402

from nanoseek.checkpoint import load_checkpoint, save_quantized  # noqa: E402
from nanoseek.checkpoint.gguf import export_gguf  # noqa: E402
from nanoseek.infer import Engine, EngineConfig, SamplingParams  # noqa: E402
from nanoseek.model import Transformer  # noqa: E402
from nanoseek.quant import QUANTIZED  # noqa: E402
from nanoseek.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402

PAIRS = (("f32", "float32"), ("q8_0", "int8"), ("q4_0", "int4"))
BATCHES = (1, 8)
CHECK_TEXT = ('def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n\n\n'
              'def mean(values):\n    """Return the arithmetic mean of the values."""\n')


@llama_cpp.llama_log_callback
def _quiet(level, text, user_data):  # llama.cpp logs every load at length; errors still raise
    pass


class LlamaCpp:
    """One GGUF model and a context for up to `max_seqs` sequences, decoded greedily through llama.cpp's C API."""

    def __init__(self, path: Path, threads: int, max_seqs: int, tokens_per_seq: int, max_batch: int):
        params = llama_cpp.llama_model_default_params()
        # no repacked weight buffers (llama-cli's --no-repack): on this project's AMX Xeon, llama.cpp's repacked
        # q8_0 / q4_0 products crash (segfault in the first llama_decode) on the tiny model's 128-wide matrices
        params.use_extra_bufts = False
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = max_seqs * tokens_per_seq
        params.n_batch = params.n_ubatch = max_batch
        params.n_seq_max = max_seqs
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(max_batch, 0, max_seqs)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """One llama_decode of (token, position, sequence, wants logits) entries -> argmax of each wanted row."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        if llama_cpp.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        rows = [i for i, entry in enumerate(entries) if entry[3]]
        return [int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,)).argmax())
                for i in rows]

    def generate(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        entries = [(t, p, s, p == len(prompt) - 1) for s, prompt in enumerate(prompts) for p, t in enumerate(prompt)]
        outs = [[t] for t in self._decode(entries)]
        for step in range(new - 1):
            entries = [(out[-1], len(prompt) + step, s, True) for s, (prompt, out) in enumerate(zip(prompts, outs))]
            for out, t in zip(outs, self._decode(entries)):
                out.append(t)
        return outs


class Nanoseek:
    def __init__(self, model: Transformer, max_seqs: int):
        self.engine = Engine(model, EngineConfig(cache_mb=64, prefix_cache=False, max_seqs=max_seqs))

    def generate(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        return self.engine.generate(prompts, SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))


def step_bytes_ours(model: Transformer, batch: int) -> float:
    """Bytes of the weights a decode step of `batch` tokens reads: every matrix once, the routed experts' stacks in
    the share that batch x top-k tokens can pick, the embedding (a row per token) and the MTP module left out."""
    c = model.config
    share = min(1.0, batch * c.num_experts_per_tok / c.n_routed_experts) if c.n_routed_experts else 1.0
    tensors = dict(model.named_parameters())
    for name, m in model.named_modules():
        if isinstance(m, QUANTIZED):
            tensors.update({f"{name}.{b}": t for b, t in m.named_buffers()})
    total = 0.0
    for name, t in tensors.items():
        if name.startswith(("embed_tokens", "mtp.")):
            continue
        total += t.nbytes * (share if ".experts." in name else 1.0)  # a routed stack, float or QuantizedStack
    return total


def step_bytes_gguf(path: Path, config, batch: int) -> float:
    """The same count from a GGUF file's tensors (`*_exps` are the routed experts' stacks)."""
    share = min(1.0, batch * config.num_experts_per_tok / config.n_routed_experts) if config.n_routed_experts else 1.0
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    if "output.weight" in tensors:  # tied embeddings: the head reads token_embd whole
        tensors.pop("token_embd.weight")
    return sum(n * (share if "_exps" in name else 1.0) for name, n in tensors.items())


def best_times(engines: dict, prompts: list[list[int]], new: int, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (best seconds for 1 new token, best seconds for `new`), the engines taking turns."""
    for e in engines.values():  # warm-up: our engine compiles this batch's decode step
        e.generate(prompts, new)
    best = {name: [float("inf"), float("inf")] for name in engines}
    for _ in range(repeats):
        for name, e in engines.items():
            for i, n in enumerate((1, new)):
                start = time.perf_counter()
                e.generate(prompts, n)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    return {name: tuple(t) for name, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a trained checkpoint directory with its tokenizer.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=64, help="new tokens per sequence (default 64)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence (default 128)")
    ap.add_argument("--check", type=int, default=64, help="greedy tokens checked equal, f32 (default 64)")
    ap.add_argument("--bandwidth-gbs", type=float, default=26.0, help="memory bandwidth for the limit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
    src = Path(args.checkpoint)
    tokenizer = Tokenizer.from_dir(src)
    float_model = load_checkpoint(src)
    config = float_model.config
    print(f"machine: {machine()}; torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, "
          f"{args.threads} thread(s) each")
    print(f"{src}: {sum(p.numel() for p in float_model.parameters()) / 1e6:.2f}M parameters "
          f"(llama.cpp runs it without the MTP module); prompts of {args.prompt} tokens, {args.new} new, greedy, "
          f"best of {args.repeats}")
    seq_tokens = max(args.prompt + args.new, len(tokenizer.encode(CHECK_TEXT)) + args.check + 1)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = []
        for gguf_type, ours_type in PAIRS:
            path = export_gguf(src, Path(tmp) / f"{gguf_type}.gguf", gguf_type)[0]
            if ours_type == "float32":
                model = float_model
            else:
                save_quantized(float_model, Path(tmp) / ours_type, ours_type)
                model = load_checkpoint(Path(tmp) / ours_type)
            theirs = LlamaCpp(path, args.threads, max(BATCHES), -(-seq_tokens // 256) * 256,
                              max(BATCHES) * args.prompt)
            pairs.append((gguf_type, ours_type, theirs, Nanoseek(model, max(BATCHES)), path, model))

        check = [tokenizer.encode(CHECK_TEXT, add_bos=True)]
        for gguf_type, ours_type, theirs, ours, _, _ in pairs:
            a, b = theirs.generate(check, args.check)[0], ours.generate(check, args.check)[0]
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            print(f"greedy tokens, {args.check} after a {len(check[0])}-token prompt: llama.cpp {gguf_type} and "
                  f"nanoseek {ours_type} agree on the first {same}" + (" (all)" if same == len(a) else ""))
            if gguf_type == "f32" and same != len(a):
                sys.exit("the f32 export does not decode like our float32 model")

        g = torch.Generator().manual_seed(0)
        rows = {}
        for batch in BATCHES:
            prompts = torch.randint(len(SPECIAL_TOKENS), config.vocab_size, (batch, args.prompt),
                                    generator=g).tolist()
            for gguf_type, ours_type, theirs, ours, path, model in pairs:
                times = best_times({"llama.cpp": theirs, "nanoseek": ours}, prompts, args.new, args.repeats)
                for engine, (t1, tn) in times.items():
                    limit = batch * args.bandwidth_gbs * 1e9 / (step_bytes_gguf(path, config, batch)
                                                                 if engine == "llama.cpp" else
                                                                 step_bytes_ours(model, batch))
                    rows[engine, gguf_type, batch] = (batch * args.prompt / t1, batch * (args.new - 1) / (tn - t1),
                                                      limit)

    print(f"{'types':<14}{'batch':>6}{'phase':>9} |{'llama.cpp tok/s':>16}{'x f32':>7}{'of limit':>9} |"
          f"{'nanoseek tok/s':>16}{'x f32':>7}{'of limit':>9} |{'llama.cpp / nanoseek':>21}")
    for batch in BATCHES:
        for phase, phase_name in ((0, "prefill"), (1, "decode")):
            for gguf_type, ours_type, *_ in pairs:
                line = f"{gguf_type + ' / ' + ours_type:<14}{batch:>6}{phase_name:>9} |"
                for engine in ("llama.cpp", "nanoseek"):
                    speed, limit = rows[engine, gguf_type, batch][phase], rows[engine, gguf_type, batch][2]
                    of_limit = f"{speed / limit:.0%}" if phase else "-"
                    line += f"{speed:>16.1f}{speed / rows[engine, 'f32', batch][phase]:>6.2f}x{of_limit:>9} |"
                ratio = rows["llama.cpp", gguf_type, batch][phase] / rows["nanoseek", gguf_type, batch][phase]
                print(f"{line}{ratio:>20.2f}x")
    for batch in BATCHES:
        limits = ", ".join(f"{t} {rows['llama.cpp', t, batch][2]:.0f} / {rows['nanoseek', t, batch][2]:.0f}"
                           for t, _ in PAIRS)
        print(f"decode limit at batch {batch}, {args.bandwidth_gbs:.0f} GB/s, llama.cpp / nanoseek tok/s: {limits}")
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
