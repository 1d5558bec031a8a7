import pytest

from nanoseek.errors import ConfigError, ServeError
from nanoseek.serve.auth import KeyCheck, load_api_keys


def test_keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-one\n\n  sk-two  \n")
    assert load_api_keys(path) == ("sk-one", "sk-two")
    path.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="no API key"):
        load_api_keys(path)


def test_key_check():
    check = KeyCheck(("sk-one", "sk-two"))
    check("Bearer sk-one")
    check("bearer sk-two")
    for header, match in [(None, "no API key"), ("sk-one", "no API key"), ("Bearer ", "no API key"),
                          ("Bearer sk-on", "incorrect"), ("Bearer sk-one2", "incorrect"),
                          ("Basic sk-one", "no API key")]:
        with pytest.raises(ServeError, match=match) as e:
            check(header)
        assert e.value.status == 401


def test_no_keys_no_check():
    KeyCheck(())(None)
