"""Sampling: from a row of logits to the next token.

The order is that of transformers' and vLLM's logits processors: penalties on the raw logits, then temperature,
then top-k, top-p (nucleus, Holtzman et al. 2019) and min-p (Nguyen et al. 2024) on the tempered distribution;
temperature 0 is greedy. Penalties follow OpenAI's definition for presence and frequency,
    logit[j] -= frequency_penalty * c[j] + presence_penalty * (c[j] > 0),   c[j] = times j was generated so far,
and CTRL's (Keskar et al. 2019, §4.1) for the repetition penalty r over every token of prompt and output:
a positive logit is divided by r, a negative one multiplied by it. Every function works on a batch of rows with
one parameter per row, so one call serves a whole decode step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoseek.checks import check_fields
from nanoseek.errors import InferenceError


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; the defaults are OpenAI's (temperature 1, nothing truncated or penalized)."""
    max_tokens: int = 256                      # new tokens at most (fewer when the context fills up)
    temperature: float = 1.0                   # 0: greedy
    top_k: int = 0                             # keep the k most likely tokens; 0: all
    top_p: float = 1.0                         # keep the smallest set of tokens whose probability reaches top_p
    min_p: float = 0.0                         # drop tokens less likely than min_p times the most likely one
    presence_penalty: float = 0.0              # OpenAI semantics, in [-2, 2]
    frequency_penalty: float = 0.0             # OpenAI semantics, in [-2, 2]
    repetition_penalty: float = 1.0            # CTRL's, over prompt and output; 1: off
    stop: tuple[str, ...] = ()                 # stop strings (need the engine's tokenizer); not part of the text
    stop_token_ids: tuple[int, ...] = ()       # stop tokens, besides end-of-sequence
    ignore_eos: bool = False                   # keep going past end-of-sequence
    seed: int | None = None                    # same seed, same output; sample i of n uses seed + i
    n: int = 1                                 # samples of one prompt, sharing its prefill
    logprobs: int | None = None                # None: none; k: the chosen token's log-probability and the top k
    grammar: str | None = None                 # an llguidance grammar (grammar.py): only text it accepts is sampled

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        check_fields(self, {"max_tokens": ">= 1", "n": ">= 1", "top_p": "in (0, 1]", "min_p": "in [0, 1]",
                            "presence_penalty": "in [-2, 2]", "frequency_penalty": "in [-2, 2]",
                            "repetition_penalty": "> 0", "seed": None}, default=">= 0", error=InferenceError)
        if not all(self.stop):
            raise InferenceError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1)


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, seen: torch.Tensor, presence: torch.Tensor,
                    frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """logits (B, V); counts (B, V): how often each token was generated; seen (B, V) bool: in prompt or output;
    presence, frequency, repetition (B, 1). Returns new logits."""
    logits = torch.where(seen, torch.where(logits > 0, logits / repetition, logits * repetition), logits)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def top_k_mask(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep each row's k (B, 1) largest logits (ties at the k-th value stay); k = 0 keeps the row whole."""
    V = logits.shape[-1]
    k = torch.where(k > 0, k.clamp(max=V), V)
    kth = logits.sort(dim=-1, descending=True).values.gather(-1, k - 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_mask(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Keep the most likely tokens of each row until their probability reaches p (B, 1): a token stays when the
    probability of the tokens ranked above it is still below p, so the most likely one always stays."""
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
    above = probs.cumsum(dim=-1) - probs
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, above >= p)
    return logits.masked_fill(drop, float("-inf"))


def min_p_mask(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop the tokens whose probability is below min_p (B, 1) times the row's largest probability."""
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def probabilities(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor) -> torch.Tensor:
    """The distribution to sample from: (B, V) logits and (B, 1) parameters, temperature > 0."""
    logits = logits.float() / temperature
    if bool((top_k > 0).any()):
        logits = top_k_mask(logits, top_k)
    if bool((top_p < 1).any()):
        logits = top_p_mask(logits, top_p)
    if bool((min_p > 0).any()):
        logits = min_p_mask(logits, min_p)
    return logits.softmax(dim=-1)


# ---- a decode step's rows ----------------------------------------------------------------------------------------
# The engine passes its sequences as rows: each has `.params` (SamplingParams), `.generator` (torch.Generator) and,
# when penalized, `.counts` (V,) float (times each token was generated) and `.seen` (V,) bool (in prompt or output).

def penalize(logits: torch.Tensor, rows, extra: list[int] | None = None) -> torch.Tensor:
    """Each row's penalties on logits (B, V); rows without penalties pass through. `extra` (one token per row)
    counts as generated already: the draft token in front of the second position speculative decoding checks."""
    idx = [i for i, row in enumerate(rows) if row.params.penalized]
    if not idx:
        return logits
    counts = torch.stack([rows[i].counts for i in idx])
    seen = torch.stack([rows[i].seen for i in idx])
    if extra is not None:
        token = torch.tensor([[extra[i]] for i in idx], device=logits.device)
        counts = counts.scatter_add(1, token, torch.ones(token.shape, dtype=counts.dtype, device=logits.device))
        seen = seen.scatter(1, token, True)
    column = _columns([rows[i].params for i in idx], logits)
    out = logits.clone()
    out[idx] = apply_penalties(logits[idx], counts, seen, column("presence_penalty"), column("frequency_penalty"),
                               column("repetition_penalty"))
    return out


def distributions(logits: torch.Tensor, rows, extra: list[int] | None = None) -> tuple[list[int], torch.Tensor | None]:
    """Penalized logits (B, V) -> each row's most likely token, and when any row samples, the distributions to
    sample from (B, V) (rows of greedy requests in it are not meaningful)."""
    logits = penalize(logits, rows, extra)
    argmax = logits.argmax(dim=-1).tolist()
    if all(row.params.greedy for row in rows):
        return argmax, None
    column = _columns([row.params for row in rows], logits)
    temperature = torch.where(column("temperature") > 0, column("temperature"), 1.0)
    probs = probabilities(logits, temperature, column("top_k").long(), column("top_p"), column("min_p"))
    return argmax, probs


def choose(logits: torch.Tensor, rows, extra: list[int] | None = None) -> tuple[list[int], torch.Tensor | None]:
    """The next token of each row: greedy rows take the argmax, the others draw with their own generator.
    Also returns the distributions drawn from (see `distributions`)."""
    tokens, probs = distributions(logits, rows, extra)
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    if sampled:
        # inverse CDF: a uniform from each row's own generator, found in its cumulative distribution, all rows in one
        # search (one torch.multinomial per row cost ~90 us each, most of a 64-row decode step's sampling)
        cdf = probs[sampled].cumsum(dim=-1)
        u = torch.stack([torch.rand((), generator=rows[i].generator, device=cdf.device) for i in sampled])
        drawn = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        for i, token in zip(sampled, drawn.clamp(max=cdf.shape[-1] - 1).tolist()):
            tokens[i] = token
    return tokens, probs


def _columns(params: list[SamplingParams], like: torch.Tensor):
    def column(name: str) -> torch.Tensor:
        return torch.tensor([[float(getattr(p, name))] for p in params], dtype=torch.float32, device=like.device)
    return column


def top_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Log-probabilities under the model's own distribution (before penalties, temperature and truncation):
    logits (B, V), chosen (B,) -> each chosen token's log-probability and the k most likely (token, logprob)."""
    logp = logits.float().log_softmax(dim=-1)
    picked = logp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
    if k == 0:
        return picked, [[] for _ in picked]
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return picked, [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
