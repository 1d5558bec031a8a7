"""A real server on a loopback port, over a random tiny checkpoint with the shipped tokenizer: its replies are
gibberish, but the protocol around them is what the serve tests check."""
import threading
import time
from datetime import datetime, timezone

import openai
import torch

from nanoseek.checkpoint import save_checkpoint
from nanoseek.config import ModelConfig
from nanoseek.infer import Engine, EngineConfig
from nanoseek.model import Transformer
from nanoseek.serve import ServeConfig, build_server, create_app
from nanoseek.train.default_tokenizer import default_tokenizer


PEAK = datetime(2026, 3, 2, 4, 0, tzinfo=timezone.utc)        # noon in Beijing: peak prices


class LiveServer:
    """`create_app` under uvicorn in a thread, on a free loopback port. Its clock says `now` (a datetime, or a
    callable giving one): peak hours unless a test moves it."""

    def __init__(self, checkpoint, config: ServeConfig, cache_mb: float = 32.0, prefix_cache_dir=None, now=PEAK):
        self.engine = Engine(checkpoint, EngineConfig(cache_mb=cache_mb, prefix_cache_dir=prefix_cache_dir))
        self.config = config
        self.now = now
        self.app = create_app(self.engine, config, clock=lambda: self.now() if callable(self.now) else self.now)
        self.server = build_server(self.app, config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{config.scheme}://127.0.0.1:{self.port}"
        self.key = config.api_keys[0] if config.api_keys else "none"
        self.auth = {"Authorization": f"Bearer {self.key}"}

    @property
    def worker(self):
        return self.app.state.worker

    def client(self, key: str | None = None, base: str = "v1", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/{base}", api_key=key or self.key, max_retries=0, timeout=60,
                             **kwargs)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def tiny_checkpoint(path):
    torch.manual_seed(0)
    save_checkpoint(Transformer(ModelConfig.from_preset("tiny")), path)
    default_tokenizer().save(path)
    return path
