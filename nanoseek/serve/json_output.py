"""JSON output (`response_format`: OpenAI's `json_object` and `json_schema`, DeepSeek's JSON mode) and the one
grammar that constrains a chat reply (infer/grammar.py).

The grammar is Lark, llguidance's dialect, with JSON schemas embedded (`%json`). In thinking mode the reply first
reasons freely up to `</think>` (the prompt opened `<think>`, reasoning.py); the answer after it is then
  - JSON valid under the schema (`json_object`: any JSON object), or
  - with tools (tools.py): text (or the JSON above), tool calls, or both, as tool_choice allows.
A reply with neither is not constrained at all. A reply cut short by max_tokens is cut short: DeepSeek's advice is
to leave it room.
"""
from __future__ import annotations

import json

from nanoseek.errors import InferenceError
from nanoseek.infer.grammar import json_schema_grammar, lark_grammar
from nanoseek.serve.invalid import invalid, short
from nanoseek.serve.tools import TOKENS, Tools
from nanoseek.tokenizer import Tokenizer

ANY_OBJECT = {"type": "object"}


def response_format(body: dict) -> dict | None:
    """The JSON schema a reply must follow, or None for text."""
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid("response_format", "expected {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                                         f"{{\"type\": \"json_schema\", \"json_schema\": {{...}}}}, got {short(value)}")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return ANY_OBJECT
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise invalid("response_format.json_schema", "expected {\"name\": str, \"schema\": {...}, \"strict\": bool}, "
                                                     f"got {short(spec)}")
    schema = spec.get("schema", ANY_OBJECT)
    try:
        json_schema_grammar(schema)
    except InferenceError as e:
        raise invalid("response_format.json_schema.schema", str(e)) from None
    return schema


def reply_grammar(tokenizer: Tokenizer, thinking: bool, schema: dict | None, tools: Tools | None) -> str | None:
    """The grammar of a chat reply (see the module's docstring); None when nothing constrains it."""
    ids = {t: tokenizer.special_id(t) for t in TOKENS}
    calls = tools.lark(ids) if tools is not None else None
    if schema is None and calls is None:
        return None
    body = "TEXT" if schema is None else \
        f"%json {json.dumps(dict(schema, **{'x-guidance': {'whitespace_flexible': False}}))}"
    if calls is None:
        answer = f"answer: {body}\n"
    elif tools.choice == "auto":
        answer = f"answer: {body} | calls | {body} calls\n{calls}"
    else:
        answer = f"answer: calls\n{calls}"
    rules = [f"start: THOUGHT <[{tokenizer.end_think_id}]> \"\\n\\n\" answer" if thinking else "start: answer",
             answer, "THOUGHT: /(?s:.*)/", "TEXT: /(?s:.+)/"]
    return lark_grammar("\n".join(rules))
