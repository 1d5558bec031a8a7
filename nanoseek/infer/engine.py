"""The inference engine: continuous batching (Orca, Yu et al. 2022) over the paged latent cache, chunked prefill
(Sarathi, Agrawal et al. 2023), prefix caching and MTP self-speculative decoding.

Requests join and leave between steps. Each `step()`:
  1. admits waiting requests (scheduler.py: first come first served, while the cache has room for all of one);
  2. decodes every running sequence in one batched forward: one new token each, or with speculation a draft
     checked and one or two new tokens (speculative.py). The step is compiled per batch bucket (forward.py),
     and greedy choices are made inside it; a request with a grammar samples only what it allows (grammar.py);
  3. prefills at most `prefill_chunk` prompt tokens of admitted requests, so a long prompt delays the running
     sequences by one chunk per step rather than by its whole length. When a prompt is done its first token is
     sampled, and a request for n samples forks into n sequences sharing the prompt's cache blocks.
`step()` returns what each sequence gained (`Update`); `stream()` runs steps and yields them; `generate()`
runs a batch of prompts to the end. Everything that generates tokens in nanoseek (evaluation, GRPO rollouts,
rejection sampling, distillation traces, `generate`/`chat`, the server) runs through here.
"""
from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence as Seq
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoseek.checks import check_fields
from nanoseek.compiling import compile_enabled
from nanoseek.errors import InferenceError
from nanoseek.infer import speculative
from nanoseek.infer.forward import Forward, decode
from nanoseek.infer.grammar import Grammars
from nanoseek.infer.kv_cache import BlockPool
from nanoseek.infer.prefix_cache import PrefixCache, fingerprint
from nanoseek.infer.request import EngineStats, Request, Sequence, Update
from nanoseek.infer.sampler import SamplingParams, choose, top_logprobs
from nanoseek.infer.scheduler import Scheduler
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    cache_mb: float = 256.0                 # latent cache budget, MiB
    block_size: int = 16                    # tokens per cache block (and per prefix-cache entry)
    max_seqs: int = 64                      # sequences decoded together at most
    prefill_chunk: int = 512                # prompt tokens prefilled per step at most
    # Weights modified in place are noticed through their version counters, but fused optimizers (AdamW(fused=True))
    # do not bump them: an engine that lives across training steps should run without the prefix cache.
    prefix_cache: bool = True               # reuse the cached blocks of earlier prompts with the same prefix
    prefix_cache_dir: str | None = None     # keep cached prefixes on disk too, across engine restarts
    speculative: bool = False               # MTP self-speculative decoding (needs a model with an MTP module)
    compile: bool | None = None             # decode steps through torch.compile (forward.py); False: eager;
                                            # None: the process's (nanoseek.compiling, on by default)

    def __post_init__(self):
        check_fields(self, {"cache_mb": "> 0"}, default=">= 1", error=InferenceError)
        if self.prefix_cache_dir is not None and not self.prefix_cache:
            raise InferenceError(f"prefix_cache_dir={self.prefix_cache_dir!r} needs prefix_cache=True")


