"""The TLS certificate and key, loaded once before the model is: each way they can be wrong is one line, not a
traceback from uvicorn after the server has said it is serving, and an encrypted key is refused rather than
prompting for its passphrase on the terminal."""
from __future__ import annotations

import ssl
from pathlib import Path

from nanoseek.errors import ConfigError


def check_tls(cert: str, key: str) -> None:
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert)
    except ssl.SSLError as e:
        raise ConfigError(f"--tls-cert {cert} is not a PEM certificate ({e.reason or e.library})") from None

    def no_passphrase() -> bytes:
        raise ConfigError(f"--tls-key {key} is protected by a passphrase; the server needs it unencrypted "
                          f"(openssl pkey -in {key} -out PLAIN.pem)")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"--tls-key {key} is not the key of the certificate {cert}") from None
        raise ConfigError(f"--tls-key {key} is not a PEM private key ({e.reason or e.library})") from None
