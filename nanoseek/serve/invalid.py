"""The 400 a bad request field gets, in OpenAI's shape: the message names the field (`param`) and the value."""
from __future__ import annotations

from nanoseek.errors import ServeError


def invalid(param: str, message: str, code: str = "invalid_value") -> ServeError:
    return ServeError(f"Invalid '{param}': {message}", 400, param=param, code=code)


def short(value) -> str:
    """A value for an error message, cut short: a message may echo what the client sent, but not all of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
