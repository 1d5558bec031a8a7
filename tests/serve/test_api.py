"""The API end to end: a real server on a loopback port, driven by the official openai client (raw HTTP where the
client hides what is tested)."""
import json
import socket
import time

import httpx
import openai
import pytest

from nanoseek.serve.pricing import Prices

HI = [{"role": "user", "content": "What is 2 + 3?"}]


def metrics(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth).text
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                     if line and not line.startswith("#"))}


def check_usage(usage, n_tokens=None):
    u = usage.model_dump()
    assert u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == u["prompt_tokens"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert 0 <= u["completion_tokens_details"]["reasoning_tokens"] <= u["completion_tokens"]
    expected = Prices().cost(u["prompt_cache_hit_tokens"], u["prompt_cache_miss_tokens"], u["completion_tokens"],
                             "peak")
    assert u["cost"] == pytest.approx(expected)
    if n_tokens is not None:
        assert u["completion_tokens"] == n_tokens
    return u


def test_models(server):
    assert [m.id for m in server.client().models.list()] == ["tiny", "deepseek-reasoner", "deepseek-chat"]
    assert server.client().models.retrieve("tiny").owned_by == "nanoseek"


def test_chat(server):
    r = server.client().chat.completions.create(model="tiny", messages=HI, max_tokens=6, seed=1)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    # the tiny random model rarely closes its thinking: the fields are there, split as reasoning.py says
    assert isinstance(choice.message.reasoning_content, str) and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = check_usage(r.usage)
    assert u["completion_tokens"] <= 6 and u["prompt_tokens"] > len("What is 2 + 3?") // 4


def test_chat_stream_agrees_with_whole_reply(server):
    client = server.client()
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=10, seed=5)
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=10, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    deltas = [c.choices[0].delta for c in chunks[:-1] if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert len([d for d in deltas if getattr(d, "reasoning_content", None) or d.content]) >= 2   # it streamed
    assert (reasoning, content) == (whole.choices[0].message.reasoning_content, whole.choices[0].message.content)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert check_usage(chunks[-1].usage) == whole.usage.model_dump()


def test_shared_prefix_hits_the_cache_and_costs_less(server):
    system = {"role": "system", "content": "You are a patient tutor who explains every step of the working. " * 4}
    client = server.client()
    first, second = (client.chat.completions.create(
        model="tiny", messages=[system, {"role": "user", "content": q}], max_tokens=1, temperature=0)
        for q in ("Add 12 and 30.", "Add 12 and 31."))
    a, b = check_usage(first.usage, 1), check_usage(second.usage, 1)
    assert a["prompt_tokens"] == b["prompt_tokens"] > 48
    assert a["prompt_cache_hit_tokens"] == 0 and b["prompt_cache_hit_tokens"] >= 32
    assert b["prompt_tokens_details"]["cached_tokens"] == b["prompt_cache_hit_tokens"]
    assert b["cost"]["input_cache_hit"] > 0 and b["cost"]["total"] < a["cost"]["total"]


def test_n_samples(server):
    client = server.client()
    one = client.chat.completions.create(model="tiny", messages=HI, max_tokens=1)
    r = client.chat.completions.create(model="tiny", messages=HI, n=2, max_tokens=4, seed=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == one.usage.prompt_tokens          # one prompt, prefilled once
    assert 2 <= check_usage(r.usage)["completion_tokens"] <= 8       # both samples' tokens
    seen = set()
    for chunk in client.chat.completions.create(model="tiny", messages=HI, n=2, max_tokens=4, stream=True):
        seen |= {c.index for c in chunk.choices}
    assert seen == {0, 1}


def test_stop_string(server):
    client = server.client()
    text = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, seed=11).choices[0].text
    k = next(k for k in range(2, len(text) - 2) if "\ufffd" not in text[k:k + 2] and text[k:k + 2].strip())
    stop = text[k:k + 2]
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, seed=11, stop=[stop])
    assert r.choices[0].text == text[:text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", messages=HI, max_tokens=12, seed=4)
    whole = chat.choices[0].message.reasoning_content
    k = next(k for k in range(2, len(whole) - 2) if "\ufffd" not in whole[k:k + 2] and whole[k:k + 2].strip())
    cut = client.chat.completions.create(model="tiny", messages=HI, max_tokens=12, seed=4, stop=whole[k:k + 2])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.reasoning_content == whole[:whole.index(whole[k:k + 2])]


def test_logprobs(server):
    client = server.client()
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=3, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        top = [t.logprob for t in entry.top_logprobs]
        assert len(top) == 2 and 0 >= top[0] >= top[1] and entry.logprob <= top[0] + 1e-6
    c = client.completions.create(model="tiny", prompt="1 + 1 =", max_tokens=3, logprobs=1)
    assert len(c.choices[0].logprobs.tokens) == len(c.choices[0].logprobs.token_logprobs) == 3
    assert "".join(c.choices[0].logprobs.tokens) == c.choices[0].text


def test_completions_stream(server):
    chunks = list(server.client().completions.create(model="tiny", prompt="x =", max_tokens=5, stream=True,
                                                     stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_wrong_or_missing_key(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="sk-wrong").chat.completions.create(model="tiny", messages=HI, max_tokens=1)
    assert e.value.code == "invalid_api_key"
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny", "messages": HI})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_bad_parameter_is_named(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="tiny", messages=HI, temperature=-1)
    assert e.value.param == "temperature" and "temperature" in e.value.message
    assert e.value.body["type"] == "invalid_request_error"


def test_unknown_model(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="deepseek-v9", messages=HI)
    assert e.value.param == "model" and e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4o")


def test_body_over_limit(server):
    huge = [{"role": "user", "content": "x" * 2_000_000}]
    with pytest.raises(openai.APIStatusError) as e:
        server.client().chat.completions.create(model="tiny", messages=huge)
    assert e.value.status_code == 413 and e.value.code == "request_too_large"


def test_client_that_leaves_mid_stream_frees_its_cache(server):
    before = metrics(server)
    # seeded, so that the reply runs the whole 900 tokens (see the test below): unseeded, an early end-of-sequence
    # sometimes finishes it before the client leaves, and nothing is cancelled
    body = {"model": "tiny", "messages": HI, "max_tokens": 900, "stream": True, "seed": 1}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers=server.auth) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: ")
            if events == 4:
                assert metrics(server)["nanoseek_cache_free_blocks"] < before["nanoseek_cache_blocks"]
                break
    m = wait_until_idle(server, before)
    assert m["nanoseek_completion_tokens_total"] - before["nanoseek_completion_tokens_total"] < 900


def wait_until_idle(server, before, deadline_s=20) -> dict:
    """Polls /metrics until no request runs and every cache block is free again; checks one more cancellation."""
    deadline = time.monotonic() + deadline_s
    while True:
        m = metrics(server)
        if m["nanoseek_requests_running"] == 0 and m["nanoseek_cache_free_blocks"] == m["nanoseek_cache_blocks"]:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    assert m["nanoseek_requests_cancelled_total"] == before["nanoseek_requests_cancelled_total"] + 1
    return m


def test_client_that_leaves_a_whole_reply_frees_its_cache(server):
    before = metrics(server)
    # a seed whose reply runs the whole 900 tokens (about 5 s); unseeded, about one reply in twelve ends with an
    # early end-of-sequence inside the client's patience, and the client never leaves
    body = {"model": "tiny", "messages": HI, "max_tokens": 900, "seed": 1}
    with pytest.raises(httpx.ReadTimeout):   # gives up waiting, and closes the connection
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=server.auth,
                   timeout=httpx.Timeout(10, read=0.5))
    m = wait_until_idle(server, before)
    assert m["nanoseek_completion_tokens_total"] - before["nanoseek_completion_tokens_total"] < 900


def test_metrics(server):
    server.client().chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    m = metrics(server)
    assert m['nanoseek_requests_total{path="/v1/chat/completions",status="200"}'] >= 1
    assert m["nanoseek_completion_tokens_total"] >= 2 and m["nanoseek_prompt_tokens_total"] > 0
    ttft = "nanoseek_time_to_first_token_seconds"
    assert m[ttft + '_bucket{le="+Inf"}'] == m[ttft + "_count"] >= 1
    assert m["nanoseek_request_duration_seconds_count"] >= 1 and m["nanoseek_queue_length"] == 0
    assert 0 <= m["nanoseek_prompt_cache_hit_ratio"] <= 1


def test_health_and_page(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<title>nanoseek chat</title>" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text      # nothing from a CDN
    for path in ("/docs", "/redoc", "/openapi.json"):                        # FastAPI's pages load a CDN's scripts
        assert httpx.get(f"{server.url}{path}").status_code == 404


def test_no_outbound_connection_and_no_prompt_in_logs(server, monkeypatch, caplog):
    """While a request is served, every connection anything in this process opens is to the loopback server, and
    the prompt appears in no log record."""
    opened = []
    connect = socket.socket.connect

    def recording(self, address):
        opened.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording)
    secret = "my card number is 4111 1111"
    with caplog.at_level("DEBUG"):
        r = server.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": secret}],
                                                    max_tokens=3)
    assert opened and all(a[0] in ("127.0.0.1", "::1") for a in opened), opened
    reply = r.choices[0].message.reasoning_content
    assert all(secret not in rec.getMessage() and (not reply or reply not in rec.getMessage())
               for rec in caplog.records)


def test_malformed_json(server):
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json",
                   headers={**server.auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{server.url}/v1/nothing", headers=server.auth)
    assert r.status_code == 404 and "error" in r.json()
    assert json.loads(r.text)["error"]["type"] == "invalid_request_error"
