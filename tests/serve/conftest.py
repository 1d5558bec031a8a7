"""Fixtures of the serve tests: one random tiny checkpoint, and the server most tests share."""
import pytest
from serve_helpers import LiveServer, tiny_checkpoint

from nanoseek.serve import ServeConfig

KEY = "sk-nanoseek-test"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def server(checkpoint):
    """The shared server: key required, a small default max_tokens so the chat page's replies end quickly."""
    live = LiveServer(checkpoint, ServeConfig(model_name="tiny", port=0, api_keys=(KEY,), default_max_tokens=24))
    yield live
    live.close()