def cache_mb(model: Transformer, sequences: int, tokens: int) -> float:
    """The latent cache (MiB) that holds `sequences` sequences of `tokens` tokens each, so that none waits for
    room."""
    c = model.config
    per_token = sum(c.cache_widths()) * c.num_hidden_layers * model.embed_tokens.weight.element_size()
    # + a block of rounding each, and the pool's block 0, which holds no sequence
    return (sequences * (tokens + EngineConfig.block_size) + EngineConfig.block_size) * per_token / 2**20


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
        compile = compile_enabled() if config.compile is None else config.compile
        self.forward = Forward(model, self.pool, compile)
        self.grammars = Grammars(tokenizer, c.vocab_size)
        self.scheduler = Scheduler(self.pool, self.prefix, config.max_seqs, self.spec, c.vocab_size, tokenizer)
        self.stats = EngineStats()
        self.requests: dict[int, Request] = {}       # waiting or running
        self._next_id = 0

    @property
    def waiting(self):
        return self.scheduler.waiting

    @property
    def prefilling(self) -> list[Sequence]:
        return self.scheduler.prefilling

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running

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
        self.scheduler.cancel(request)
        self.requests.pop(request_id, None)

    @torch.inference_mode()
    def step(self) -> list[Update]:
        if self.waiting and self.prefix is not None and self._version() != self._weights_version:
            self.scheduler.forget_prefixes(self._prefix_root())
            self._weights_version = self._version()
        for request in self.scheduler.admit():
            self.stats.prompt_tokens += len(request.prompt)
            self.stats.cached_tokens += request.cached_tokens
        training = self.model.training
        if training:  # a policy between its training steps (GRPO): no routing statistics from these forwards
            self.model.eval()
        try:
            updates = []
            if self.running:
                updates += self._decode_speculative() if self.spec else self._decode()
            if self.prefilling:
                updates += self._prefill()
        finally:
            if training:
                self.model.train()
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

    # ---- requests -----------------------------------------------------------------------------------------------
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
        if params.grammar is not None and self.spec:
            raise InferenceError("a grammar (constrained decoding) does not run with speculative decoding: the "
                                 "draft would need a mask of its own")
        matcher = None if params.grammar is None else self.grammars.matcher(params.grammar)
        max_tokens = min(params.max_tokens, self.context - len(prompt))
        need = self.scheduler.blocks_needed(len(prompt), max_tokens, params.n, cached=0)
        if need > self.pool.capacity:
            raise InferenceError(f"a prompt of {len(prompt)} tokens with max_tokens={max_tokens} and n={params.n} "
                                 f"needs {need} cache blocks of {self.pool.block_size} tokens, but the cache holds "
                                 f"{self.pool.capacity} (cache_mb={self.config.cache_mb}); raise cache_mb or lower "
                                 "max_tokens")
        request = Request(self._next_id, prompt, params, max_tokens, matcher=matcher)
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
        seqs = [seq for seq, _, _ in rows]
        h = self.forward.prefill(seqs, [s for _, s, _ in rows], [n for _, _, n in rows])    # (B, T, hidden)
        for seq, s, n in rows:
            seq.computed = s + n
        if self.spec:
            speculative.prefill_entries(self.forward, rows, h)
        else:
            for seq in seqs:
                seq.complete = seq.computed
        for seq in seqs:
            self.scheduler.register(seq)
        done = [i for i, (seq, s, n) in enumerate(rows) if s + n == len(seq.tokens)]
        if not done:
            return []
        h_last = h[done, [rows[i][2] - 1 for i in done]]                                    # (done, hidden)
        logits = self.model.head(h_last).float()
        updates, started, started_h = [], [], []
        for j, i in enumerate(done):
            samples = self.scheduler.fork(rows[i][0])
            row = logits[j].expand(len(samples), -1)
            for sample in samples:
                if sample.request.matcher is not None:
                    sample.matcher = sample.request.matcher.deep_copy()
            masks = self.grammars.masks(samples)
            tokens, _ = choose(row if masks is None else self.grammars.apply(row, masks), samples)
            lps = self._logprobs(logits[j].expand(len(samples), -1), samples, tokens)
            for sample, token, lp in zip(samples, tokens, lps):
                updates.append(self._append(sample, [token], [lp]))
                if sample.finish_reason is None:
                    started.append(sample)
                    started_h.append(h_last[j])
        if self.spec and started:
            speculative.first_drafts(self.forward, started, torch.stack(started_h))
            for s in started:
                s.complete = s.computed
                self.scheduler.register(s)
        return updates

    # ---- decode -------------------------------------------------------------------------------------------------
    def _decode(self) -> list[Update]:
        seqs = list(self.running)
        logits, best = self.forward.decode(decode, seqs, 1, [[s.tokens[-1]] for s in seqs])
        masks = self.grammars.masks(seqs)  # while a GPU still runs the forward (grammar.py)
        logits = logits[:, 0]
        for s in seqs:
            s.computed += 1
            s.complete = s.computed
        if masks is not None:
            tokens, _ = choose(self.grammars.apply(logits, masks), seqs)
        elif all(s.params.greedy and not s.params.penalized for s in seqs):
            tokens = best[:, 0].tolist()  # chosen inside the step
        else:
            tokens, _ = choose(logits, seqs)
        lps = self._logprobs(logits, seqs, tokens)
        return [self._append(s, [t], [lp]) for s, t, lp in zip(seqs, tokens, lps)]

    def _decode_speculative(self) -> list[Update]:
        seqs = list(self.running)
        new, logits = speculative.decode(self.forward, seqs)
        lp_first = self._logprobs(logits[:, 0], seqs, [tok[0] for tok in new])
        lp_second = self._logprobs(logits[:, 1], seqs, [tok[-1] for tok in new])
        for s, tok in zip(seqs, new):
            s.computed += len(tok)
            s.complete = s.computed
        self.stats.drafted += len(seqs)
        self.stats.accepted += sum(len(tok) == 2 for tok in new)
        return [self._append(s, tok, [a, b][:len(tok)]) for s, tok, a, b in zip(seqs, new, lp_first, lp_second)]

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
            self.grammars.advance(seq, token)
            if (token == self.eos_id and not params.ignore_eos) or token in params.stop_token_ids:
                reason = "stop"
            elif seq.detokenizer is not None:
                delta, by_string = seq.detokenizer.add([token])
                text += delta
                reason = "stop" if by_string else None
            if reason is None and seq.matcher is not None and seq.matcher.is_stopped():
                reason = "stop"   # the grammar is complete: nothing may follow but end-of-sequence
            if reason is None and len(seq.tokens) - len(request.prompt) >= request.max_tokens:
                reason = "length"
            if reason is not None:
                break
        self.stats.generated_tokens += len(new)
        if reason is not None:
            if seq.detokenizer is not None and not by_string:  # text held back for a stop string is final now
                text += seq.detokenizer.flush()
            if self.scheduler.finish(seq, reason):
                self.requests.pop(request.id, None)
        else:
            self.scheduler.register(seq)
        return Update(request.id, seq.index, new, text, logprobs[:len(new)] if params.logprobs is not None else None,
                      reason, seq)

    # ---- weights and the prefix cache ---------------------------------------------------------------------------
    def _version(self) -> int:
        """Changes whenever a weight is modified in place (an optimizer step, load_state_dict)."""
        return sum(t._version for t in itertools.chain(self.model.parameters(), self.model.buffers()))

    def _prefix_root(self) -> bytes:
        if self.config.prefix_cache_dir is None:
            return self.layout.encode()
        return fingerprint(self.model, self.layout)
