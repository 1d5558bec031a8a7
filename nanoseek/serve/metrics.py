"""Prometheus metrics in the text exposition format, written by hand (no client library, nothing sent anywhere:
a scraper reads GET /metrics). Updated on the event loop only, so plain numbers suffice."""
from __future__ import annotations

from collections import Counter

from nanoseek.serve.worker import EngineWorker

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    def __init__(self):
        self.requests: Counter[tuple[str, int]] = Counter()   # (path, status) -> count
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.first_token = Histogram()
        self.latency = Histogram()

    def count_request(self, path: str, status: int) -> None:
        self.requests[path, status] += 1

    def observe_generation(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int,
                           first_token_s: float | None, latency_s: float) -> None:
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens
        self.completion_tokens += completion_tokens
        if first_token_s is not None:
            self.first_token.observe(first_token_s)
        self.latency.observe(latency_s)

    def render(self, worker: EngineWorker) -> str:
        lines = []

        def metric(name: str, kind: str, help_: str, *samples: str) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples])

        metric("nanoseek_requests_total", "counter", "HTTP requests answered, by path and status.",
               *(f'nanoseek_requests_total{{path="{path}",status="{status}"}} {n}'
                 for (path, status), n in sorted(self.requests.items())))
        metric("nanoseek_prompt_tokens_total", "counter", "Prompt tokens of finished generations.",
               f"nanoseek_prompt_tokens_total {self.prompt_tokens}")
        metric("nanoseek_prompt_cache_hit_tokens_total", "counter", "Prompt tokens served by the prefix cache.",
               f"nanoseek_prompt_cache_hit_tokens_total {self.cached_tokens}")
        metric("nanoseek_completion_tokens_total", "counter", "Tokens generated.",
               f"nanoseek_completion_tokens_total {self.completion_tokens}")
        ratio = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        metric("nanoseek_prompt_cache_hit_ratio", "gauge", "Share of prompt tokens served by the prefix cache.",
               f"nanoseek_prompt_cache_hit_ratio {ratio:.6f}")
        metric("nanoseek_requests_cancelled_total", "counter", "Generations cancelled, mostly by clients leaving.",
               f"nanoseek_requests_cancelled_total {worker.cancelled}")
        metric("nanoseek_queue_length", "gauge", "Requests waiting for their first token.",
               f"nanoseek_queue_length {worker.queued}")
        metric("nanoseek_requests_running", "gauge", "Requests the engine holds (prefilling or decoding).",
               f"nanoseek_requests_running {worker.running}")
        metric("nanoseek_cache_blocks", "gauge", "Blocks of the latent cache.",
               f"nanoseek_cache_blocks {worker.total_blocks}")
        metric("nanoseek_cache_free_blocks", "gauge", "Cache blocks no sequence holds (parked prefixes included).",
               f"nanoseek_cache_free_blocks {worker.free_blocks}")
        prefix = worker.engine.prefix
        metric("nanoseek_prefix_cache_corrupt_files_total", "counter",
               "Prefix cache files on disk that could not be read back, deleted (each a cache miss).",
               f"nanoseek_prefix_cache_corrupt_files_total {prefix.corrupt_files if prefix is not None else 0}")
        metric("nanoseek_time_to_first_token_seconds", "histogram", "From a request's arrival to its first token.",
               *self.first_token.lines("nanoseek_time_to_first_token_seconds"))
        metric("nanoseek_request_duration_seconds", "histogram", "From a request's arrival to its last token.",
               *self.latency.lines("nanoseek_request_duration_seconds"))
        return "\n".join(lines) + "\n"
