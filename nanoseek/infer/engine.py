"""The inference engine: continuous batching (Orca, Yu et al. 2022) over the paged latent cache, chunked prefill
(Sarathi, Agrawal et al. 2023), prefix caching and MTP self-speculative decoding.

Requests join and leave between steps. Each `step()`:
  1. admits waiting requests, first come first served, while the cache has room for all of a request: its prompt
     (less what the prefix cache already holds) and max_tokens more per sample. A request that does not fit
     waits in the queue; a running one never runs out of cache.
  2. decodes every running sequence in one batched forward: one new token each, or with speculation a draft
     checked and one or two new tokens (speculative.py).
  3. prefills at most `prefill_chunk` prompt tokens of admitted requests, so a long prompt delays the running
     sequences by one chunk per step rather than by its whole length. When a prompt is done its first token is
     sampled, and a request for n samples forks into n sequences sharing the prompt's cache blocks.
`step()` returns what each sequence gained (`Update`); `stream()` runs steps and yields them; `generate()`
runs a batch of prompts to the end.
"""
from __future__ import annotations

import itertools
import operator
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Sequence as Seq
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoseek.errors import InferenceError
from nanoseek.infer.detokenizer import Detokenizer
from nanoseek.infer.kv_cache import BlockPool, PagedBatch
from nanoseek.infer.prefix_cache import PrefixCache, fingerprint
from nanoseek.infer.request import EngineStats, Request, Sequence, Update
from nanoseek.infer.runner import Runner, threads_for
from nanoseek.infer.sampler import SamplingParams, choose, top_logprobs
from nanoseek.infer.speculative import propose, verify
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    cache_mb: float = 256.0                 # latent cache budget, MiB
    block_size: int = 16                    # tokens per cache block (and per prefix-cache entry)
    max_seqs: int = 64                      # sequences decoded together at most
    prefill_chunk: int = 512                # prompt tokens prefilled per step at most
    # Reuse cached blocks of earlier prompts with the same prefix. Weights modified in place are noticed through
    # their version counters, but fused optimizers (AdamW(fused=True)) do not bump them: an engine that lives across
    # training steps should run without it.
    prefix_cache: bool = True
    prefix_cache_dir: str | None = None     # also keep them on disk, across engine restarts
    speculative: bool = False               # MTP self-speculative decoding (needs a model with an MTP module)

    def __post_init__(self):
        for name, ok, expected in [("cache_mb", self.cache_mb > 0, "> 0"), ("block_size", self.block_size >= 1, ">= 1"),
                                   ("max_seqs", self.max_seqs >= 1, ">= 1"),
                                   ("prefill_chunk", self.prefill_chunk >= 1, ">= 1")]:
            if not ok:
                raise InferenceError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.prefix_cache_dir is not None and not self.prefix_cache:
            raise InferenceError(f"prefix_cache_dir={self.prefix_cache_dir!r} needs prefix_cache=True")


