"""Constrained decoding: only tokens a grammar allows are sampled (llguidance, the grammar engine of guidance, which
vLLM, SGLang and llama.cpp use too; nanoseek writes no parser of its own).

A request's `SamplingParams.grammar` is an llguidance grammar, made by `json_schema_grammar` (JSON output, strict
tool arguments) or `lark_grammar`. Each of its sequences holds a matcher: before a token is sampled the matcher gives
a bitmask of the tokens that may come next, the logits of the others become -inf, and the chosen token advances the
matcher. When the grammar is complete the mask allows end-of-sequence alone, so a reply stops exactly there.

The masks of a decode step are computed on a worker thread (llguidance's executor, which works over the sequences in
parallel without holding the GIL) while the step's forward runs, so they are off the step's critical path unless
they take longer than the forward. Rows without a grammar are never masked, and a batch with no grammar at all
pays nothing.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from llguidance import LLExecutor, LLMatcher, LLTokenizer

from nanoseek.errors import InferenceError
from nanoseek.tokenizer import Tokenizer

# JSON written compactly: a model cannot pad its reply with whitespace without end
JSON_OPTIONS = {"whitespace_flexible": False}
BITS = torch.arange(32, dtype=torch.int32)


def json_schema_grammar(schema: dict) -> str:
    """The grammar of JSON text valid under `schema` (a JSON Schema object); InferenceError names what is wrong."""
    if not isinstance(schema, dict):
        raise InferenceError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise InferenceError(f"not a usable JSON schema: {e}") from None
    return check_grammar(grammar)


def lark_grammar(lark: str) -> str:
    """The grammar of a Lark text (llguidance's dialect: `%json {schema}` embeds a JSON schema)."""
    return check_grammar(LLMatcher.grammar_from_lark(lark))


def check_grammar(grammar: str) -> str:
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise InferenceError(f"not a usable grammar: {error.splitlines()[0]}")
    return grammar


class Grammars:
    """The engine's matchers: made from the engine's tokenizer on the first constrained request."""

    def __init__(self, tokenizer: Tokenizer | None, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._ll: LLTokenizer | None = None
        self._executor: LLExecutor | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="nanoseek-grammar")

    def matcher(self, grammar: str) -> LLMatcher:
        """A fresh matcher at the start of `grammar`."""
        if self.tokenizer is None:
            raise InferenceError("a grammar needs the engine's tokenizer; this engine has none")
        if self._ll is None:
            self._ll = LLTokenizer(self.tokenizer.json, n_vocab=self.vocab_size, eos_token=self.tokenizer.eos_id)
            self._executor = LLExecutor()
        matcher = LLMatcher(self._ll, grammar, log_level=0)
        if matcher.is_error():
            raise InferenceError(f"not a usable grammar: {matcher.get_error()}")
        return matcher

    def start(self, seqs) -> Future | None:
        """Begin computing the masks of the constrained sequences among `seqs` on the worker thread; None when
        none is constrained. `apply(logits, future.result())` uses them."""
        rows = [(s.matcher, i) for i, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return None
        return self._thread.submit(self._masks, rows, len(seqs))

    def masks(self, seqs) -> torch.Tensor | None:
        """The same, computed here and now (a prefill's first token)."""
        job = self.start(seqs)
        return None if job is None else job.result()

    def _masks(self, rows: list[tuple[LLMatcher, int]], batch: int) -> tuple[list[int], torch.Tensor]:
        bitmask = torch.zeros(batch, (self.vocab_size + 31) // 32, dtype=torch.int32)
        self._executor.unsafe_compute_mask_ptr(rows, bitmask.data_ptr(), bitmask.shape[1] * 4, batch)
        return [i for _, i in rows], bitmask

    def apply(self, logits: torch.Tensor, masks: tuple[list[int], torch.Tensor]) -> torch.Tensor:
        """logits (B, V) with the tokens each constrained row's grammar forbids at -inf; other rows unchanged."""
        rows, bitmask = masks
        bits = bitmask[rows].unsqueeze(-1) >> BITS & 1                  # (rows, V / 32, 32)
        allowed = bits.flatten(1)[:, :logits.shape[-1]].bool().to(logits.device)
        out = logits.clone()
        out[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
        return out

    def advance(self, seq, token: int) -> None:
        """The sequence's matcher takes its new token."""
        if seq.matcher is not None and not seq.matcher.consume_token(token):
            raise InferenceError(f"token {token} breaks the grammar of request {seq.request.id}: "
                                 f"{seq.matcher.get_error()}")
