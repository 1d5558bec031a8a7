import json

import pytest

from nanoseek.errors import ConfigError
from nanoseek.serve.pricing import Prices, load_prices


def test_default_prices_are_deepseek_v3():
    p = Prices()
    assert (p.input_cache_hit, p.input_cache_miss, p.output, p.currency) == (0.07, 0.27, 1.10, "USD")


def test_cost_by_hand():
    # 1M cache-hit tokens at $0.07, 2M misses at $0.27, 0.5M out at $1.10: 0.07 + 0.54 + 0.55 = $1.16
    cost = Prices().cost(1_000_000, 2_000_000, 500_000)
    assert cost == {"currency": "USD", "input_cache_hit": 0.07, "input_cache_miss": 0.54, "output": 0.55,
                    "total": 1.16}
    small = Prices().cost(64, 10, 3)   # 64*0.07e-6 + 10*0.27e-6 + 3*1.1e-6
    assert small["total"] == pytest.approx(4.48e-6 + 2.7e-6 + 3.3e-6, abs=1e-12)


def test_cache_hits_are_cheaper():
    assert Prices().cost(100, 0, 0)["total"] < Prices().cost(0, 100, 0)["total"]


def test_price_file_overrides(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"input_cache_miss": 0.55, "output": 2.19}))   # R1's prices
    p = load_prices(path)
    assert (p.input_cache_hit, p.input_cache_miss, p.output) == (0.07, 0.55, 2.19)


@pytest.mark.parametrize("content, match", [
    ('{"output": -1}', "output"),
    ('{"outputs": 1}', "unknown price fields"),
    ('{"output": "1.1"}', "output"),
    ('[1, 2]', "JSON object"),
    ('{', "not a JSON price table"),
])
def test_bad_price_files(tmp_path, content, match):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_prices(path)


def test_missing_price_file(tmp_path):
    with pytest.raises(ConfigError, match="no price file"):
        load_prices(tmp_path / "nope.json")
