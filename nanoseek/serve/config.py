"""The server's settings: one frozen dataclass; the CLI maps `nanoseek serve` flags onto it."""
from __future__ import annotations

from dataclasses import dataclass, field

from nanoseek.checks import check_fields
from nanoseek.errors import ConfigError
from nanoseek.serve.pricing import Prices
from nanoseek.serve.tls import check_tls


@dataclass(frozen=True)
class ServeConfig:
    model_name: str = "nanoseek"            # the id /v1/models lists and requests must name
    host: str = "127.0.0.1"                 # address to listen on; loopback: reachable from this machine only
    port: int = 8000                        # the port to listen on
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: no key needed
    prices: Prices = Prices()
    tls_cert: str | None = None             # PEM certificate: serve HTTPS (with its key, tls_key)
    tls_key: str | None = None              # PEM private key of the certificate
    log_prompts: bool = False               # log prompts and completions (without it they are never logged)
    max_queue: int = 256                    # requests waiting for their first token at most; more get 429
    max_body_bytes: int = 1 << 20           # larger request bodies get 413
    body_timeout_s: float = 30.0            # a body that takes longer to arrive gets 408
    allowed_hosts: tuple[str, ...] = ()     # Host header names accepted besides loopback's and `host`; "*": any
    default_max_tokens: int = 4096          # max_tokens of a request that gives none (clipped to the context)

    def __post_init__(self):
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and its key; got only the "
                              + ("certificate" if self.tls_key is None else "key"))
        if self.tls_cert is not None:
            check_tls(self.tls_cert, self.tls_key)
        check_fields(self, {"port": "in [0, 65535]", "body_timeout_s": "> 0"}, default=">= 1")
        if not all(self.allowed_hosts):
            raise ConfigError(f"allowed hosts must be non-empty names, got {self.allowed_hosts!r}")
        if not all(self.api_keys):
            raise ConfigError("API keys must be non-empty strings")
        if not self.model_name:
            raise ConfigError("model_name must not be empty")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"
