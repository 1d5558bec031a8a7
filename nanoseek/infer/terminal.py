"""`nanoseek generate` and `nanoseek chat`: the engine streaming to a terminal.

Chat renders the conversation with DeepSeek-R1's template (tokenizer.render_chat) and shows the reasoning, the
part between <think> and </think> (R1 §2.2.1), dimmed and apart from the answer; like DeepSeek's API it feeds
earlier answers back without their reasoning. Ctrl-C stops a reply (the request is cancelled between two engine
steps, so the engine stays consistent) without leaving the chat; `/reset` starts over, `/exit` or Ctrl-D leaves.
Given tools (`--tools`, OpenAI's definitions), the model may call them: each call shows as `[tool call]
name(arguments)`, the user types its result, and the model goes on with the results in its context.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from nanoseek.errors import InferenceError
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampler import SamplingParams
from nanoseek.tokenizer import (CALL_BEGIN, CALL_END, CALL_SEP, CALLS_BEGIN, CALLS_END, END_THINK, THINK, Tokenizer,
                                render_chat, split_tool_calls)

DIM, RESET = "\x1b[2m", "\x1b[0m"
SHOWN = {CALLS_BEGIN: "", CALL_BEGIN: "\n[tool call] ", CALL_SEP: "(", CALL_END: ")", CALLS_END: ""}


class ReplyPrinter:
    """Writes streamed text, the reasoning dimmed (on a terminal) and the think tags left out; keeps both parts."""

    def __init__(self, out: TextIO):
        self.out, self.color = out, out.isatty()
        self.reasoning, self.answer = "", ""
        self.thinking = False

    def feed(self, text: str) -> None:
        while text:
            tag = END_THINK if self.thinking else THINK
            before, found, text = text.partition(tag)
            self._write(before)
            if found:
                self.thinking = not self.thinking
                if self.thinking and self.color:
                    self.out.write(DIM)
                elif not self.thinking:
                    self.out.write((RESET if self.color else "") + "\n")
                    self.answer = ""  # what came before the reasoning was not the answer
        self.out.flush()

    def _write(self, text: str) -> None:
        if self.thinking:
            self.reasoning += text
        else:
            # the template puts "\n\n" after </think>; the answer starts after it
            text = text.lstrip("\n") if not self.answer else text
            self.answer += text
        for token, shown in SHOWN.items():   # tool calls, readable
            text = text.replace(token, shown)
        self.out.write(text)

    def close(self) -> None:
        self.out.write((RESET if self.color and self.thinking else "") + "\n")
        self.out.flush()


@contextlib.contextmanager
def interruptible() -> Iterator[list[bool]]:
    """Ctrl-C sets a flag the caller checks between engine steps, instead of raising in the middle of one."""
    flag = [False]

    def handler(signum, frame):
        flag[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_reply(engine: Engine, prompt: list[int], params: SamplingParams, printer) -> tuple[str, bool]:
    """Run one request to its end or to Ctrl-C, feeding its text to printer.feed. Returns a one-line report
    (tokens, speed, prompt cache hits, draft acceptance) and whether it was interrupted."""
    start, tokens, cached, drafted, accepted = time.perf_counter(), 0, 0, engine.stats.drafted, engine.stats.accepted
    request = engine.add_request(prompt, params)
    with interruptible() as interrupted:
        for update in engine.stream([request]):
            tokens += len(update.token_ids)
            cached = update.sequence.request.cached_tokens
            printer.feed(update.text)
            if interrupted[0]:
                engine.cancel(request)
                break
    seconds = time.perf_counter() - start
    line = (f"[{tokens} tokens in {seconds:.2f}s, {tokens / max(seconds, 1e-9):.1f} tok/s, "
            f"prompt cache hit {cached}/{len(prompt)} tokens")
    if engine.spec and engine.stats.drafted > drafted:
        line += f", draft acceptance {(engine.stats.accepted - accepted) / (engine.stats.drafted - drafted):.0%}"
    return line + "]", interrupted[0]


def generate(engine: Engine, tokenizer: Tokenizer, prompt: list[int], params: SamplingParams,
             out: TextIO | None = None) -> None:
    """Stream the reply to prompt ids `prompt` (data/prompts.py: text_prompt_ids)."""
    out = out or sys.stdout
    printer = ReplyPrinter(out)
    line, interrupted = stream_reply(engine, prompt, params, printer)
    printer.close()
    print(line, file=sys.stderr, flush=True)
    if interrupted:
        raise KeyboardInterrupt


def chat(engine: Engine, tokenizer: Tokenizer, params: SamplingParams, system: str | None = None,
         out: TextIO | None = None, read=input, tools: list[dict] = ()) -> None:
    out = out or sys.stdout
    intro = [{"role": "system", "content": system}] if system else []
    messages = list(intro)
    print("nanoseek chat: /reset starts over, /exit leaves, Ctrl-C stops a reply", file=out, flush=True)
    while True:
        try:
            line = read(">>> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        command = line.strip()
        if command == "/exit":
            return
        if command == "/reset":
            messages = list(intro)
            print("(new conversation)", file=out, flush=True)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": line})
        while _reply(engine, tokenizer, params, messages, out, read, tools):
            pass


def _reply(engine: Engine, tokenizer: Tokenizer, params: SamplingParams, messages: list[dict], out: TextIO, read,
           tools: list[dict]) -> bool:
    """One assistant reply; True when it called tools, whose results the user gave: the model goes on."""
    prompt = tokenizer.encode(render_chat(messages, add_generation_prompt=True, tools=tools))
    printer = ReplyPrinter(out)
    try:
        line, interrupted = stream_reply(engine, prompt, params, printer)
    except InferenceError as e:  # e.g. the conversation outgrew the context: say so and stay in the chat
        while messages[-1]["role"] != "user":
            messages.pop()
        messages.pop()
        print(f"error: {e}; /reset starts a new conversation", file=out, flush=True)
        return False
    printer.close()
    if interrupted:
        print("(stopped)", file=out, flush=True)
    print(line, file=sys.stderr, flush=True)
    content, calls = split_tool_calls(printer.answer.strip())
    messages.append({"role": "assistant", "content": content.strip(), **({"tool_calls": calls} if calls else {})})
    if not calls or interrupted:
        return False
    for call in calls:
        try:
            result = read(f"result of {call['function']['name']}> ")
        except (EOFError, KeyboardInterrupt):
            result = "(no result)"
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return True
