"""Running the app under uvicorn: loopback by default, HTTPS when given a certificate, and a graceful shutdown in
which new requests get 503 while running ones finish."""
from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from nanoseek.infer import Engine
from nanoseek.serve.app import create_app
from nanoseek.serve.config import ServeConfig

SHUTDOWN_GRACE_S = 30   # running replies get this long to finish before they are cancelled


class Server(uvicorn.Server):
    """uvicorn's server, which also tells the app the moment shutdown begins (a signal), so requests that still
    arrive on open connections are refused with 503 rather than started."""

    def __init__(self, app: FastAPI, config: uvicorn.Config, on_started: Callable[[str], None] | None = None):
        super().__init__(config)
        self.app, self.on_started = app, on_started

    async def startup(self, sockets=None) -> None:
        """Bind; then, and only if that worked, tell `on_started` the URL."""
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            port = self.servers[0].sockets[0].getsockname()[1]
            self.on_started(f"{'https' if self.config.is_ssl else 'http'}://{self.config.host}:{port}/")

    def handle_exit(self, sig, frame) -> None:
        self.app.state.worker.drain()
        super().handle_exit(sig, frame)


class NoQueryStrings(logging.Filter):
    """uvicorn's access log lines without their query strings: a client may send its key as `?api_key=...`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:   # client, method, path, version, status
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).partition("?")[0], version, status)
        return True


NO_QUERY_STRINGS = NoQueryStrings()


def build_server(app: FastAPI, config: ServeConfig, on_started: Callable[[str], None] | None = None) -> Server:
    """A server for `app` on config.host:config.port (port 0: any free port; `server.servers` has it once started)."""
    logging.getLogger("uvicorn.access").addFilter(NO_QUERY_STRINGS)   # once: the same filter is not added twice
    return Server(app, uvicorn.Config(
        app, host=config.host, port=config.port, ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
        proxy_headers=False,            # no proxy is trusted to say who the client is
        server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, log_level="info"), on_started)


def serve(engine: Engine, config: ServeConfig, on_started: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted; `on_started(url)` once the port is bound."""
    build_server(create_app(engine, config), config, on_started).run()
