"""DeepSeek's API beyond OpenAI's basics, end to end with the official openai client: thinking on and off, JSON
output, strict tool calls and the reasoning_content round trip, the /beta FIM and prefix completions, off-peak
prices. The model is random: whatever it samples, JSON and tool arguments validate (jsonschema, independent of the
grammar library), and incomplete replies are prefixes of JSON (jiter's partial mode)."""
import json
from datetime import datetime, timezone

import jiter
import jsonschema
import openai
import pytest

from nanoseek.serve.pricing import Prices
from nanoseek.tokenizer import chat_ids
from nanoseek.train.default_tokenizer import default_tokenizer

HI = [{"role": "user", "content": "What is 2 + 3?"}]
TOKENIZER = default_tokenizer()
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"enum": ["Hangzhou", "Beijing", "Paris"]},
    "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
    "required": ["name", "age", "city", "tags"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "strict": True, "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
    "required": ["zone"], "additionalProperties": False}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                         "arguments": '{"city": "Paris", "unit": "C"}'}}
TOOL_TURN = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [CALL]},
             {"role": "tool", "tool_call_id": "call_1", "content": "18 and cloudy"}]


def chat(server, base="v1", **kwargs):
    kwargs.setdefault("model", "tiny")
    kwargs.setdefault("messages", HI)
    return server.client(base=base).chat.completions.create(**kwargs)


def test_thinking_on_and_off(server):
    on = chat(server, model="deepseek-reasoner", max_tokens=8, seed=1)
    off = chat(server, model="deepseek-chat", max_tokens=8, seed=1)
    also_off = chat(server, max_tokens=8, seed=1, extra_body={"thinking": {"type": "disabled"}})
    none = chat(server, model="deepseek-reasoner", max_tokens=8, seed=1, reasoning_effort="none")
    assert isinstance(on.choices[0].message.reasoning_content, str)
    assert on.usage.completion_tokens_details.reasoning_tokens > 0
    for reply in (off, also_off, none):
        assert getattr(reply.choices[0].message, "reasoning_content", None) is None
        assert reply.usage.completion_tokens_details.reasoning_tokens == 0
        assert reply.choices[0].message.content
    # the one checkpoint: off differs from on by the empty thought its prompt ends with
    empty = len(TOKENIZER.encode("<think>\n\n</think>\n\n")) - len(TOKENIZER.encode("<think>\n"))
    assert off.usage.prompt_tokens == also_off.usage.prompt_tokens == on.usage.prompt_tokens + empty


