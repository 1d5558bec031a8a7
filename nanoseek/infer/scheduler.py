"""The engine's scheduler: which sequences run, and the cache blocks they hold.

Requests wait in a queue and are admitted first come first served while the cache has room for all of a request:
its prompt (less what the prefix cache already holds) and max_tokens more per sample, so a running sequence never
runs out of cache. An admitted request prefills as one sequence; when its prompt is done it forks into its n
samples, which share the prompt's blocks (reference counts, kv_cache.BlockPool). A finished sequence gives its
blocks back, and its full blocks stay in the prefix cache for later prompts that start the same way.
"""
from __future__ import annotations

import secrets
from collections import deque

import torch

from nanoseek.infer.detokenizer import Detokenizer
from nanoseek.infer.kv_cache import BlockPool
from nanoseek.infer.prefix_cache import PrefixCache
from nanoseek.infer.request import Request, Sequence
from nanoseek.tokenizer import Tokenizer


class Scheduler:
    def __init__(self, pool: BlockPool, prefix: PrefixCache | None, max_seqs: int, speculative: bool,
                 vocab_size: int, tokenizer: Tokenizer | None):
        self.pool, self.prefix, self.max_seqs, self.spec = pool, prefix, max_seqs, speculative
        self.vocab_size, self.tokenizer = vocab_size, tokenizer
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self.active = 0                              # sequences admitted and not finished (forks included)

    # ---- block accounting ---------------------------------------------------------------------------------------
    def fork_block(self, prompt_len: int) -> int:
        """The first block a sample holds on its own: the one its first new token goes to, or with speculation
        the one holding the prompt's last position (its MTP entry depends on the sample's first token)."""
        return (prompt_len - 1 if self.spec else prompt_len) // self.pool.block_size

    def blocks_needed(self, prompt_len: int, max_tokens: int, n: int, cached: int) -> int:
        total = -(-(prompt_len + max_tokens) // self.pool.block_size)
        return total - cached + (n - 1) * (total - self.fork_block(prompt_len))

    # ---- admission ----------------------------------------------------------------------------------------------
    def admit(self) -> list[Request]:
        """Admit waiting requests in order while the cache and max_seqs allow; returns those admitted."""
        admitted, bs = [], self.pool.block_size
        while self.waiting and self.active + self.waiting[0].params.n <= self.max_seqs:
            request = self.waiting[0]
            L, n = len(request.prompt), request.params.n
            cached, hasher = self.prefix.match(request.prompt) if self.prefix is not None else ([], None)
            if self.blocks_needed(L, request.max_tokens, n, len(cached)) > self.pool.free_blocks:
                self.pool.release(cached)
                break
            self.waiting.popleft()
            total = -(-(L + request.max_tokens) // bs)
            seq = self.sequence(request, 0, list(request.prompt), cached + self.pool.allocate(total - len(cached)))
            seq.computed = seq.complete = len(cached) * bs
            seq.registered, seq.hasher = len(cached), hasher
            request.spare = [self.pool.allocate(total - self.fork_block(L)) for _ in range(n - 1)]
            request.cached_tokens = len(cached) * bs
            request.sequences = [seq]
            self.active += n
            self.prefilling.append(seq)
            admitted.append(request)
        return admitted

    def sequence(self, request: Request, index: int, tokens: list[int], blocks: list[int]) -> Sequence:
        params, device = request.params, self.pool.kv[0].device
        seed = secrets.randbits(62) if params.seed is None else params.seed + index
        seq = Sequence(request, index, tokens, blocks, torch.Generator(device).manual_seed(seed))
        if params.penalized:
            seq.counts = torch.zeros(self.vocab_size, device=device)
            seq.seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
            seq.seen[torch.tensor(tokens, device=device)] = True
        if self.tokenizer is not None:
            seq.detokenizer = Detokenizer(self.tokenizer, params.stop)
        return seq

    def fork(self, seq: Sequence) -> list[Sequence]:
        """A finished prefill -> the request's n samples, all running. Sample 0 is the prefill sequence itself; the
        others share its blocks before the fork block, copy that block, and continue in their spare blocks."""
        request = seq.request
        self.prefilling.remove(seq)
        samples = [seq]
        first = self.fork_block(len(request.prompt))
        for index, spare in enumerate(request.spare, start=1):
            shared = seq.blocks[:first]
            self.pool.share(shared)
            if first < len(seq.blocks) and first * self.pool.block_size < len(request.prompt):
                self.pool.copy_block(seq.blocks[first], spare[0])
            child = self.sequence(request, index, list(seq.tokens), shared + spare)
            child.computed, child.complete, child.registered = seq.computed, seq.complete, seq.registered
            child.hasher = seq.hasher.copy() if seq.hasher is not None else None
            samples.append(child)
        request.spare = []
        request.sequences = samples
        self.running += samples
        return samples

    # ---- leaving ------------------------------------------------------------------------------------------------
    def finish(self, seq: Sequence, reason: str) -> bool:
        """End a sequence and give its blocks back; True when that was its request's last one."""
        seq.finish_reason = reason
        self.register(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        for queue in (self.running, self.prefilling):
            if seq in queue:
                queue.remove(seq)
        self.active -= 1
        request = seq.request
        return not request.spare and all(s.finish_reason is not None for s in request.sequences)

    def cancel(self, request: Request) -> None:
        """Stop a waiting or running request and free its blocks."""
        if request in self.waiting:
            self.waiting.remove(request)
            return
        for seq in request.sequences:
            if seq.finish_reason is None:
                self.finish(seq, "cancelled")
        for blocks in request.spare:  # samples that never forked
            self.pool.release(blocks)
            self.active -= 1
        request.spare = []

    # ---- the prefix cache ---------------------------------------------------------------------------------------
    def register(self, seq: Sequence) -> None:
        """Offer the sequence's newly final full blocks to the prefix cache."""
        if seq.hasher is None:
            return
        bs, ahead = self.pool.block_size, self.prefix.lookahead
        while (seq.registered + 1) * bs <= seq.complete and (seq.registered + 1) * bs + ahead <= len(seq.tokens):
            key = self.prefix.key(seq.hasher, seq.tokens, seq.registered)
            self.prefix.register(seq.blocks[seq.registered], key)
            seq.registered += 1

    def forget_prefixes(self, root: bytes) -> None:
        """Cached prefixes were computed by other weights: forget them all."""
        self.pool.forget_keys()
        for seq in self.prefilling + self.running:
            seq.hasher = None
        self.prefix.root = root
