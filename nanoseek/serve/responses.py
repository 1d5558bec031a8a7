"""Response bodies in OpenAI's shapes with DeepSeek's additions: `usage.prompt_cache_hit_tokens` /
`prompt_cache_miss_tokens`, `completion_tokens_details.reasoning_tokens`, and the response's price in `usage.cost`."""
from __future__ import annotations

import json
import secrets
import time

from nanoseek.serve.pricing import Prices
from nanoseek.tokenizer import Tokenizer


def response_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, cached_tokens: int, completion_tokens: int, reasoning_tokens: int | None,
          prices: Prices, period: str = "peak") -> dict:
    out = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_cache_hit_tokens": cached_tokens,
        "prompt_cache_miss_tokens": prompt_tokens - cached_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "cost": prices.cost(cached_tokens, prompt_tokens - cached_tokens, completion_tokens, period),
    }
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return out


def envelope(object_: str, id_: str, created: int, model: str, choices: list[dict], usage_: dict | None = None,
             with_usage: bool = False) -> dict:
    """A response or a streamed chunk. `with_usage` adds the key even when empty: a chunk stream with
    include_usage carries `"usage": null` on every chunk but the last."""
    out = {"id": id_, "object": object_, "created": created, "model": model, "choices": choices}
    if usage_ is not None or with_usage:
        out["usage"] = usage_
    return out


def now() -> int:
    return int(time.time())


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _token(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int] | None]:
    """A token's text and UTF-8 bytes; a token that ends inside a character has no text of its own, so no bytes."""
    text = tokenizer.decode([token_id])
    return text, None if "\ufffd" in text else list(text.encode())


def chat_logprobs(tokenizer: Tokenizer, token_ids: list[int], logprobs: list) -> list[dict]:
    """OpenAI's `logprobs.content`: per token its log-probability and the most likely alternatives."""
    out = []
    for token_id, (logprob, top) in zip(token_ids, logprobs):
        text, raw = _token(tokenizer, token_id)
        alternatives = []
        for alt, alt_logprob in top:
            alt_text, alt_raw = _token(tokenizer, alt)
            alternatives.append({"token": alt_text, "logprob": alt_logprob, "bytes": alt_raw})
        out.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives})
    return out


def completion_logprobs(tokenizer: Tokenizer, token_ids: list[int], logprobs: list, offset: int) -> dict:
    """The legacy completions' `logprobs`: parallel lists, text offsets counted from `offset`."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for token_id, (logprob, top) in zip(token_ids, logprobs):
        text = tokenizer.decode([token_id])
        tokens.append(text)
        token_logprobs.append(logprob)
        top_logprobs.append({tokenizer.decode([alt]): alt_logprob for alt, alt_logprob in top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}
