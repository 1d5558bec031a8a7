"""The package's own exceptions. The CLI prints their message and exits non-zero, without a traceback."""


class NanoseekError(Exception):
    """Base class: bad input or a state the user can fix. The message names the bad value."""


class ConfigError(NanoseekError):
    """An invalid configuration value or an unknown preset."""


class CheckpointError(NanoseekError):
    """A missing, corrupt, mismatched or too-large checkpoint."""


class DataError(NanoseekError):
    """A missing, empty or malformed data file."""


class TokenizerError(NanoseekError):
    """A missing or corrupt tokenizer file, a vocabulary too small, or a malformed chat message."""


class InferenceError(NanoseekError):
    """A request the inference engine cannot serve: a bad sampling parameter, a prompt too long for the context
    or the cache, an unknown token id or request id."""


class ServeError(NanoseekError):
    """An API request the server refuses, in OpenAI's error format: the HTTP status, and the parameter at fault
    when there is one."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code
