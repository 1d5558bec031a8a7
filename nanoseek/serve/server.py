"""Running the app under uvicorn: loopback by default, HTTPS when given a certificate, and a graceful shutdown in
which new requests get 503 while running ones finish."""
from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from nanoseek.infer import Engine
from nanoseek.serve.app import create_app
from nanoseek.serve.config import ServeConfig

SHUTDOWN_GRACE_S = 30   # running replies get this long to finish before they are cancelled


class Server(uvicorn.Server):
    """uvicorn's server, which also tells the app the moment shutdown begins (a signal), so requests that still
    arrive on open connections are refused with 503 rather than started."""

    def __init__(self, app: FastAPI, config: uvicorn.Config):
        super().__init__(config)
        self.app = app

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


def build_server(app: FastAPI, config: ServeConfig) -> Server:
    """A server for `app` on config.host:config.port (port 0: any free port; `server.servers` has it once started)."""
    logging.getLogger("uvicorn.access").addFilter(NO_QUERY_STRINGS)   # once: the same filter is not added twice
    return Server(app, uvicorn.Config(
        app, host=config.host, port=config.port, ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
        proxy_headers=False,            # no proxy is trusted to say who the client is
        server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, log_level="info"))


def serve(engine: Engine, config: ServeConfig) -> None:
    """Serve until interrupted."""
    build_server(create_app(engine, config), config).run()
