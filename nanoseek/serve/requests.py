"""OpenAI / DeepSeek request bodies -> prompt token ids and sampling parameters. Every field is checked here, and
a bad one is a 400 that names it (OpenAI's `param`); a field the server does not know is refused, not ignored."""
from __future__ import annotations

import math
from dataclasses import dataclass

from nanoseek.errors import ServeError, TokenizerError
from nanoseek.infer import SamplingParams
from nanoseek.serve.config import ServeConfig
from nanoseek.serve.invalid import invalid, short
from nanoseek.serve.json_output import reply_grammar, response_format
from nanoseek.serve.reasoning import THINKING_MODELS, prompt_end, thinking_mode
from nanoseek.serve.tools import parse_tools, tool_calls
from nanoseek.tokenizer import FIM_BEGIN, FIM_END, FIM_HOLE, Tokenizer, chat_ids

MAX_STOP = 16            # stop strings per request (DeepSeek's limit)
MAX_TOP_LOGPROBS = 20    # OpenAI's limit
SAMPLING_FIELDS = {"model", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens", "stop", "seed",
                   "presence_penalty", "frequency_penalty", "logprobs", "user"}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "top_logprobs", "max_completion_tokens", "thinking", "reasoning_effort",
                                  "response_format", "tools", "tool_choice"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt", "suffix"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


@dataclass(frozen=True)
class Generation:
    """What a request asks the engine for, and how to answer it."""
    prompt: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool      # streaming: a last chunk with the usage
    prompt_text: str         # logged with --log-prompts, never otherwise
    thinking: bool = False   # chat: the reply begins inside <think> (reasoning.py)
    tools: bool = False      # chat: the reply may hold tool calls (tools.py)


def parse_chat(body: dict, tokenizer: Tokenizer, config: ServeConfig, max_n: int, context: int,
               beta: bool = False) -> Generation:
    """A chat request; `beta` (the /beta base URL) allows prefix completion."""
    _check_fields(body, CHAT_FIELDS)
    _check_model(body, config)
    thinking = thinking_mode(body, body["model"])
    messages = _messages(body.get("messages"), beta)
    prefix = messages.pop() if messages[-1].get("prefix") else None
    _check_round_trip(messages, thinking)
    tools = parse_tools(body, tokenizer)
    schema = response_format(body)
    try:
        prompt, _ = chat_ids(tokenizer, messages, add_generation_prompt=True,
                             tools=tools.definitions if tools is not None else ())
    except TokenizerError as e:
        raise invalid("messages", str(e)) from None
    if prefix is not None:
        # DeepSeek's chat prefix completion: the reply continues the final assistant message; its reasoning_content,
        # when given, is a reasoning prefix, and the reply goes on thinking
        thinking = bool(prefix.get("reasoning_content"))
        prompt += prompt_end(tokenizer, thinking)
        prompt += tokenizer.encode_text(prefix["reasoning_content"] if thinking else prefix["content"])
    else:
        prompt += prompt_end(tokenizer, thinking)
    _check_length("messages", prompt, context)
    logprobs = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
    max_tokens = _integer(body, "max_completion_tokens", None, 1, None)
    grammar = reply_grammar(tokenizer, thinking, schema, tools)
    params = _sampling(body, config, max_n, (top or 0) if logprobs else None, max_tokens, grammar)
    calls = tools is not None and tools.choice != "none"
    return _generation(body, prompt, params, tokenizer.decode(prompt), thinking, calls)


def parse_completion(body: dict, tokenizer: Tokenizer, config: ServeConfig, max_n: int, context: int,
                     beta: bool = False) -> Generation:
    """A completion request; `beta` (the /beta base URL) allows FIM: a `suffix` after the text to write."""
    _check_fields(body, COMPLETION_FIELDS)
    _check_model(body, config)
    prompt, suffix = body.get("prompt"), body.get("suffix")
    if suffix is not None and not beta:
        raise invalid("suffix", "FIM completion (prompt + suffix) is a beta feature: use the base URL /beta",
                      code="beta_only")
    if suffix is not None and not isinstance(suffix, str):
        raise invalid("suffix", f"expected a string, got {short(suffix)}")
    if suffix is not None:
        if not isinstance(prompt, str):
            raise invalid("prompt", f"FIM completion takes the prompt as a string, got {short(prompt)}")
        ids = _fim(tokenizer, prompt, suffix)
    elif isinstance(prompt, str) and prompt:
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                     and 0 <= t < tokenizer.vocab_size for t in prompt):
        ids = list(prompt)
    else:
        raise invalid("prompt", f"expected a non-empty string or a list of token ids in [0, {tokenizer.vocab_size}), "
                                 f"got {short(prompt)}")
    _check_length("prompt", ids, context)
    params = _sampling(body, config, max_n, _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS), None)
    return _generation(body, ids, params, prompt if isinstance(prompt, str) else tokenizer.decode(ids))


