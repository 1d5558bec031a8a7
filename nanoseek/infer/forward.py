"""The model's forward over the paged cache, as the engine runs it: prefill chunks eagerly, decode steps compiled.

A small model decoding a few tokens is bound by the fixed cost of each operation, not by arithmetic: an eager
decode step of the tiny model is some 230 operations. `torch.compile` (inductor: C++ on a CPU, Triton on a GPU)
fuses the small ones and keeps the matrix products, so a step is a few dozen calls, and no step waits on the host
(the router's experts are gathered or grouped on the device, model/moe.py; greedy choices are made inside the
step). A decode step is padded to a bucket: the batch up to a power of two (rows feeding a dummy token into block
0), and the positions each sequence attends over up to a power-of-two number of blocks (masked). The graphs are
compiled with symbolic sizes, so one serves many buckets: a batch of one, and the batches whose experts are
gathered or grouped, make a few per model. Inductor keeps them in its on-disk cache (`torch._inductor`'s FX graph
cache), so the next process loads them in seconds. On a GPU the compiled step is also captured as a CUDA graph
(inductor's cudagraphs, what mode="reduce-overhead" turns on), one recording per bucket, which replays the whole
step with one launch.

Prefill chunks have as many shapes as prompts have lengths, and a chunk's cost is its arithmetic: they run eager.
The eager path is the reference the tests hold the compiled one to. A forward over few tokens, compiled or not, runs
on one CPU thread (`threads_for`).
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable

import torch

from nanoseek.infer.kv_cache import BlockPool, PagedBatch
from nanoseek.infer.request import Sequence
from nanoseek.model import Transformer

MIN_SPAN_BLOCKS = 4  # the smallest span a decode step attends over, in blocks
PARALLEL_TOKENS = 128  # forwards over fewer tokens than this run on one CPU thread (see `threads_for`)
# A few graphs per function and model (see above), and every model of the process shares the functions:
# torch.compile's default limit of 8 graphs per function would send the rest back to eager.
torch._dynamo.config.recompile_limit = 64
_compiled: dict[tuple[Callable, bool, int], Callable] = {}  # by function, CUDA or not and threads, for every engine
_shapes: set = set()                                           # (function, shapes) compiled so far


@contextlib.contextmanager
def threads_for(tokens: int):
    """Run a forward over few tokens on one CPU thread: its operations are too small to repay waking a second one,
    and on a CPU shared with other work a second thread that waits for a descheduled sibling makes each of them far
    slower (docs/engine.md has the measurements). A step compiled inside this context is compiled for one thread."""
    threads = torch.get_num_threads()
    if tokens >= PARALLEL_TOKENS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bucket(n: int) -> int:
    """The power of two at or above n."""
    return 1 << max(n - 1, 0).bit_length()


def decode(model: Transformer, batch: PagedBatch, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: ids (B, T) at the batch's positions -> logits (B, T, vocab) in float32 and their argmax,
    the greedy choice, computed inside the step."""
    logits = model.head(model.hidden_states(ids, batch)).float()
    return logits, logits.argmax(-1)


class Forward:
    """`prefill(seqs, starts, lengths)` runs chunks eagerly; `decode(fn, seqs, T, ids, *inputs)` runs `fn(model,
    batch, ids, *inputs)` on a padded batch, compiled when `compile` is on, and returns its outputs cut to the real
    rows. Functions given to `decode` take the model, a PagedBatch and tensors whose first dimension is the batch."""

    def __init__(self, model: Transformer, pool: BlockPool, compile: bool):
        self.model, self.pool, self.compile = model, pool, compile
        self.compile_seconds = 0.0  # spent by this engine's first calls of new shapes
        if compile and pool.kv[0].is_cuda:
            for kv in pool.kv:  # CUDA graphs replay fixed addresses: the pool is written in place at every step
                torch._dynamo.mark_static_address(kv)

    def prefill(self, seqs: list[Sequence], starts: list[int], lengths: list[int]) -> torch.Tensor:
        """Hidden states (B, T, hidden) of each sequence's tokens starts[i] .. starts[i] + lengths[i] - 1 (right-padded
        to the longest), their latents written to the cache."""
        T = max(lengths)
        batch = PagedBatch.build(self.pool, [s.blocks for s in seqs], starts, lengths)
        ids = self.pad([s.tokens[a:a + n] for s, a, n in zip(seqs, starts, lengths)], len(seqs), T)
        with threads_for(sum(lengths)):
            return self.model.hidden_states(ids, batch)

    def pad(self, rows: list[list[int]], B: int, T: int) -> torch.Tensor:
        """Token rows as a (B, T) tensor, zero-padded."""
        ids = torch.zeros(B, T, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        return ids.to(self.pool.kv[0].device)

    def decode(self, fn: Callable, seqs: list[Sequence], T: int, ids: list[list[int]], *inputs: torch.Tensor):
        """fn over the sequences' next T tokens `ids`, each at its `computed` position on."""
        B = len(seqs)
        rows = bucket(B) if self.compile else B
        bs = self.pool.block_size
        end = max(s.computed for s in seqs) + T
        span = max(bucket(-(-end // bs)), MIN_SPAN_BLOCKS) * bs if self.compile else None
        batch = PagedBatch.build(self.pool, [s.blocks for s in seqs], [s.computed for s in seqs], [T] * B,
                                 absorbed=True, span=span, rows=rows)
        padded = [torch.cat([x, x.new_zeros(rows - B, *x.shape[1:])]) if rows > B else x for x in inputs]
        with threads_for(rows * T):
            out = self._run(fn, batch, self.pad(ids, rows, T), *padded)
        return tuple(o[:B] for o in out)

    def _run(self, fn: Callable, batch: PagedBatch, *inputs):
        if not self.compile:
            return fn(self.model, batch, *inputs)
        cuda = batch.read.is_cuda
        # inductor writes a CPU's thread count into the code it generates: one compiled function per count
        key = (fn, cuda, torch.get_num_threads())
        if key not in _compiled:
            # a CPU's generated code calls its kernels from C++ rather than Python (cpp_wrapper); a GPU's step is a
            # CUDA graph
            options = {"triton.cudagraphs": True} if cuda else {"cpp_wrapper": True}
            _compiled[key] = torch.compile(fn, dynamic=True, options=options)
        shape = (*key, id(self.model), batch.read.shape, batch.read.device, self.pool.kv[0].dtype)
        if shape in _shapes:
            return _compiled[key](self.model, batch, *inputs)
        start = time.perf_counter()
        out = _compiled[key](self.model, batch, *inputs)
        seconds = time.perf_counter() - start
        if not _shapes:
            print(f"nanoseek: compiled the decode step in {seconds:.1f} s (other batch sizes may compile on first use; "
                  "inductor keeps the result on disk for later runs; --no-compile runs eagerly)", file=sys.stderr,
                  flush=True)
        _shapes.add(shape)
        self.compile_seconds += seconds
        return out
