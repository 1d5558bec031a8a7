"""The HTTP API: OpenAI-compatible routes over the engine, with DeepSeek's conventions, and the chat page.

`create_app(engine, config)` builds it; server.py runs it under uvicorn. Errors are OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`. The app fetches nothing from anywhere: FastAPI's /docs pages,
which load their scripts from a CDN, are turned off, and the chat page's Content-Security-Policy lets it talk to
this server only. Other sites' pages get nothing from it: a request naming another host is refused (hosts.py), the
API reads only `application/json` bodies (a cross-site form can send text/plain, never JSON, without asking
first), and the chat page may not be framed.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from nanoseek.errors import ConfigError, ServeError
from nanoseek.infer import Engine
from nanoseek.serve.auth import KeyCheck
from nanoseek.serve.completions import Responder
from nanoseek.serve.config import ServeConfig
from nanoseek.serve.hosts import allowed_hosts, check_host
from nanoseek.serve.metrics import Metrics
from nanoseek.serve.reasoning import THINKING_MODELS
from nanoseek.serve.requests import check_model, parse_chat, parse_completion
from nanoseek.serve.worker import EngineWorker

PAGE = Path(__file__).parent / "static" / "index.html"
PATHS = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/beta/chat/completions",
         "/beta/completions"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               408: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
               429: "rate_limit_error"}
PAGE_HEADERS = {
    # inline script and style only, and requests to this server only: nothing from a CDN, nothing sent elsewhere
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",              # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def create_app(engine: Engine, config: ServeConfig, clock: Callable[[], datetime] = utc_now) -> FastAPI:
    """The app over `engine`; `clock` tells the time that decides peak or off-peak prices (tests set it)."""
    if engine.tokenizer is None:
        raise ConfigError("the server needs a tokenizer: the checkpoint directory has no tokenizer.json")
    tokenizer = engine.tokenizer
    worker = EngineWorker(engine, config.max_queue)
    metrics = Metrics()
    check_key = KeyCheck(config.api_keys)
    page = PAGE.read_text(encoding="utf-8")
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    hosts = allowed_hosts(config.host, config.allowed_hosts)

    def host(request: Request) -> None:
        check_host(request.headers.get("host"), hosts)

    app = FastAPI(title="nanoseek", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(host)])
    app.state.worker = worker
    app.add_middleware(RequestCounter, metrics=metrics)

    @app.exception_handler(ServeError)
    async def serve_error(_request: Request, e: ServeError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        return error_response(ServeError(str(e.detail), e.status_code))

    def authorize(request: Request) -> None:
        check_key(request.headers.get("authorization"))

    keyed = [Depends(authorize)]

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> JSONResponse:
        if worker.failed is not None or worker.draining:
            return JSONResponse({"status": "failed" if worker.failed else "shutting down"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", dependencies=keyed)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(worker), media_type="text/plain; version=0.0.4")

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "nanoseek"}

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict:
        # DeepSeek's ids name the same checkpoint, thinking or not (reasoning.py)
        return {"object": "list", "data": [model_card(m) for m in (config.model_name, *THINKING_MODELS)]}

    @app.get("/v1/models/{model:path}", dependencies=keyed)
    async def model(model: str) -> dict:
        check_model(model, config)
        return model_card(model)

    async def generate(request: Request, chat: bool, beta: bool = False) -> Response:
        body = await read_json(request, config.max_body_bytes, config.body_timeout_s)
        period = config.prices.period(clock())
        parse = parse_chat if chat else parse_completion
        gen = parse(body, tokenizer, config, engine.config.max_seqs, engine.context, beta)
        if gen.params.grammar is not None and engine.spec:
            raise ServeError("JSON output and tool calls are constrained token by token, which this server's "
                             "speculative decoding does not do; serve without --speculative", 400,
                             param="response_format" if body.get("response_format") else "tools",
                             code="unsupported_with_speculative_decoding")
        job = await worker.open(gen.prompt, gen.params)
        responder = Responder(chat, gen, job, tokenizer, config, metrics, period)
        if gen.stream:
            return EventStream(responder)
        return await until_disconnect(request, responder)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    # DeepSeek's beta base URL: the same API, with chat prefix completion and FIM completion
    @app.post("/beta/chat/completions", dependencies=keyed)
    async def beta_chat_completions(request: Request) -> Response:
        return await generate(request, chat=True, beta=True)

    @app.post("/beta/completions", dependencies=keyed)
    async def beta_completions(request: Request) -> Response:
        return await generate(request, chat=False, beta=True)

    return app


async def read_json(request: Request, limit: int, timeout: float) -> dict:
    """The request body as a JSON object. A body over the limit is read to its end but not kept, so the client
    gets its 413 instead of a connection reset; one that trickles in for longer than `timeout` seconds gets 408."""
    try:
        body, size = await asyncio.wait_for(_read_body(request, limit), timeout)
    except asyncio.TimeoutError:
        raise ServeError(f"the request body took longer than {timeout:g} s to arrive", 408,
                         code="request_timeout") from None
    if size > limit:
        raise ServeError(f"the request body is {size} bytes, over this server's limit of {limit}", 413,
                         code="request_too_large")
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json":
        raise ServeError(f"the request body must be sent as Content-Type: application/json, got {kind!r:.80}", 415,
                         code="unsupported_media_type")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_not_a_number)
        json.dumps(data, ensure_ascii=False).encode("utf-8")   # a lone surrogate ("\ud800") is no text
    except RecursionError:
        raise _not_json("it nests too deeply") from None
    except UnicodeError:
        raise _not_json("it is not valid UTF-8 text") from None
    except ValueError as e:   # malformed, NaN or Infinity, an integer of more than 4300 digits
        raise _not_json(str(e)) from None
    if not isinstance(data, dict):
        raise _not_json(f"expected an object, got {type(data).__name__}")
    return data


async def _read_body(request: Request, limit: int) -> tuple[bytes, int]:
    body, size = bytearray(), 0
    async for piece in request.stream():
        size += len(piece)
        if size <= limit:
            body += piece
    return bytes(body), size


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _not_json(why: str) -> ServeError:
    return ServeError(f"the request body is not JSON: {why}", 400, code="invalid_json")


async def until_disconnect(request: Request, responder: Responder) -> Response:
    """A whole (not streamed) response, unless the client leaves first: then the generation is cancelled."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collect, gone = asyncio.ensure_future(responder.collect()), asyncio.ensure_future(disconnected())
    await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not collect.done():
        collect.cancel()
        await asyncio.gather(collect, return_exceptions=True)   # its cancellation, expected: the client is gone
        return Response(status_code=499)                       # nginx's "client closed request", for the metrics
    return JSONResponse(collect.result())


def error_response(e: ServeError) -> JSONResponse:
    kind = ERROR_TYPES.get(e.status, "server_error" if e.status >= 500 else "invalid_request_error")
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}, e.status,
                        headers=headers)


class EventStream(StreamingResponse):
    """A reply as server-sent events. It ends its responder however the response ends: a client that left before
    the stream began never starts the event generator, so the generator's own cleanup would not run."""

    def __init__(self, responder: Responder):
        super().__init__(responder.stream(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.responder = responder

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.responder.end()


class RequestCounter:
    """ASGI middleware counting responses by path and status (a plain one: Starlette's BaseHTTPMiddleware would
    get in the way of streaming and of noticing a client leave)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in PATHS else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.count_request(path, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