class Engine:
    """`Engine(model or checkpoint directory, EngineConfig(...), tokenizer=None)`. A directory loads its weights
    and, when there, its tokenizer (needed for text and stop strings). The engine reads the model's weights at
    every step (it keeps no copy), so a model that goes on training is served with its current weights.

    add_request(prompt_ids, params) -> id; step() -> [Update]; stream(ids) yields updates until those requests
    end; cancel(id); generate(prompts, params) -> new token ids. `stats` counts tokens, cache hits and drafts."""

    def __init__(self, model: Transformer | str | Path, config: EngineConfig | None = None,
                 tokenizer: Tokenizer | None = None):
        self.config = config = config or EngineConfig()
        if not isinstance(model, Transformer):
            from nanoseek.checkpoint import load_checkpoint

            path = Path(model)
            model = load_checkpoint(path)
            if tokenizer is None and (path / "tokenizer.json").exists():
                tokenizer = Tokenizer.from_dir(path)
        self.model, self.tokenizer = model, tokenizer
        c = model.config
        if config.speculative and not len(model.mtp):
            raise InferenceError("speculative decoding drafts with the MTP module, but this model has "
                                 f"num_nextn_predict_layers={len(model.mtp)}")
        self.spec = config.speculative
        self.context = c.max_position_embeddings
        self.vocab_size = c.vocab_size
        self.eos_id = tokenizer.eos_id if tokenizer is not None else c.eos_token_id
        weight = model.embed_tokens.weight
        layers = c.num_hidden_layers + (1 if self.spec else 0)
        self.pool = BlockPool(layers, sum(c.cache_widths()), config.block_size, int(config.cache_mb * 2**20),
                              weight.dtype, weight.device)
        self.layout = (f"layers={layers} width={self.pool.width} block={config.block_size} dtype={weight.dtype} "
                       f"mtp={self.spec}")
        self.prefix = None
        if config.prefix_cache:
            self.prefix = PrefixCache(self.pool, self._prefix_root(), lookahead=int(self.spec),
                                      directory=config.prefix_cache_dir)
        self._weights_version = self._version()
        self.runner = Runner(model)
        self.stats = EngineStats()
        self.requests: dict[int, Request] = {}       # waiting or running
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self._active = 0                             # sequences admitted and not finished (forks included)
        self._next_id = 0

    # ---- the request API ----------------------------------------------------------------------------------------
    def add_request(self, prompt_ids: Seq[int], params: SamplingParams | None = None) -> int:
        """Queue a prompt (token ids); returns the request id."""
        request = self._make_request(prompt_ids, params or SamplingParams())
        self.requests[request.id] = request
        self.waiting.append(request)
        return request.id

    def cancel(self, request_id: int) -> None:
        """Stop a request and free its cache blocks; a request that has already finished is left alone."""
        request = self.requests.get(request_id)
        if request is None:
            if isinstance(request_id, int) and 0 <= request_id < self._next_id:
                return
            raise InferenceError(f"unknown request id {request_id!r}")
        if request in self.waiting:
            self.waiting.remove(request)
            del self.requests[request_id]
            return
        for seq in request.sequences:
            if seq.finish_reason is None:
                self._finish(seq, "cancelled")
        for blocks in request.spare:  # samples that never forked
            self.pool.release(blocks)
            self._active -= 1
        request.spare = []
        self.requests.pop(request_id, None)

    @torch.inference_mode()
    def step(self) -> list[Update]:
        self._admit()
        updates = []
        if self.running:
            with threads_for(len(self.running) * (2 if self.spec else 1)):
                updates += self._decode_speculative() if self.spec else self._decode()
        if self.prefilling:
            updates += self._prefill()
        self.stats.steps += 1
        return updates

    def stream(self, request_ids: Iterable[int] | None = None) -> Iterator[Update]:
        """Run steps until the given requests (default: every request) have finished, yielding their updates
        as they come (updates of other requests are not kept)."""
        wanted = None if request_ids is None else set(request_ids)

        def pending() -> bool:
            return bool(self.requests if wanted is None else self.requests.keys() & wanted)

        while pending():
            for update in self.step():
                if wanted is None or update.request_id in wanted:
                    yield update

    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Generate for every prompt (token ids) together; returns the new token ids of each prompt, or of each
        of its n samples in turn (prompt 0 sample 0, prompt 0 sample 1, ...)."""
        params = params or SamplingParams()
        requests = [self._make_request(p, params) for p in prompts]  # every prompt checked before any runs
        for request in requests:
            self.requests[request.id] = request
            self.waiting.append(request)
        done = {}
        for update in self.stream(r.id for r in requests):
            if update.finish_reason is not None:
                done[update.request_id, update.index] = update.sequence.output_ids
        return [done[r.id, i] for r in requests for i in range(params.n)]

    @property
    def free_blocks(self) -> int:
        return self.pool.free_blocks

    # ---- admission ----------------------------------------------------------------------------------------------
    def _make_request(self, prompt_ids: Seq[int], params: SamplingParams) -> Request:
        if not isinstance(params, SamplingParams):
            raise InferenceError(f"params must be SamplingParams, got {type(params).__name__}")
        prompt = [self._token(t, f"prompt token {i}") for i, t in enumerate(prompt_ids)]
        if not prompt:
            raise InferenceError("the prompt is empty: need at least one token")
        if len(prompt) >= self.context:
            raise InferenceError(f"a prompt of {len(prompt)} tokens does not fit the context of {self.context} "
                                 f"tokens (at most {self.context - 1}, leaving room for one new token)")
        for t in params.stop_token_ids:
            self._token(t, "stop token id")
        if params.stop and self.tokenizer is None:
            raise InferenceError(f"stop strings {params.stop!r} need a tokenizer; this engine has none")
        if params.n > self.config.max_seqs:
            raise InferenceError(f"n={params.n} samples exceed max_seqs={self.config.max_seqs}")
        max_tokens = min(params.max_tokens, self.context - len(prompt))
        need = self._blocks_needed(len(prompt), max_tokens, params.n, cached=0)
        if need > self.pool.capacity:
            raise InferenceError(f"a prompt of {len(prompt)} tokens with max_tokens={max_tokens} and n={params.n} "
                                 f"needs {need} cache blocks of {self.pool.block_size} tokens, but the cache holds "
                                 f"{self.pool.capacity} (cache_mb={self.config.cache_mb}); raise cache_mb or lower "
                                 "max_tokens")
        request = Request(self._next_id, prompt, params, max_tokens)
        self._next_id += 1
        return request

    def _token(self, t, what: str) -> int:
        try:
            t = operator.index(t)
        except TypeError:
            raise InferenceError(f"{what} is {t!r}, not an integer token id") from None
        if not 0 <= t < self.vocab_size:
            raise InferenceError(f"{what} is {t}, outside the vocabulary (0..{self.vocab_size - 1})")
        return t

    def _fork_block(self, prompt_len: int) -> int:
        """The first block a sample holds on its own: the one its first new token goes to, or with speculation
        the one holding the prompt's last position (its MTP entry depends on the sample's first token)."""
        return (prompt_len - 1 if self.spec else prompt_len) // self.pool.block_size

    def _blocks_needed(self, prompt_len: int, max_tokens: int, n: int, cached: int) -> int:
        total = -(-(prompt_len + max_tokens) // self.pool.block_size)
        return total - cached + (n - 1) * (total - self._fork_block(prompt_len))

    def _admit(self) -> None:
        if self.waiting and self.prefix is not None and self._version() != self._weights_version:
            self._weights_changed()
        bs = self.pool.block_size
        while self.waiting and self._active + self.waiting[0].params.n <= self.config.max_seqs:
            request = self.waiting[0]
            L, n = len(request.prompt), request.params.n
            cached, hasher = self.prefix.match(request.prompt) if self.prefix is not None else ([], None)
            need = self._blocks_needed(L, request.max_tokens, n, len(cached))
            if need > self.pool.free_blocks:
                self.pool.release(cached)
                break
            self.waiting.popleft()
            total = -(-(L + request.max_tokens) // bs)
            seq = self._sequence(request, 0, list(request.prompt), cached + self.pool.allocate(total - len(cached)))
            seq.computed = seq.complete = len(cached) * bs
            seq.registered, seq.hasher = len(cached), hasher
            request.spare = [self.pool.allocate(total - self._fork_block(L)) for _ in range(n - 1)]
            request.cached_tokens = len(cached) * bs
            request.sequences = [seq]
            self._active += n
            self.prefilling.append(seq)
            self.stats.prompt_tokens += L
            self.stats.cached_tokens += request.cached_tokens

    def _sequence(self, request: Request, index: int, tokens: list[int], blocks: list[int]) -> Sequence:
        params = request.params
        seed = secrets.randbits(62) if params.seed is None else params.seed + index
        seq = Sequence(request, index, tokens, blocks, torch.Generator(self.pool.kv.device).manual_seed(seed))
        if params.penalized:
            device = self.pool.kv.device
            seq.counts = torch.zeros(self.vocab_size, device=device)
            seq.seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
            seq.seen[torch.tensor(tokens, device=device)] = True
        if self.tokenizer is not None:
            seq.detokenizer = Detokenizer(self.tokenizer, params.stop)
        return seq

    # ---- prefill ------------------------------------------------------------------------------------------------
    def _prefill(self) -> list[Update]:
        """One chunk of prompt tokens over the prefilling sequences, in admission order."""
        budget, rows = self.config.prefill_chunk, []
        for seq in self.prefilling:
            n = min(len(seq.request.prompt) - seq.computed, budget)
            rows.append((seq, seq.computed, n))
            budget -= n
            if budget == 0:
                break
        with threads_for(sum(n for _, _, n in rows)):
            return self._prefill_rows(rows)

    def _prefill_rows(self, rows: list[tuple[Sequence, int, int]]) -> list[Update]:
        T = max(n for _, _, n in rows)
        device = self.pool.kv.device
        batch = PagedBatch(self.pool, [seq.blocks for seq, _, _ in rows], [s for _, s, _ in rows],
                           [n for _, _, n in rows])
        ids = torch.tensor([seq.tokens[s:s + n] + [0] * (T - n) for seq, s, n in rows], device=device)
        h = self.runner.hidden(ids, batch)                                                  # (B * T, hidden)
        for seq, s, n in rows:
            seq.computed = s + n
        if self.spec:
            self._prefill_mtp(rows, h.view(len(rows), T, -1))
        else:
            for seq, _, _ in rows:
                seq.complete = seq.computed
        done = [i for i, (seq, s, n) in enumerate(rows) if s + n == len(seq.tokens)]
        for seq, _, _ in rows:
            self._register(seq)
        if not done:
            return []
        last = torch.tensor([i * T + rows[i][2] - 1 for i in done], device=device)
        h_last, logits = h[last], self.runner.logits(h[last])
        updates, started, started_h = [], [], []
        for j, i in enumerate(done):
            seq = rows[i][0]
            self.prefilling.remove(seq)
            samples = self._fork(seq)
            tokens, _ = choose(logits[j].expand(len(samples), -1), samples)
            lps = self._logprobs(logits[j].expand(len(samples), -1), samples, tokens)
            for sample, token, lp in zip(samples, tokens, lps):
                self.running.append(sample)
                updates.append(self._append(sample, [token], [lp]))
                if sample.finish_reason is None:
                    started.append(sample)
                    started_h.append(h_last[j])
        if self.spec and started:
            self._first_drafts(started, torch.stack(started_h))
        return updates

    def _prefill_mtp(self, rows, h: torch.Tensor) -> None:
        """MTP latents for the chunk's positions, each from the main hidden state there and the next prompt
        token; the prompt's last position waits for the first sampled token (`_first_drafts`)."""
        keep = [(i, seq, s, min(s + n, len(seq.tokens) - 1) - s) for i, (seq, s, n) in enumerate(rows)]
        keep = [k for k in keep if k[3] > 0]
        for _, seq, s, m in keep:
            seq.complete = s + m
        if not keep:
            return
        T = max(m for *_, m in keep)
        batch = PagedBatch(self.pool, [seq.blocks for _, seq, _, _ in keep], [s for _, _, s, _ in keep],
                           [m for *_, m in keep])
        ids = torch.tensor([seq.tokens[s + 1:s + 1 + m] + [0] * (T - m) for _, seq, s, m in keep],
                           device=h.device)
        self.runner.mtp(h[[i for i, *_ in keep], :T].flatten(0, 1), ids, batch)

    def _first_drafts(self, seqs: list[Sequence], h_last: torch.Tensor) -> None:
        """MTP at each new sample's last prompt position, with its first token: the entry there and a draft."""
        batch = PagedBatch(self.pool, [s.blocks for s in seqs], [s.computed - 1 for s in seqs], [1] * len(seqs))
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], device=h_last.device)
        _, logits = self.runner.mtp(h_last, ids, batch)
        for s in seqs:
            s.complete = s.computed
            self._register(s)
        propose(logits, seqs)

    def _fork(self, seq: Sequence) -> list[Sequence]:
        """A finished prefill -> the request's n samples. Sample 0 is the prefill sequence itself; the others
        share its blocks before the fork block, copy that block, and continue in their spare blocks."""
        request = seq.request
        samples = [seq]
        first = self._fork_block(len(request.prompt))
        for index, spare in enumerate(request.spare, start=1):
            shared = seq.blocks[:first]
            self.pool.share(shared)
            if first < len(seq.blocks) and first * self.pool.block_size < len(request.prompt):
                self.pool.copy_block(seq.blocks[first], spare[0])
            child = self._sequence(request, index, list(seq.tokens), shared + spare)
            child.computed, child.complete, child.registered = seq.computed, seq.complete, seq.registered
            child.hasher = seq.hasher.copy() if seq.hasher is not None else None
            samples.append(child)
        request.spare = []
        request.sequences = samples
        return samples

    # ---- decode -------------------------------------------------------------------------------------------------
    def _decode(self) -> list[Update]:
        seqs = self.running
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], device=self.pool.kv.device)
        batch = PagedBatch(self.pool, [s.blocks for s in seqs], [s.computed for s in seqs], [1] * len(seqs))
        logits = self.runner.logits(self.runner.hidden(ids, batch))
        for s in seqs:
            s.computed += 1
            s.complete = s.computed
        tokens, _ = choose(logits, seqs)
        lps = self._logprobs(logits, seqs, tokens)
        return [self._append(s, [t], [lp]) for s, t, lp in zip(list(seqs), tokens, lps)]

    def _decode_speculative(self) -> list[Update]:
        """Feed [last token, draft] per sequence; the draft stands or falls by `verify`; then the MTP module
        runs over the same two positions and drafts again."""
        seqs = list(self.running)
        B, drafts = len(seqs), [s.draft for s in seqs]
        device = self.pool.kv.device
        ids = torch.tensor([[s.tokens[-1], s.draft] for s in seqs], device=device)
        batch = PagedBatch(self.pool, [s.blocks for s in seqs], [s.computed for s in seqs], [2] * B)
        h = self.runner.hidden(ids, batch)
        logits = self.runner.logits(h).view(B, 2, -1)
        accepted, first = verify(logits[:, 0], seqs, drafts)
        second, _ = choose(logits[:, 1], seqs, extra=drafts)
        new = [[d, t] if ok else [f] for ok, d, t, f in zip(accepted, drafts, second, first)]
        # MTP over both positions; after a rejection the second entry is stale and the next step rewrites it
        mtp_ids = torch.tensor([[tok[0], tok[-1]] for tok in new], device=device)
        _, mtp_logits = self.runner.mtp(h, mtp_ids, batch)
        lp_first = self._logprobs(logits[:, 0], seqs, [tok[0] for tok in new])
        lp_second = self._logprobs(logits[:, 1], seqs, [tok[-1] for tok in new])
        for s, ok in zip(seqs, accepted):
            s.computed += 1 + ok
            s.complete = s.computed
        self.stats.drafted += B
        self.stats.accepted += sum(accepted)
        updates = [self._append(s, tok, [a, b][:len(tok)]) for s, tok, a, b in zip(seqs, new, lp_first, lp_second)]
        going = [i for i, s in enumerate(seqs) if s.finish_reason is None]
        if going:
            rows = torch.tensor([2 * i + accepted[i] for i in going], device=device)
            propose(mtp_logits[rows], [seqs[i] for i in going])
        return updates

    def _logprobs(self, logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> list:
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        out = [None] * len(seqs)
        if want:
            k = max(seqs[i].params.logprobs for i in want)
            chosen = torch.tensor([tokens[i] for i in want], device=logits.device)
            picked, top = top_logprobs(logits[want], chosen, k)
            for j, i in enumerate(want):
                out[i] = (picked[j], top[j][:seqs[i].params.logprobs])
        return out

    # ---- bookkeeping --------------------------------------------------------------------------------------------
    def _append(self, seq: Sequence, tokens: list[int], logprobs: list) -> Update:
        """Add new tokens to a sequence, stopping at a stop token, a stop string, max_tokens or the context."""
        params, request = seq.params, seq.request
        new, text, reason, by_string = [], "", None, False
        for token, lp in zip(tokens, logprobs):
            seq.tokens.append(token)
            new.append(token)
            if lp is not None:
                seq.logprobs.append(lp)
            if seq.counts is not None:
                seq.counts[token] += 1
                seq.seen[token] = True
            if (token == self.eos_id and not params.ignore_eos) or token in params.stop_token_ids:
                reason = "stop"
            elif seq.detokenizer is not None:
                delta, by_string = seq.detokenizer.add([token])
                text += delta
                reason = "stop" if by_string else None
            if reason is None and len(seq.tokens) - len(request.prompt) >= request.max_tokens:
                reason = "length"
            if reason is not None:
                break
        self.stats.generated_tokens += len(new)
        if reason is not None:
            if seq.detokenizer is not None and not by_string:  # text held back for a stop string is final now
                text += seq.detokenizer.flush()
            self._finish(seq, reason)
        else:
            self._register(seq)
        return Update(request.id, seq.index, new, text, logprobs[:len(new)] if params.logprobs is not None else None,
                      reason, seq)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self._register(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        for queue in (self.running, self.prefilling):
            if seq in queue:
                queue.remove(seq)
        self._active -= 1
        request = seq.request
        if not request.spare and all(s.finish_reason is not None for s in request.sequences):
            self.requests.pop(request.id, None)

    def _register(self, seq: Sequence) -> None:
        """Offer the sequence's newly final full blocks to the prefix cache."""
        if seq.hasher is None:
            return
        bs, ahead = self.pool.block_size, self.prefix.lookahead
        while (seq.registered + 1) * bs <= seq.complete and (seq.registered + 1) * bs + ahead <= len(seq.tokens):
            key = self.prefix.key(seq.hasher, seq.tokens, seq.registered)
            self.prefix.register(seq.blocks[seq.registered], key)
            seq.registered += 1

    # ---- weights and the prefix cache ---------------------------------------------------------------------------
    def _version(self) -> int:
        """Changes whenever a weight is modified in place (an optimizer step, load_state_dict)."""
        return sum(t._version for t in itertools.chain(self.model.parameters(), self.model.buffers()))

    def _weights_changed(self) -> None:
        """Cached prefixes were computed by other weights: forget them all."""
        self.pool.forget_keys()
        for seq in self.prefilling + self.running:
            seq.hasher = None
        self.prefix.root = self._prefix_root()
        self._weights_version = self._version()

    def _prefix_root(self) -> bytes:
        if self.config.prefix_cache_dir is None:
            return self.layout.encode()
        return fingerprint(self.model, self.layout)
