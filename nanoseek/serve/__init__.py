"""Serving: an OpenAI/DeepSeek-compatible HTTP API over the inference engine, usage with context-cache hits and
prices, Prometheus metrics, and a chat page."""
from nanoseek.serve.app import create_app
from nanoseek.serve.config import ServeConfig
from nanoseek.serve.pricing import Prices, load_prices
from nanoseek.serve.server import build_server, serve

__all__ = ["Prices", "ServeConfig", "build_server", "create_app", "load_prices", "serve"]
