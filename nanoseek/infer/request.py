"""The engine's state per request: the request, its n samples (sequences: tokens and the cache blocks holding
them), what a step hands out per sequence (`Update`), and the engine's counters."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nanoseek.infer.detokenizer import Detokenizer
from nanoseek.infer.sampler import SamplingParams


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    max_tokens: int                          # params.max_tokens, less what does not fit the context
    sequences: list[Sequence] = field(default_factory=list)
    cached_tokens: int = 0                   # prompt tokens served by the prefix cache
    spare: list[list[int]] = field(default_factory=list)  # cache blocks of samples 2..n, until they fork
    matcher: object = None                   # constrained decoding: the grammar's matcher at its start (grammar.py)


@dataclass(eq=False)
class Sequence:
    """One sample of a request: its tokens (prompt + output) and the cache blocks that hold them."""
    request: Request
    index: int
    tokens: list[int]
    blocks: list[int]
    generator: torch.Generator
    computed: int = 0                        # leading tokens whose main-model latents are cached
    complete: int = 0                        # leading positions whose every cached layer is final
    registered: int = 0                      # leading blocks already offered to the prefix cache
    hasher: object = None                    # prefix-cache hash state after those blocks
    counts: torch.Tensor | None = None       # penalties: times each token was generated
    seen: torch.Tensor | None = None         # penalties: tokens in prompt or output
    draft: int | None = None                 # speculation: the MTP's guess of the token after the last one
    draft_probs: torch.Tensor | None = None
    detokenizer: Detokenizer | None = None
    matcher: object = None                   # constrained decoding: where this sample is in its grammar
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None         # "stop", "length" or "cancelled"

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[len(self.request.prompt):]

    @property
    def text(self) -> str:
        return self.detokenizer.text if self.detokenizer else ""


@dataclass
class Update:
    """What one sequence gained in one step."""
    request_id: int
    index: int                               # which of the request's n samples
    token_ids: list[int]
    text: str                                # new final text ("" without a tokenizer)
    logprobs: list | None                    # per new token: (logprob, [(token, logprob), ...top-k])
    finish_reason: str | None
    sequence: Sequence


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0
