"""`nanoseek serve`: flags onto ServeConfig and EngineConfig (the server itself is stubbed out), and flag errors."""
import shutil
import socket
import subprocess

import pytest

import nanoseek.infer
import nanoseek.serve
from nanoseek.cli import main


def test_flags_reach_the_configs(checkpoint, tmp_path, monkeypatch, capsys):
    keys, prices = tmp_path / "keys", tmp_path / "prices.json"
    keys.write_text("sk-a\nsk-b\n")
    prices.write_text('{"input_cache_miss": 0.55, "output": 2.19}')
    seen = {}
    monkeypatch.setattr(nanoseek.serve, "serve", lambda engine, config, on_started: seen.update(engine=engine, config=config))
    main(["serve", str(checkpoint), "--host", "0.0.0.0", "--port", "8123", "--api-key-file", str(keys),
          "--prices", str(prices), "--cache-mb", "8", "--max-queue", "3", "--max-body-bytes", "1000",
          "--default-max-tokens", "50", "--log-prompts", "--allowed-hosts", "box.lan,chat.example"])
    c = seen["config"]
    assert (c.host, c.port, c.api_keys, c.max_queue, c.max_body_bytes, c.default_max_tokens, c.log_prompts) == \
        ("0.0.0.0", 8123, ("sk-a", "sk-b"), 3, 1000, 50, True)
    assert (c.prices.input_cache_hit, c.prices.input_cache_miss, c.prices.output) == (0.07, 0.55, 2.19)
    assert c.model_name == checkpoint.name and c.tls_cert is None and c.allowed_hosts == ("box.lan", "chat.example")
    assert seen["engine"].config.cache_mb == 8 and seen["engine"].config.prefix_cache
    err = capsys.readouterr().err
    assert "without TLS" in err and "without --api-key-file" not in err   # keys given, but plain HTTP off loopback
    assert "sk-a" not in repr(c)                                          # keys stay out of reprs and logs


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "{file}"], "TLS needs both a certificate and its key"),
    (["--tls-cert", "{missing}", "--tls-key", "{file}"], "no such file"),
    (["--api-key-file", "{missing}"], "no API key file"),
    (["--prices", "{missing}"], "no price file"),
    (["--max-queue", "0"], "--max-queue 0: expected an int >= 1"),
])
def test_flag_errors(checkpoint, tmp_path, capsys, flags, message):
    (tmp_path / "file.pem").write_text("x")
    flags = [f.format(file=tmp_path / "file.pem", missing=tmp_path / "missing") for f in flags]
    with pytest.raises(SystemExit) as e:
        main(["serve", str(checkpoint), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """Two self-signed certificates with their keys, the first key also encrypted."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    folder = tmp_path_factory.mktemp("pems")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                        "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt")],
                       check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(folder / "a.key"), "-aes256", "-passout", "pass:secret",
                    "-out", str(folder / "encrypted.key")], check=True, capture_output=True)
    (folder / "keys").mkdir()
    (folder / "latin1").write_bytes("sk-caf\xe9\n".encode("latin-1"))
    return folder


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "a.crt", "--tls-key", "b.key"], "b.key is not the key of the certificate"),
    (["--tls-cert", "a.key", "--tls-key", "a.key"], "a.key is not a PEM certificate"),
    (["--tls-cert", "a.crt", "--tls-key", "a.crt"], "a.crt is not a PEM private key"),
    (["--tls-cert", "a.crt", "--tls-key", "encrypted.key"], "is protected by a passphrase"),
    (["--api-key-file", "keys"], "cannot read the API key file"),
    (["--api-key-file", "latin1"], "is not UTF-8 text"),
])
def test_bad_tls_and_key_files_are_one_line_before_the_model_loads(checkpoint, pems, monkeypatch, capsys, flags,
                                                                     message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the files were checked")

    monkeypatch.setattr(nanoseek.infer, "Engine", no_model)
    with pytest.raises(SystemExit) as e:
        main(["serve", str(checkpoint), *(f if f.startswith("--") else str(pems / f) for f in flags)])
    out = capsys.readouterr()
    assert e.value.code == 2 and message in out.err and len(out.err.splitlines()) == 1, out.err
    assert "serving" not in out.out


def test_serving_is_printed_only_once_the_port_is_bound(checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as e:
            main(["serve", str(checkpoint), "--port", str(taken.getsockname()[1])])
    assert e.value.code != 0 and "serving" not in capsys.readouterr().out
