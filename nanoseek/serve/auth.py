"""API keys: read from a file, checked in constant time."""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from nanoseek.errors import ConfigError, ServeError


def load_api_keys(path: str | Path) -> tuple[str, ...]:
    """One key per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"no API key file at {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read the API key file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the API key file {path} is not UTF-8 text") from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ConfigError(f"{path} holds no API key (one per line)")
    return keys


class KeyCheck:
    """Checks the `Authorization: Bearer KEY` header against the keys. Both sides are hashed first, so every
    comparison is of 32 bytes, and every key is compared, so the time taken says nothing about how much of a
    key matched, its length, or which key it was."""

    def __init__(self, keys: tuple[str, ...]):
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __call__(self, authorization: str | None) -> None:
        if not self._digests:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ServeError("no API key: send it as the header 'Authorization: Bearer KEY'", 401,
                             code="invalid_api_key")
        digest = hashlib.sha256(key.strip().encode()).digest()
        match = False
        for known in self._digests:
            match |= hmac.compare_digest(digest, known)
        if not match:
            raise ServeError("incorrect API key", 401, code="invalid_api_key")
