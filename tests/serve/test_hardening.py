"""What a hostile or careless client once broke: a corrupt prefix-cache file, malformed JSON, control tokens spelled
in message text, other sites' pages reaching the loopback server, bad TLS and key files."""
import httpx
from serve_helpers import LiveServer

from nanoseek.serve import ServeConfig

LONG = [{"role": "user", "content": "Count the apples: " + "one apple, " * 40}]   # several full cache blocks
HI = [{"role": "user", "content": "hello"}]


def metric(server, name: str) -> float:
    lines = httpx.get(f"{server.url}/metrics", headers=server.auth).text.splitlines()
    return float(next(line.split()[-1] for line in lines if line.startswith(name + " ")))


def test_a_corrupt_prefix_cache_file_costs_a_miss_not_the_server(checkpoint, tmp_path):
    folder = tmp_path / "prefix"
    first = LiveServer(checkpoint, ServeConfig(model_name="tiny", port=0), prefix_cache_dir=str(folder))
    try:
        with first.client() as client:
            client.chat.completions.create(model="tiny", messages=LONG, max_tokens=1)
    finally:
        first.close()
    files = sorted(folder.glob("*.safetensors"))
    assert files
    for file in files:                       # every entry truncated: the first block the prompt reads is bad
        file.write_bytes(file.read_bytes()[:64])
    second = LiveServer(checkpoint, ServeConfig(model_name="tiny", port=0), prefix_cache_dir=str(folder))
    try:
        with second.client() as client:
            r = client.chat.completions.create(model="tiny", messages=LONG, max_tokens=1)
            assert r.usage.prompt_cache_hit_tokens == 0
            client.chat.completions.create(model="tiny", messages=HI, max_tokens=1)
        assert httpx.get(f"{second.url}/health").json() == {"status": "ok"}
        assert metric(second, "nanoseek_prefix_cache_corrupt_files_total") == 1
    finally:
        second.close()
