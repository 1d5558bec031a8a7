"""`nanoseek serve`: flags onto ServeConfig and EngineConfig (the server itself is stubbed out), and flag errors."""
import pytest

import nanoseek.serve
from nanoseek.cli import main


def test_flags_reach_the_configs(checkpoint, tmp_path, monkeypatch, capsys):
    keys, prices = tmp_path / "keys", tmp_path / "prices.json"
    keys.write_text("sk-a\nsk-b\n")
    prices.write_text('{"input_cache_miss": 0.55, "output": 2.19}')
    seen = {}
    monkeypatch.setattr(nanoseek.serve, "serve", lambda engine, config: seen.update(engine=engine, config=config))
    main(["serve", str(checkpoint), "--host", "0.0.0.0", "--port", "8123", "--api-key-file", str(keys),
          "--prices", str(prices), "--cache-mb", "8", "--max-queue", "3", "--max-body-bytes", "1000",
          "--default-max-tokens", "50", "--log-prompts"])
    c = seen["config"]
    assert (c.host, c.port, c.api_keys, c.max_queue, c.max_body_bytes, c.default_max_tokens, c.log_prompts) == \
        ("0.0.0.0", 8123, ("sk-a", "sk-b"), 3, 1000, 50, True)
    assert (c.prices.input_cache_hit, c.prices.input_cache_miss, c.prices.output) == (0.07, 0.55, 2.19)
    assert c.model_name == checkpoint.name and c.tls_cert is None
    assert seen["engine"].config.cache_mb == 8 and seen["engine"].config.prefix_cache
    err = capsys.readouterr().err
    assert "without TLS" in err and "without --api-key-file" not in err   # keys given, but plain HTTP off loopback
    assert "sk-a" not in repr(c)                                          # keys stay out of reprs and logs


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "{file}"], "TLS needs both a certificate and its key"),
    (["--tls-cert", "{missing}", "--tls-key", "{file}"], "no such file"),
    (["--api-key-file", "{missing}"], "no API key file"),
    (["--prices", "{missing}"], "no price file"),
    (["--max-queue", "0"], "max_queue must be >= 1"),
])
def test_flag_errors(checkpoint, tmp_path, capsys, flags, message):
    (tmp_path / "file.pem").write_text("x")
    flags = [f.format(file=tmp_path / "file.pem", missing=tmp_path / "missing") for f in flags]
    with pytest.raises(SystemExit) as e:
        main(["serve", str(checkpoint), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
