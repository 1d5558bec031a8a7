"""The engine's own thread, and the asyncio side of each request.

The engine is not thread-safe, so one thread owns it: it takes new requests and cancellations from a queue, steps
the engine while any request is waiting or running (continuous batching: requests join and leave between steps),
sleeps when there is none, and hands each step's updates to the event loop with `call_soon_threadsafe`. Everything
else — counting, the queue limit, shutting down — happens on the event loop, in one thread too.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from nanoseek.errors import NanoseekError, ServeError
from nanoseek.infer import Engine, SamplingParams, Update

log = logging.getLogger("nanoseek.serve")


class Job:
    """One request, from the event loop's side: its updates arrive on `events`."""

    def __init__(self, worker: EngineWorker, prompt: list[int], params: SamplingParams):
        self.worker, self.prompt, self.params = worker, prompt, params
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.request_id: int | None = None     # the engine's, set by its thread
        self.cached_tokens = 0                 # prompt tokens the prefix cache served
        self.submitted = time.perf_counter()
        self.first_token_s: float | None = None
        self.started = self.finished = self.closed = False

    def post(self, item) -> None:
        """From the engine thread: None (accepted), an exception (refused or failed), or a step's updates."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    async def updates(self) -> AsyncIterator[list[Update]]:
        """Each step's updates of this request, until every sample has finished."""
        going = set(range(self.params.n))
        while going:
            item = await self.events.get()
            if isinstance(item, BaseException):
                raise ServeError(f"the engine failed: {item}", 500, code="engine_failed") from item
            if not self.started:
                self.started = True
                self.worker.queued -= 1
                self.first_token_s = time.perf_counter() - self.submitted
                self.cached_tokens = item[0].sequence.request.cached_tokens
            going -= {u.index for u in item if u.finish_reason is not None}
            yield item
        self.finished = True

    def close(self) -> None:
        """The response is over, or the client has gone: an unfinished generation is cancelled and its cache
        blocks freed."""
        if self.closed:
            return
        self.closed = True
        if not self.started:
            self.worker.queued -= 1
        if not self.finished:
            self.worker.cancelled += 1
            self.worker.send(("cancel", self))


class EngineWorker:
    def __init__(self, engine: Engine, max_queue: int):
        self.engine, self.max_queue = engine, max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}        # the engine thread's: request id -> job
        self._thread = threading.Thread(target=self._run, name="nanoseek-engine", daemon=True)
        # the event loop's
        self.queued = 0                        # jobs without their first token yet
        self.cancelled = 0
        self.draining = False                  # shutting down: no new requests
        # published by the engine thread after every step
        self.failed: BaseException | None = None
        self.total_blocks = engine.pool.capacity
        self.free_blocks = engine.free_blocks
        self.waiting = self.running = 0

    # ---- the event loop's side --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.draining = True
        self.send(None)
        self._thread.join()

    def drain(self) -> None:
        """Shutdown has begun: refuse new requests (503) and let the running ones finish."""
        self.draining = True

    def send(self, command) -> None:
        self._inbox.put(command)

    async def open(self, prompt: list[int], params: SamplingParams) -> Job:
        """Queue a request; returns once the engine has accepted it."""
        if self.failed is not None:
            raise ServeError(f"the engine failed and serves no more requests: {self.failed}", 503,
                             code="engine_failed")
        if self.draining:
            raise ServeError("the server is shutting down", 503, code="shutting_down")
        if self.queued >= self.max_queue:
            raise ServeError(f"too many requests waiting ({self.queued}); try again shortly", 429,
                             code="queue_full")
        job = Job(self, prompt, params)
        self.queued += 1
        self.send(("add", job))
        try:
            refusal = await job.events.get()
        except BaseException:   # the client left first: the cancel follows the add through the queue
            job.close()
            raise
        if refusal is not None:
            job.finished = True
            job.close()
            if refusal is self.failed:
                raise ServeError(f"the engine failed and serves no more requests: {refusal}", 503,
                                 code="engine_failed")
            # the request's fields are checked before it gets here; what the engine still refuses is a reply that
            # would not fit the cache
            raise ServeError(str(refusal), 400, param="max_tokens", code="invalid_value")
        return job

    # ---- the engine thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while True:
            busy = engine.requests and self.failed is None
            commands = [] if busy else [self._inbox.get()]   # idle: sleep until there is work
            while True:
                try:
                    commands.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for command in commands:
                if command is None:
                    return
                self._apply(*command)
            if engine.requests and self.failed is None:
                self._step()
            self.free_blocks = engine.free_blocks
            self.waiting = len(engine.waiting)
            self.running = len(engine.requests) - self.waiting

    def _apply(self, action: str, job: Job) -> None:
        if action == "add" and self.failed is not None:
            job.post(self.failed)
        elif action == "add":
            try:
                request_id = self.engine.add_request(job.prompt, job.params)
            except NanoseekError as e:
                job.post(e)
                return
            job.request_id = request_id
            self._jobs[request_id] = job
            job.post(None)
        elif job.request_id in self._jobs:     # "cancel"; a request that has finished is gone already
            self.engine.cancel(job.request_id)
            del self._jobs[job.request_id]

    def _step(self) -> None:
        try:
            updates = self.engine.step()
        except Exception as e:
            # a bug, not a bad request: fail every request, and every one after, rather than run a broken engine
            log.exception("the engine failed; %d request(s) fail with it and the server takes no more", len(self._jobs))
            self.failed = e
            for job in self._jobs.values():
                job.post(e)
            self._jobs.clear()
            return
        by_request = defaultdict(list)
        for update in updates:
            by_request[update.request_id].append(update)
        for request_id, batch in by_request.items():
            self._jobs[request_id].post(batch)
        for request_id in [r for r in self._jobs if r not in self.engine.requests]:
            del self._jobs[request_id]
