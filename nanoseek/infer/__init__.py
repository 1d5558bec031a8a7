"""Inference: the paged latent cache, sampling, prefix caching, continuous batching and MTP speculative decoding."""
from nanoseek.infer.engine import Engine, EngineConfig, cache_mb
from nanoseek.infer.request import EngineStats, Update
from nanoseek.infer.sampler import SamplingParams

__all__ = ["Engine", "EngineConfig", "EngineStats", "SamplingParams", "Update", "cache_mb"]
