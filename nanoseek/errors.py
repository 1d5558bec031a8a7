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
