"""From engine updates to API responses: one request's samples as they stream (server-sent events) or whole.

Chat replies are split into `reasoning_content` and `content` (reasoning.py), and tool calls are cut out of the
content (tools.py); completions return the raw text. Streamed, a reply's tool calls come whole in its last chunk.
When the response ends — finished, failed, or its client gone — the job is closed, which cancels a generation
still running and frees its cache blocks."""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from nanoseek.errors import ServeError
from nanoseek.infer import Update
from nanoseek.serve.config import ServeConfig
from nanoseek.serve.metrics import Metrics
from nanoseek.serve.reasoning import ReasoningSplitter, reasoning_tokens, split_reasoning
from nanoseek.serve.requests import Generation
from nanoseek.serve.responses import chat_logprobs, completion_logprobs, envelope, now, response_id, sse, usage
from nanoseek.serve.worker import Job
from nanoseek.tokenizer import CALLS_BEGIN, Tokenizer, split_tool_calls

log = logging.getLogger("nanoseek.serve")


class Responder:
    def __init__(self, chat: bool, gen: Generation, job: Job, tokenizer: Tokenizer, config: ServeConfig,
                 metrics: Metrics, period: str = "peak"):
        self.chat, self.gen, self.job = chat, gen, job
        self.tokenizer, self.config, self.metrics = tokenizer, config, metrics
        self.id = response_id("chatcmpl" if chat else "cmpl")
        self.created = now()
        n = gen.params.n
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.logprobs: list[list] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.splitters = [ReasoningSplitter() for _ in range(n)]
        self.calls = [""] * n                  # streaming: the tool calls' text, held until the sample ends
        self.period = period                   # the price period the request arrived in (pricing.py)
        self.ended = False

    # ---- streaming ----------------------------------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[str]:
        try:
            if self.chat:
                yield self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None} for i in range(self.gen.params.n)])
            async for updates in self.job.updates():
                choices = [c for c in map(self._delta, updates) if c is not None]
                if choices:
                    yield self._chunk(choices)
            if self.gen.include_usage:
                yield self._chunk([], self._usage())
            yield sse("[DONE]")
        except ServeError as e:   # the engine failed mid-stream: the status is sent already, so say it in an event
            yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": e.code}})
        finally:
            self.end()

    def _delta(self, u: Update) -> dict | None:
        self._add(u)
        if not self.chat:
            logprobs = None
            if u.logprobs is not None:
                offset = sum(len(t) for t in self.texts[u.index]) - len(u.text)
                logprobs = completion_logprobs(self.tokenizer, u.token_ids, u.logprobs, offset)
            return {"index": u.index, "text": u.text, "logprobs": logprobs, "finish_reason": u.finish_reason}
        reasoning, content = "", u.text
        if self.gen.thinking:
            splitter = self.splitters[u.index]
            reasoning, content = splitter.feed(u.text)
            if u.finish_reason is not None:
                reasoning += splitter.finish()
        finish, calls = u.finish_reason, []
        if self.gen.tools:
            if self.calls[u.index]:
                self.calls[u.index], content = self.calls[u.index] + content, ""
            elif CALLS_BEGIN in content:
                content, marker, held = content.partition(CALLS_BEGIN)
                self.calls[u.index] = marker + held
            if finish is not None:
                _, calls = split_tool_calls(self.calls[u.index])
                finish = "tool_calls" if calls else finish
        delta = {k: v for k, v in (("reasoning_content", reasoning), ("content", content)) if v}
        if calls:
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(calls)]
        logprobs = None if u.logprobs is None else {"content": chat_logprobs(self.tokenizer, u.token_ids, u.logprobs)}
        if not delta and logprobs is None and u.finish_reason is None:
            return None
        return {"index": u.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def _chunk(self, choices: list[dict], usage_: dict | None = None) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return sse(envelope(kind, self.id, self.created, self.config.model_name, choices, usage_,
                            with_usage=self.gen.include_usage))

    # ---- whole --------------------------------------------------------------------------------------------------
    async def collect(self) -> dict:
        try:
            async for updates in self.job.updates():
                for u in updates:
                    self._add(u)
        finally:
            self.end()
        choices, wants_logprobs = [], self.gen.params.logprobs is not None
        for i in range(self.gen.params.n):
            text, logprobs = "".join(self.texts[i]), None
            if self.chat:
                message, finish = self._message(text), self.finish[i]
                if message.get("tool_calls"):
                    finish = "tool_calls"
                if wants_logprobs:
                    logprobs = {"content": chat_logprobs(self.tokenizer, self.ids[i], self.logprobs[i])}
                choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
            else:
                if wants_logprobs:
                    logprobs = completion_logprobs(self.tokenizer, self.ids[i], self.logprobs[i], 0)
                choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": self.finish[i]})
        kind = "chat.completion" if self.chat else "text_completion"
        return envelope(kind, self.id, self.created, self.config.model_name, choices, self._usage())

    def _message(self, text: str) -> dict:
        """A whole reply as OpenAI's assistant message, with DeepSeek's reasoning_content when it thought."""
        message = {"role": "assistant"}
        if self.gen.thinking:
            message["reasoning_content"], text = split_reasoning(text)
        message["content"] = text
        if self.gen.tools:
            content, calls = split_tool_calls(text)
            message["content"] = content or (None if calls else content)
            if calls:
                message["tool_calls"] = calls
        return message

    # ---- both ---------------------------------------------------------------------------------------------------
    def _add(self, u: Update) -> None:
        self.ids[u.index] += u.token_ids
        self.texts[u.index].append(u.text)
        if u.logprobs is not None:
            self.logprobs[u.index] += u.logprobs
        self.finish[u.index] = u.finish_reason

    def _usage(self) -> dict:
        completion = sum(map(len, self.ids))
        reasoning = None
        if self.chat:
            reasoning = sum(reasoning_tokens(ids, self.tokenizer.end_think_id) for ids in self.ids) \
                if self.gen.thinking else 0
        return usage(len(self.gen.prompt), self.job.cached_tokens, completion, reasoning, self.config.prices,
                     self.period)

    def end(self) -> None:
        """Close the job and count the request; the first call does it, later ones do nothing."""
        if self.ended:
            return
        self.ended = True
        self.job.close()
        self.metrics.observe_generation(len(self.gen.prompt), self.job.cached_tokens, sum(map(len, self.ids)),
                                        self.job.first_token_s, time.perf_counter() - self.job.submitted)
        if self.config.log_prompts:
            log.info("%s prompt=%r completions=%r finish=%r", self.id, self.gen.prompt_text,
                     ["".join(t) for t in self.texts], self.finish)
