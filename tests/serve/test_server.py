"""The server's edges, on a server of its own: HTTPS with a self-signed certificate, prompts logged when asked to,
429 when the queue is full, 503 once shutdown has begun; and a server whose engine fails."""
import asyncio
import shutil
import ssl
import subprocess

import httpx
import openai
import pytest
from serve_helpers import LiveServer

from nanoseek.serve import ServeConfig

HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tls_server(checkpoint, tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    live = LiveServer(checkpoint, ServeConfig(model_name="tiny", port=0, tls_cert=str(cert), tls_key=str(key),
                                              max_queue=1, default_max_tokens=4, log_prompts=True))
    live.trust = ssl.create_default_context(cafile=str(cert))
    yield live
    live.close()


def test_https_and_prompt_logging(tls_server, caplog):
    assert tls_server.url.startswith("https://")
    with caplog.at_level("INFO", logger="nanoseek.serve"), \
            tls_server.client(http_client=openai.DefaultHttpxClient(verify=tls_server.trust)) as client:
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "log me"}],
                                           max_tokens=2)
    assert r.usage.completion_tokens <= 2
    assert any("log me" in rec.getMessage() and r.id in rec.getMessage() for rec in caplog.records)  # --log-prompts
    with pytest.raises(httpx.HTTPError):     # plain HTTP gets nothing from a TLS port
        httpx.get(tls_server.url.replace("https://", "http://") + "/health")
    with pytest.raises(httpx.ConnectError):  # nor does a client that does not trust the certificate
        httpx.get(tls_server.url + "/health")


def test_full_queue_is_429(tls_server):
    """max_queue=1: of requests arriving together, those that find one already waiting for its first token get 429."""
    async def burst():
        async with httpx.AsyncClient(verify=tls_server.trust, timeout=60) as client:
            body = {"model": "tiny", "messages": HI, "max_tokens": 2}
            return await asyncio.gather(*(client.post(f"{tls_server.url}/v1/chat/completions", json=body)
                                          for _ in range(8)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    refused = next(r for r in responses if r.status_code == 429).json()["error"]
    assert (refused["type"], refused["code"]) == ("rate_limit_error", "queue_full")
    assert tls_server.worker.queued == 0


def test_shutting_down_is_503(tls_server):
    tls_server.worker.drain()
    # clients are closed after use here: an idle TLS connection would hold up the server's shutdown
    with tls_server.client(http_client=openai.DefaultHttpxClient(verify=tls_server.trust)) as client, \
            pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    assert e.value.status_code == 503 and e.value.code == "shutting_down"
    assert httpx.get(tls_server.url + "/health", verify=tls_server.trust).status_code == 503


def test_engine_failure_fails_requests_not_the_server(checkpoint, monkeypatch):
    """A bug in the engine: its requests end with an error, later ones get 503, /health says so, and the process
    lives on to say it."""
    live = LiveServer(checkpoint, ServeConfig(model_name="tiny", port=0))
    try:
        def broken():
            raise RuntimeError("simulated engine bug")

        monkeypatch.setattr(live.engine, "step", broken)
        with live.client() as client:
            with pytest.raises(openai.InternalServerError) as e:
                client.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
            assert e.value.status_code == 500 and "simulated engine bug" in e.value.message
            with pytest.raises(openai.InternalServerError) as e:
                client.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
            assert e.value.status_code == 503 and e.value.code == "engine_failed"
        assert httpx.get(f"{live.url}/health").json() == {"status": "failed"}
    finally:
        live.close()
