"""OpenAI / DeepSeek request bodies -> prompt token ids and sampling parameters. Every field is checked here, and
a bad one is a 400 that names it (OpenAI's `param`); a field the server does not know is refused, not ignored."""
from __future__ import annotations

import math
from dataclasses import dataclass

from nanoseek.errors import ServeError, TokenizerError
from nanoseek.infer import SamplingParams
from nanoseek.serve.config import ServeConfig
from nanoseek.tokenizer import THINK, Tokenizer, chat_ids

MAX_STOP = 16            # stop strings per request (DeepSeek's limit)
MAX_TOP_LOGPROBS = 20    # OpenAI's limit
SAMPLING_FIELDS = {"model", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens", "stop", "seed",
                   "presence_penalty", "frequency_penalty", "logprobs", "user"}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "top_logprobs", "max_completion_tokens"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Generation:
    """What a request asks the engine for, and how to answer it."""
    prompt: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool      # streaming: a last chunk with the usage
    prompt_text: str         # logged with --log-prompts, never otherwise


def parse_chat(body: dict, tokenizer: Tokenizer, config: ServeConfig, max_n: int, context: int) -> Generation:
    _check_fields(body, CHAT_FIELDS)
    _check_model(body, config)
    messages = _messages(body.get("messages"))
    try:
        prompt, _ = chat_ids(tokenizer, messages, add_generation_prompt=True)
    except TokenizerError as e:
        raise _invalid("messages", str(e)) from None
    # R1's usage advice: begin every reply with "<think>\n" (reasoning.py)
    prompt += tokenizer.encode(THINK + "\n")
    _check_length("messages", prompt, context)
    logprobs = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise _invalid("top_logprobs", "top_logprobs needs logprobs: true")
    max_tokens = _integer(body, "max_completion_tokens", None, 1, None)
    params = _sampling(body, config, max_n, (top or 0) if logprobs else None, max_tokens)
    return _generation(body, prompt, params, tokenizer.decode(prompt))


def parse_completion(body: dict, tokenizer: Tokenizer, config: ServeConfig, max_n: int, context: int) -> Generation:
    _check_fields(body, COMPLETION_FIELDS)
    _check_model(body, config)
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                     and 0 <= t < tokenizer.vocab_size for t in prompt):
        ids = list(prompt)
    else:
        raise _invalid("prompt", f"expected a non-empty string or a list of token ids in [0, {tokenizer.vocab_size}), "
                                 f"got {_short(prompt)}")
    _check_length("prompt", ids, context)
    params = _sampling(body, config, max_n, _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS), None)
    return _generation(body, ids, params, prompt if isinstance(prompt, str) else tokenizer.decode(ids))


def _generation(body: dict, prompt: list[int], params: SamplingParams, text: str) -> Generation:
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _invalid("stream_options", "stream_options is only allowed with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _invalid("stream_options", f"expected {{\"include_usage\": bool}}, got {_short(options)}")
    include_usage = _boolean(options or {}, "include_usage", False, name="stream_options.include_usage")
    return Generation(prompt, params, stream, include_usage, text)


def _sampling(body: dict, config: ServeConfig, max_n: int, logprobs: int | None,
              max_completion_tokens: int | None) -> SamplingParams:
    max_tokens = _integer(body, "max_tokens", None, 1, None)
    return SamplingParams(
        max_tokens=max_completion_tokens or max_tokens or config.default_max_tokens,
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0, 1, open_low=True),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2, 2),
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed", None, 0, 2**63 - 1),
        n=_integer(body, "n", 1, 1, max_n),
        logprobs=logprobs,
    )


def _check_length(param: str, prompt: list[int], context: int) -> None:
    if len(prompt) >= context:
        raise _invalid(param, f"the prompt is {len(prompt)} tokens, but the model's context is {context} tokens, "
                              "and the reply needs at least one", code="context_length_exceeded")


def _check_fields(body: dict, known: set[str]) -> None:
    for name in body:
        if name not in known:
            raise _invalid(name, f"unrecognized request argument {name!r}; this server takes {sorted(known)}",
                           code="unknown_parameter")


def _check_model(body: dict, config: ServeConfig) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", f"expected the model's name (a string), got {_short(model)}")
    check_model(model, config)


def check_model(model: str, config: ServeConfig) -> None:
    """404 unless `model` is the one this server serves."""
    if model != config.model_name:
        raise ServeError(f"the model {_short(model)} does not exist; this server serves {config.model_name!r}", 404,
                         param="model", code="model_not_found")


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", f"expected a non-empty list of messages, got {_short(messages)}")
    out = []
    for i, m in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(name, f"expected an object with role and content, got {_short(m)}")
        role = ROLES.get(m.get("role")) if isinstance(m.get("role"), str) else None
        if role is None:
            raise _invalid(f"{name}.role", f"expected one of {sorted(ROLES)}, got {_short(m.get('role'))}")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        elif isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                               and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        elif not isinstance(content, str):
            raise _invalid(f"{name}.content", f"expected a string or a list of text parts, got {_short(content)}")
        # reasoning_content of earlier replies is dropped: DeepSeek does not feed it back
        out.append({"role": role, "content": content})
    return out


def _stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP or \
            any(not isinstance(s, str) or not s for s in stops):
        raise _invalid("stop", f"expected a non-empty string or a list of 1 to {MAX_STOP} of them, got {_short(stop)}")
    return tuple(stops)


def _number(body: dict, name: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(name, f"expected a number, got {_short(value)}")
    if value > high or (value <= low if open_low else value < low):
        raise _invalid(name, f"expected a number in {'(' if open_low else '['}{low}, {high}], got {value!r}")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise _invalid(name, f"expected {expected}, got {_short(value)}")
    return value


def _boolean(body: dict, key: str, default: bool, name: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(name or key, f"expected true or false, got {_short(value)}")
    return value


def _invalid(param: str, message: str, code: str = "invalid_value") -> ServeError:
    return ServeError(f"Invalid '{param}': {message}", 400, param=param, code=code)


def _short(value) -> str:
    """A value for an error message, cut short: a message may echo what the client sent, but not all of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