def test_json_schema_replies_all_validate(server):
    """100 replies sampled at temperature 1 from the random tiny model: every one parses and validates."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    replies = []
    for seed in range(4):
        r = chat(server, model="deepseek-chat", n=25, temperature=1, max_tokens=80, seed=seed, response_format=fmt)
        replies += r.choices
    assert len(replies) == 100
    for choice in replies:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_json_object_replies_are_json(server):
    """An unbounded object rarely closes within a few tokens of a random model: a reply that stops is an object,
    and one cut short by max_tokens is the beginning of one."""
    r = chat(server, model="deepseek-chat", n=25, temperature=1, max_tokens=12, seed=0,
             response_format={"type": "json_object"})
    for choice in r.choices:
        text = choice.message.content
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{") and isinstance(jiter.from_json(text.encode(), partial_mode="trailing-strings"),
                                                       dict)


def test_json_in_thinking_mode_comes_after_the_reasoning(server):
    r = chat(server, model="deepseek-reasoner", max_tokens=6, seed=2, response_format={"type": "json_object"})
    assert r.choices[0].message.reasoning_content    # still thinking: the JSON comes after </think>


def test_strict_tool_calls_validate(server):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    r = chat(server, model="deepseek-chat", n=20, temperature=1, max_tokens=60, seed=3, tools=[WEATHER, CLOCK],
             tool_choice="required")
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_named_tool_choice_streams_its_call(server):
    named = {"type": "function", "function": {"name": "get_time"}}
    whole = chat(server, model="deepseek-chat", max_tokens=40, seed=4, tools=[WEATHER, CLOCK], tool_choice=named)
    chunks = list(chat(server, model="deepseek-chat", max_tokens=40, seed=4, tools=[WEATHER, CLOCK],
                       tool_choice=named, stream=True))
    [call] = whole.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert -12 <= json.loads(call.function.arguments)["zone"] <= 14
    streamed = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.function.name, d.function.arguments) for d in streamed] == [("get_time", call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_results_go_back_to_the_model(server):
    r = chat(server, model="deepseek-chat", messages=TOOL_TURN, tools=[WEATHER], max_tokens=4)
    assert r.usage.prompt_tokens == len(chat_ids(TOKENIZER, TOOL_TURN, True, [WEATHER])[0]) + \
        len(TOKENIZER.encode("<think>\n\n</think>\n\n"))


def test_reasoning_content_round_trip(server):
    """In thinking mode a tool call of the running turn must come back with its reasoning_content."""
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, model="deepseek-reasoner", messages=TOOL_TURN, tools=[WEATHER], max_tokens=4)
    assert e.value.param == "messages[1].reasoning_content" and e.value.code == "missing_reasoning_content"
    with_reasoning = [TOOL_TURN[0], dict(TOOL_TURN[1], reasoning_content="Look it up."), TOOL_TURN[2]]
    assert chat(server, model="deepseek-reasoner", messages=with_reasoning, tools=[WEATHER], max_tokens=4).choices
    # an earlier turn's call, or no thinking, needs none
    later = TOOL_TURN + [{"role": "assistant", "content": "18."}, {"role": "user", "content": "Thanks"}]
    assert chat(server, model="deepseek-reasoner", messages=later, tools=[WEATHER], max_tokens=4).choices
    assert chat(server, model="deepseek-chat", messages=TOOL_TURN, tools=[WEATHER], max_tokens=4).choices


def test_fim_completion(server):
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(2, 3))\n"
    client = server.client(base="beta")
    r = client.completions.create(model="tiny", prompt=prefix, suffix=suffix, max_tokens=8, temperature=0)
    ids = [TOKENIZER.special_id("<｜fim▁begin｜>"), *TOKENIZER.encode(prefix),
           TOKENIZER.special_id("<｜fim▁hole｜>"), *TOKENIZER.encode(suffix), TOKENIZER.special_id("<｜fim▁end｜>")]
    assert r.usage.prompt_tokens == len(ids)
    same = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert r.choices[0].text == same.choices[0].text


def test_prefix_completion(server):
    messages = HI + [{"role": "assistant", "content": "```python\n", "prefix": True}]
    r = chat(server, base="beta", messages=messages, max_tokens=8, temperature=0)
    ids = chat_ids(TOKENIZER, HI, True)[0] + TOKENIZER.encode("<think>\n\n</think>\n\n") + \
        TOKENIZER.encode("```python\n")
    assert r.usage.prompt_tokens == len(ids)
    raw = server.client(base="beta").completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == raw.choices[0].text   # the continuation only, as DeepSeek returns it


def test_off_peak_prices_with_an_injected_clock(server):
    peak = chat(server, max_tokens=4, temperature=0)
    server.now = datetime(2026, 3, 2, 18, 0, tzinfo=timezone.utc)   # 02:00 in Beijing
    try:
        off = chat(server, max_tokens=4, temperature=0)
    finally:
        server.now = datetime(2026, 3, 2, 4, 0, tzinfo=timezone.utc)
    a, b = peak.usage.model_dump(), off.usage.model_dump()
    assert a["cost"]["period"] == "peak" and b["cost"]["period"] == "off_peak"
    assert b["cost"] == pytest.approx(Prices().cost(b["prompt_cache_hit_tokens"], b["prompt_cache_miss_tokens"],
                                                    b["completion_tokens"], "off_peak"))
    assert a["completion_tokens"] == b["completion_tokens"]
    assert b["cost"]["output"] == pytest.approx(a["cost"]["output"] / 2)


@pytest.mark.parametrize("base, kwargs, param", [
    ("v1", dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}),
     "response_format.json_schema.schema"),
    ("v1", dict(response_format={"type": "yaml"}), "response_format"),
    ("v1", dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_stock"}}), "tool_choice"),
    ("v1", dict(tool_choice="required"), "tool_choice"),
    ("v1", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]),
     "tools[0].function.parameters"),
    ("beta", dict(messages=[{"role": "assistant", "content": "x", "prefix": True}] + HI), "messages[0].prefix"),
    ("v1", dict(messages=HI + [{"role": "assistant", "content": "x", "prefix": True}]), "messages[1].prefix"),
    ("v1", dict(extra_body={"suffix": "x"}), "suffix"),
    ("v1", dict(extra_body={"thinking": {"type": "sometimes"}}), "thinking"),
    ("v1", dict(reasoning_effort="extreme"), "reasoning_effort"),
    ("v1", dict(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
])
def test_bad_input_names_the_field(server, base, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, base=base, max_tokens=2, **kwargs)
    assert e.value.status_code == 400 and e.value.param == param
    assert e.value.body["type"] == "invalid_request_error" and param.split(".")[0].split("[")[0] in e.value.message


def test_suffix_needs_the_beta_url(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="tiny", prompt="a", suffix="b", max_tokens=2)
    assert e.value.param == "suffix" and e.value.code == "beta_only"