def _fim(tokenizer: Tokenizer, prefix: str, suffix: str) -> list[int]:
    """V3 §4.1's Prefix-Suffix-Middle layout, as pretraining wrote it (data/fim.py); the reply is the middle."""
    tokens = [tokenizer.special_id(t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END)]
    if None in tokens:
        raise invalid("suffix", "this model's tokenizer has no FIM tokens, so it cannot fill in a middle")
    begin, hole, end = tokens
    return [begin, *tokenizer.encode_text(prefix), hole, *tokenizer.encode_text(suffix), end]


def _check_round_trip(messages: list[dict], thinking: bool) -> None:
    """DeepSeek's rule for tool calls in thinking mode: the reasoning of each tool call in the turn still running
    (after the last user message) comes back with it, as the model needs it to go on."""
    if not thinking:
        return
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    for i, m in enumerate(messages[last_user + 1:], start=last_user + 1):
        if m["role"] == "assistant" and m.get("tool_calls") and not m.get("reasoning_content"):
            raise invalid(f"messages[{i}].reasoning_content",
                          "in thinking mode an assistant message with tool calls must bring back its reasoning_content",
                          code="missing_reasoning_content")


def _generation(body: dict, prompt: list[int], params: SamplingParams, text: str, thinking: bool = False,
                tools: bool = False) -> Generation:
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise invalid("stream_options", f"expected {{\"include_usage\": bool}}, got {short(options)}")
    include_usage = _boolean(options or {}, "include_usage", False, name="stream_options.include_usage")
    return Generation(prompt, params, stream, include_usage, text, thinking, tools)


def _sampling(body: dict, config: ServeConfig, max_n: int, logprobs: int | None,
              max_completion_tokens: int | None, grammar: str | None = None) -> SamplingParams:
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
        grammar=grammar,
    )


def _check_length(param: str, prompt: list[int], context: int) -> None:
    if len(prompt) >= context:
        raise invalid(param, f"the prompt is {len(prompt)} tokens, but the model's context is {context} tokens, "
                              "and the reply needs at least one", code="context_length_exceeded")


def _check_fields(body: dict, known: set[str]) -> None:
    for name in body:
        if name not in known:
            raise invalid(name, f"unrecognized request argument {name!r}; this server takes {sorted(known)}",
                           code="unknown_parameter")


def _check_model(body: dict, config: ServeConfig) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", f"expected the model's name (a string), got {short(model)}")
    check_model(model, config)


def check_model(model: str, config: ServeConfig) -> None:
    """404 unless `model` is the one this server serves, or one of DeepSeek's ids for it."""
    if model != config.model_name and model not in THINKING_MODELS:
        raise ServeError(f"the model {short(model)} does not exist; this server serves {config.model_name!r}", 404,
                         param="model", code="model_not_found")


def _messages(messages, beta: bool) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", f"expected a non-empty list of messages, got {short(messages)}")
    out = []
    for i, m in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(name, f"expected an object with role and content, got {short(m)}")
        role = ROLES.get(m.get("role")) if isinstance(m.get("role"), str) else None
        if role is None:
            raise invalid(f"{name}.role", f"expected one of {sorted(ROLES)}, got {short(m.get('role'))}")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        elif isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                               and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        elif not isinstance(content, str):
            raise invalid(f"{name}.content", f"expected a string or a list of text parts, got {short(content)}")
        message = {"role": role, "content": content}
        if role == "assistant":
            # the template keeps the reasoning of the turn still running only (tokenizer.render_chat)
            reasoning = m.get("reasoning_content")
            if reasoning is not None and not isinstance(reasoning, str):
                raise invalid(f"{name}.reasoning_content", f"expected a string, got {short(reasoning)}")
            message["reasoning_content"] = reasoning
            if m.get("tool_calls") is not None:
                message["tool_calls"] = tool_calls(m["tool_calls"], f"{name}.tool_calls")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise invalid(f"{name}.tool_call_id", f"a tool message names its call, got {short(m.get('tool_call_id'))}")
        prefix = _boolean(m, "prefix", False, name=f"{name}.prefix")
        if prefix and not beta:
            raise invalid(f"{name}.prefix", "chat prefix completion is a beta feature: use the base URL /beta",
                          code="beta_only")
        if prefix and (role != "assistant" or i != len(messages) - 1):
            raise invalid(f"{name}.prefix", "only the last message, an assistant message, may be a prefix")
        if prefix:
            message["prefix"] = True
        out.append(message)
    return out


def _stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP or \
            any(not isinstance(s, str) or not s for s in stops):
        raise invalid("stop", f"expected a non-empty string or a list of 1 to {MAX_STOP} of them, got {short(stop)}")
    return tuple(stops)


def _number(body: dict, name: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(name, f"expected a number, got {short(value)}")
    if value > high or (value <= low if open_low else value < low):
        raise invalid(name, f"expected a number in {'(' if open_low else '['}{low}, {high}], got {value!r}")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise invalid(name, f"expected {expected}, got {short(value)}")
    return value


def _boolean(body: dict, key: str, default: bool, name: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name or key, f"expected true or false, got {short(value)}")
    return value
