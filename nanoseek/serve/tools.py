"""Function calling (OpenAI's `tools` and `tool_choice`, DeepSeek's strict mode): the request's tools, checked; the
grammar a reply with tool calls must follow. (tokenizer.split_tool_calls cuts the calls out of a reply.)

A tool call is written with DeepSeek-V3.1's special tokens (tokenizer.render_chat):
`<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>name<｜tool▁sep｜>{arguments}<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`.
The reply is constrained (infer/grammar.py): a call names a tool of the request, and its arguments are JSON valid
under the tool's parameters schema when the tool is strict, any JSON object otherwise. `tool_choice` "auto" lets
the reply be text, calls, or text then calls; "required" or a named function makes it calls alone; "none" lets it
call nothing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nanoseek.errors import InferenceError
from nanoseek.infer.grammar import json_schema_grammar
from nanoseek.serve.invalid import invalid, short
from nanoseek.tokenizer import (CALL_BEGIN, CALL_END, CALL_SEP, CALLS_BEGIN, CALLS_END, OUTPUT_BEGIN, OUTPUT_END,
                                Tokenizer)

MAX_TOOLS = 128          # DeepSeek's limit
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOKENS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, CALL_SEP, OUTPUT_BEGIN, OUTPUT_END)


@dataclass(frozen=True)
class Tools:
    definitions: list[dict]          # OpenAI's tool objects, normalized, as the chat template renders them
    choice: str                      # "none", "auto", "required", or the name of the one function to call
    strict: dict[str, bool]          # by name

    def lark(self, ids: dict[str, int]) -> str | None:
        """The Lark rules (`calls`) of the tool calls this request allows; None when it allows none."""
        if self.choice == "none":
            return None
        names = list(self.strict) if self.choice in ("auto", "required") else [self.choice]
        alternatives = []
        for tool in self.definitions:
            f = tool["function"]
            if f["name"] in names:
                schema = f.get("parameters") if self.strict[f["name"]] else None
                schema = dict(schema or {"type": "object"}, **{"x-guidance": {"whitespace_flexible": False}})
                alternatives.append(f'{json.dumps(f["name"])} <[{ids[CALL_SEP]}]> %json {json.dumps(schema)}')
        many = "+" if self.choice in ("auto", "required") else ""
        return (f"calls: <[{ids[CALLS_BEGIN]}]> call{many} <[{ids[CALLS_END]}]>\n"
                f"call: <[{ids[CALL_BEGIN]}]> ({' | '.join(alternatives)}) <[{ids[CALL_END]}]>\n")


def parse_tools(body: dict, tokenizer: Tokenizer) -> Tools | None:
    """The request's `tools` and `tool_choice`; None when it has no tools."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise invalid("tool_choice", f"tool_choice {short(choice)} needs tools")
        return None
    if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
        raise invalid("tools", f"expected a list of 1 to {MAX_TOOLS} tools, got {short(tools)}")
    missing = [t for t in TOKENS if tokenizer.special_id(t) is None]
    if missing:
        raise invalid("tools", f"this model's tokenizer lacks the tool-call tokens {missing}")
    definitions, strict = [], {}
    for i, tool in enumerate(tools):
        name = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise invalid(name, f"expected {{\"type\": \"function\", \"function\": {{...}}}}, got {short(tool)}")
        f = tool["function"]
        unknown = set(f) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise invalid(f"{name}.function", f"unknown fields {sorted(unknown)}")
        if not isinstance(f.get("name"), str) or not NAME.match(f["name"]):
            raise invalid(f"{name}.function.name",
                          f"expected 1 to 64 letters, digits, _ or -, got {short(f.get('name'))}")
        if f["name"] in strict:
            raise invalid(f"{name}.function.name", f"the name {f['name']!r} is given twice")
        if not isinstance(f.get("description", ""), str):
            raise invalid(f"{name}.function.description", f"expected a string, got {short(f.get('description'))}")
        if not isinstance(f.get("strict", False), bool):
            raise invalid(f"{name}.function.strict", f"expected true or false, got {short(f.get('strict'))}")
        parameters = f.get("parameters", {"type": "object", "properties": {}})
        try:
            json_schema_grammar(parameters)
        except InferenceError as e:
            raise invalid(f"{name}.function.parameters", str(e)) from None
        strict[f["name"]] = f.get("strict", False)
        definitions.append({"type": "function", "function": {"name": f["name"], "description": f.get("description", ""),
                                                             "parameters": parameters}})
    return Tools(definitions, _choice(choice, strict), strict)


def _choice(choice, names) -> str:
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name in names:
            return name
        raise invalid("tool_choice", f"names the function {short(name)}, which is not among the tools "
                                      f"{sorted(names)}")
    raise invalid("tool_choice", f"expected \"none\", \"auto\", \"required\" or "
                                  f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {short(choice)}")


def tool_calls(calls, param: str) -> list[dict]:
    """An assistant message's `tool_calls`, checked, as the template takes them."""
    if not isinstance(calls, list) or not calls:
        raise invalid(param, f"expected a non-empty list of tool calls, got {short(calls)}")
    out = []
    for j, call in enumerate(calls):
        f = call.get("function") if isinstance(call, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("arguments"), str):
            raise invalid(f"{param}[{j}]", "expected {\"id\", \"type\": \"function\", \"function\": {\"name\": str, "
                                            f"\"arguments\": str}}}}, got {short(call)}")
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": f["name"], "arguments": f["arguments"]}})
    return out
