"""Fuzzing the API as a hostile client would: any bytes, any JSON, near-valid requests with one field of any shape,
odd headers and paths. Whatever arrives, the answer is never a 5xx, and every error is JSON in OpenAI's format.

Derandomized, so CI runs the same examples every time and a failure reproduces; raise max_examples (or drop
derandomize) locally to search further."""
import json
import string
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import LiveServer

from nanoseek.serve import ServeConfig
from nanoseek.serve.requests import CHAT_FIELDS, COMPLETION_FIELDS

KEY = "sk-fuzz"
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# any text, lone surrogates included (json.dumps writes them as \ud800 escapes)
TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
NUMBERS = st.integers() | st.integers(min_value=2**63) | st.floats() | st.sampled_from([0, -1, 1e308, -0.0, 2**64])
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", ""]) | JSON
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": TEXT | JSON},
                                optional={"reasoning_content": TEXT | JSON, "name": JSON})
FIELD = TEXT | st.sampled_from(sorted(CHAT_FIELDS | COMPLETION_FIELDS))
# a request the engine takes generates at most a few tokens: small max_tokens, or so many the cache refuses them
VALUE = st.integers(-2, 3) | st.integers(min_value=2**31) | JSON
HEADER = st.text(st.sampled_from(string.printable.strip() + " é"), max_size=30).map(lambda v: v.strip().encode("l1"))


@pytest.fixture(scope="module")
def fuzzed(checkpoint):
    live = LiveServer(checkpoint, ServeConfig(model_name="tiny", port=0, api_keys=(KEY,), default_max_tokens=2),
                      cache_mb=0.25)
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client
    live.close()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["type"].endswith("_error"), error


def post(client: httpx.Client, path: str, body: bytes, **headers) -> None:
    check(client.post(path, content=body, headers={"Content-Type": "application/json", **headers}))


@FUZZ
@given(body=st.binary(max_size=200), chat=st.booleans())
def test_any_bytes(fuzzed, body, chat):
    post(fuzzed, "/v1/chat/completions" if chat else "/v1/completions", body)


@FUZZ
@given(body=JSON, chat=st.booleans())
def test_any_json(fuzzed, body, chat):
    post(fuzzed, "/v1/chat/completions" if chat else "/v1/completions", json.dumps(body).encode())


@FUZZ
@given(messages=st.lists(MESSAGE, max_size=3) | JSON, fields=st.dictionaries(FIELD, VALUE, max_size=4))
def test_near_valid_chat(fuzzed, messages, fields):
    body = {"model": "tiny", "messages": messages, "max_tokens": 2, **fields}
    post(fuzzed, "/v1/chat/completions", json.dumps(body).encode())


@FUZZ
@given(prompt=TEXT | st.lists(st.integers(-2, 3000), max_size=4) | JSON, fields=st.dictionaries(FIELD, VALUE,
                                                                                                max_size=4))
def test_near_valid_completion(fuzzed, prompt, fields):
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, **fields}
    post(fuzzed, "/v1/completions", json.dumps(body).encode())


@FUZZ
@given(host=st.sampled_from([b"127.0.0.1", b"localhost:8000", b"[::1]"]) | HEADER,
       kind=st.sampled_from([b"application/json", b"application/json; charset=latin-1"]) | HEADER,
       authorization=st.just(f"Bearer {KEY}".encode()) | HEADER)
def test_odd_headers(fuzzed, host, kind, authorization):
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
    check(fuzzed.post("/v1/chat/completions", content=body,
                      headers={"Host": host, "Content-Type": kind, "Authorization": authorization}))


@FUZZ
@given(model=TEXT, query=TEXT)
def test_odd_paths(fuzzed, model, query):
    def quoted(text: str) -> str:   # percent-escaped bytes, lone surrogates as the invalid UTF-8 they make
        return quote(text.encode("utf-8", "surrogatepass"), safe="")

    check(fuzzed.get(f"/v1/models/{quoted(model)}?api_key={quoted(query)}"))


GENERATING = settings(FUZZ, max_examples=60)   # most of these generate: fewer of them
PLAIN = st.text(max_size=12)                   # no lone surrogates: requests that get past the JSON check
SAMPLING = {"temperature": st.floats(0, 2), "top_p": st.floats(0, 1, exclude_min=True), "n": st.integers(1, 3),
            "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
            "stop": PLAIN.filter(bool) | st.lists(PLAIN.filter(bool), min_size=1, max_size=3),
            "seed": st.integers(0, 2**63 - 1), "max_tokens": st.integers(1, 3), "stream": st.booleans(),
            "user": PLAIN}


@GENERATING
@given(messages=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                 "content": PLAIN}), min_size=1, max_size=3),
       fields=st.fixed_dictionaries({}, optional={**SAMPLING, "logprobs": st.just(True),
                                                  "top_logprobs": st.integers(0, 20)}))
def test_valid_chat_of_any_values(fuzzed, messages, fields):
    body = {"model": "tiny", "messages": messages, **fields}
    if fields.get("stream"):
        body["stream_options"] = {"include_usage": True}
    post(fuzzed, "/v1/chat/completions", json.dumps(body).encode())


@GENERATING
@given(prompt=PLAIN.filter(bool) | st.lists(st.integers(0, 2047), min_size=1, max_size=8),
       fields=st.fixed_dictionaries({}, optional={**SAMPLING, "logprobs": st.integers(0, 20)}))
def test_valid_completion_of_any_values(fuzzed, prompt, fields):
    post(fuzzed, "/v1/completions", json.dumps({"model": "tiny", "prompt": prompt, **fields}).encode())
