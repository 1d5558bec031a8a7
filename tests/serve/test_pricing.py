import json
from datetime import datetime, timezone

import pytest

from nanoseek.errors import ConfigError
from nanoseek.serve.pricing import Prices, load_prices


def test_default_prices_are_deepseek_v3():
    p = Prices()
    assert (p.input_cache_hit, p.input_cache_miss, p.output, p.currency) == (0.07, 0.27, 1.10, "USD")


def test_cost_by_hand():
    # 1M cache-hit tokens at $0.07, 2M misses at $0.27, 0.5M out at $1.10: 0.07 + 0.54 + 0.55 = $1.16
    cost = Prices().cost(1_000_000, 2_000_000, 500_000)
    assert cost == {"currency": "USD", "period": "peak", "input_cache_hit": 0.07, "input_cache_miss": 0.54,
                    "output": 0.55, "total": 1.16}
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


@pytest.mark.parametrize("when, period", [
    ("2026-03-02T04:00+00:00", "peak"),        # noon in Beijing
    ("2026-03-02T16:29+00:00", "peak"),
    ("2026-03-02T16:30+00:00", "off_peak"),    # 00:30 in Beijing: off-peak begins
    ("2026-03-02T23:59+00:00", "off_peak"),
    ("2026-03-03T00:29+00:00", "off_peak"),
    ("2026-03-03T00:30+00:00", "peak"),        # 08:30 in Beijing: peak again
    ("2026-03-03T03:00+08:00", "off_peak"),    # any time zone: 19:00 UTC
])
def test_off_peak_hours_are_beijings_night(when, period):
    assert Prices().period(datetime.fromisoformat(when)) == period


def test_off_peak_costs_half():
    # 1M misses at $0.135, 1M out at $0.55 off-peak; the peak prices are twice that
    cost = Prices().cost(0, 1_000_000, 1_000_000, "off_peak")
    assert (cost["period"], cost["input_cache_miss"], cost["output"], cost["total"]) == ("off_peak", 0.135, 0.55, 0.685)
    assert Prices().cost(0, 1_000_000, 1_000_000)["total"] == 1.37


def test_off_peak_hours_of_a_price_file(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"off_peak_start": "01:00", "off_peak_end": "02:00", "off_peak_output": 0.1}))
    p = load_prices(path)
    assert p.period(datetime(2026, 1, 1, 1, 30, tzinfo=timezone.utc)) == "off_peak"
    assert p.period(datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc)) == "peak"
    with pytest.raises(ConfigError, match="off_peak_start"):
        Prices(off_peak_start="25:00")
