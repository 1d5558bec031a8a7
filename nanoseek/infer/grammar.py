"""Constrained decoding: only tokens a grammar allows are sampled (llguidance, the grammar engine of guidance, which
vLLM, SGLang and llama.cpp use too; nanoseek writes no parser of its own).

A request's `SamplingParams.grammar` is an llguidance grammar, made by `json_schema_grammar` (JSON output, strict
tool arguments) or `lark_grammar`. Each of its sequences holds a matcher: before a token is sampled the matcher gives
a bitmask of the tokens that may come next, the logits of the others become -inf, and the chosen token advances the
matcher. When the grammar is complete the reply stops there (the engine does not sample the end-of-sequence, the
only token the grammar would still allow).

The masks of a decode step are computed (more than a few by llguidance's executor, over the sequences in parallel)
after the step's forward is launched and before its logits are read: on a GPU the forward runs asynchronously, so the
masks cost the step nothing unless they take longer than the forward. On a CPU the forward is done by then, and the
masks cost what they cost: microseconds each for a JSON schema (benchmarks/constrained_decoding.py). A worker thread
does not help there: the compiled CPU step holds the GIL, so the thread waited for the forward anyway, and handing
the work over cost more than the work. Rows without a grammar are never masked, and a batch with no grammar at all pays nothing.
"""
from __future__ import annotations

import numpy as np
import torch
from llguidance import LLExecutor, LLMatcher, LLTokenizer

from nanoseek.errors import InferenceError
from nanoseek.tokenizer import Tokenizer

# JSON written compactly: a model cannot pad its reply with whitespace without end
JSON_OPTIONS = {"whitespace_flexible": False}
PARALLEL_ROWS = 8   # more constrained rows than this: their masks are computed on the executor's threads


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

    def masks(self, seqs) -> torch.Tensor | None:
        """A bitmask (len(seqs), ceil(V / 32)) int32 of the tokens each sequence may sample next: bit t % 32 of word
        t // 32 (every bit set on rows without a grammar); None when no row has one."""
        rows = [(s.matcher, i) for i, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return None
        bitmask = torch.full((len(seqs), (self.vocab_size + 31) // 32), -1, dtype=torch.int32)
        width = bitmask.shape[1] * 4
        if len(rows) > PARALLEL_ROWS:
            self._executor.unsafe_compute_mask_ptr(rows, bitmask.data_ptr(), width, len(seqs))
        else:   # a few masks take less time than waking the executor's threads
            for matcher, i in rows:
                matcher.unsafe_compute_mask_ptr(bitmask[i].data_ptr(), width)
        return bitmask

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
        """logits (B, V) with each token its row's bitmask forbids at -inf."""
        # the words' bytes in memory order (little-endian), each byte's bits lowest first: bit t of the row is token t
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, count=logits.shape[-1], bitorder="little")
        forbidden = torch.from_numpy(bits).view(torch.bool).logical_not_().to(logits.device)
        return logits.masked_fill(forbidden, float("-inf"))

    def advance(self, seq, token: int) -> None:
        """The sequence's matcher takes its new token."""
        if seq.matcher is not None and not seq.matcher.consume_token(token):
            raise InferenceError(f"token {token} breaks the grammar of request {seq.request.id}: "
                                 f"{seq.matcher.get_error()}")
