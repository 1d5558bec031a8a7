"""Load on `nanoseek serve`: many streaming clients at once against the same requests one at a time.

Starts `nanoseek serve` as its own process on a free loopback port (a random tiny checkpoint unless CKPT is given),
then runs two phases over raw HTTP with server-sent events:
  one at a time   --sequential requests, each waiting for the one before;
  concurrent      --clients clients, each sending --requests requests one after another.
Every request streams a chat reply of --max-tokens tokens at most (stream_options.include_usage gives its token
count). Per phase: errors, p50/p99 time to first token and latency, and generated tokens per second over the
phase's wall time. Continuous batching should give the concurrent phase several times the throughput (target 4x).
Bounded: everything on 127.0.0.1, each request --request-timeout seconds at most, the whole run --deadline seconds.
Exits non-zero if any request failed.

Usage: python benchmarks/serve_load.py [CKPT] [--clients 64] [--requests 4] [--sequential 8] [--max-tokens 16]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SYSTEM = "You are a careful tutor. Work through the problem step by step, then give the answer."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from nanoseek.checkpoint import save_checkpoint
    from nanoseek.config import ModelConfig
    from nanoseek.model import Transformer
    from nanoseek.train.default_tokenizer import default_tokenizer

    torch.manual_seed(0)
    save_checkpoint(Transformer(ModelConfig.from_preset("tiny")), folder)
    default_tokenizer().save(folder)
    return folder


async def one_request(client: httpx.AsyncClient, model: str, question: str, max_tokens: int, timeout: float) -> dict:
    """Stream one chat reply; returns its time to first token, latency and token count."""
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, None

    async def run():
        nonlocal first, tokens
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if first is None and any(c["delta"].get("content") or c["delta"].get("reasoning_content")
                                         for c in chunk["choices"]):
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        if tokens is None:
            raise RuntimeError("the stream ended without its usage")

    await asyncio.wait_for(run(), timeout)
    return {"ttft": first if first is not None else time.perf_counter() - start,
            "latency": time.perf_counter() - start, "tokens": tokens}


async def phase(url: str, model: str, clients: int, requests: int, max_tokens: int, timeout: float) -> dict:
    results, errors = [], []

    async def client_loop(i: int, client: httpx.AsyncClient):
        for j in range(requests):
            try:
                results.append(await one_request(client, model, f"Client {i}, question {j}: what is {17 * i + j} "
                                                                 f"plus {31 * j + 5}?", max_tokens, timeout))
            except Exception as e:   # every failure is counted and reported at the end
                errors.append(f"{type(e).__name__}: {e}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - start
    return {"results": results, "errors": errors, "wall": wall}


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99), interpolated between the measured values."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def row(name: str, stats: dict) -> tuple[str, float]:
    res = stats["results"]
    ttft, lat = [r["ttft"] for r in res], [r["latency"] for r in res]
    tokens = sum(r["tokens"] for r in res)
    tps = tokens / stats["wall"]
    return (f"| {name:<15} | {len(res) + len(stats['errors']):>8} | {len(stats['errors']):>6} | "
            f"{percentile(ttft, 50):>8.3f} | {percentile(ttft, 99):>8.3f} | {percentile(lat, 50):>8.3f} | "
            f"{percentile(lat, 99):>8.3f} | {tokens:>6} | {stats['wall']:>6.1f} | {tps:>8.1f} |"), tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None,
                    help="a checkpoint with tokenizer.json (default: a random tiny one)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4, help="requests per concurrent client")
    ap.add_argument("--sequential", type=int, default=8, help="requests of the one-at-a-time phase")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(Path(tmp) / "tiny")
        port, log = free_port(), open(Path(tmp) / "server.log", "w+")
        server = subprocess.Popen([sys.executable, "-m", "nanoseek", "serve", str(ckpt), "--host", "127.0.0.1",
                                   "--port", str(port), "--max-queue", str(max(256, args.clients))],
                                  stdout=log, stderr=subprocess.STDOUT)
        url, model = f"http://127.0.0.1:{port}", ckpt.resolve().name
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass   # not listening yet
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    sys.exit(f"the server did not start:\n{log.read()}")
                time.sleep(0.2)

            async def run():
                await phase(url, model, 1, 2, args.max_tokens, args.request_timeout)   # warm-up, not counted
                one = await phase(url, model, 1, args.sequential, args.max_tokens, args.request_timeout)
                many = await phase(url, model, args.clients, args.requests, args.max_tokens, args.request_timeout)
                return one, many

            one, many = asyncio.run(asyncio.wait_for(run(), args.deadline))
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()

    print(f"nanoseek serve {model}: streaming chat, max_tokens={args.max_tokens}, loopback")
    print("| phase           | requests | errors | TTFT p50 | TTFT p99 |  lat p50 |  lat p99 | tokens | wall s "
          "| tokens/s |")
    print("|-----------------|----------|--------|----------|----------|----------|----------|--------|--------"
          "|----------|")
    line_one, tps_one = row("one at a time", one)
    line_many, tps_many = row(f"{args.clients} x {args.requests} conc.", many)
    print(line_one)
    print(line_many)
    ratio = tps_many / tps_one if tps_one else float("nan")
    print(f"throughput {ratio:.1f}x one at a time (target >= 4x): {'met' if ratio >= 4 else 'NOT met'}")
    errors = one["errors"] + many["errors"]
    for e in errors[:10]:
        print(f"error: {e}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
