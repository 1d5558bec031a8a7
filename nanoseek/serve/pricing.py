"""API prices: dollars per million tokens, with cache-hit input cheaper than cache-miss input (DeepSeek's context
caching on disk), and off-peak rates: DeepSeek charges half outside Beijing's peak hours, from 00:30 to 08:30 Beijing
time (16:30 to 00:30 UTC). The defaults are DeepSeek's published prices for V3 (deepseek-chat); a JSON file
overrides them. A reply is priced at the rates of the moment its request arrived, and `usage.cost.period` says which."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import datetime, time, timezone
from pathlib import Path

from nanoseek.errors import ConfigError


@dataclass(frozen=True)
class Prices:
    input_cache_hit: float = 0.07    # USD per million prompt tokens served from the prefix cache
    input_cache_miss: float = 0.27   # USD per million prompt tokens computed
    output: float = 1.10             # USD per million completion tokens
    off_peak_input_cache_hit: float = 0.035   # the same, off-peak
    off_peak_input_cache_miss: float = 0.135
    off_peak_output: float = 0.55
    off_peak_start: str = "16:30"    # UTC, HH:MM: off-peak hours begin (00:30 in Beijing)
    off_peak_end: str = "00:30"      # UTC, HH:MM: and end (08:30 in Beijing)
    currency: str = "USD"

    def __post_init__(self):
        for name in ("off_peak_start", "off_peak_end"):
            value = getattr(self, name)
            try:
                time.fromisoformat(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a UTC time as HH:MM, got {value!r}") from None
        for name in ("input_cache_hit", "input_cache_miss", "output", "off_peak_input_cache_hit",
                     "off_peak_input_cache_miss", "off_peak_output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"price {name} must be a number >= 0 (per million tokens), got {value!r}")
        if not isinstance(self.currency, str) or not self.currency:
            raise ConfigError(f"currency must be a non-empty string, got {self.currency!r}")

    def period(self, when: datetime) -> str:
        """"peak" or "off_peak" at the moment `when` (an aware datetime, any time zone)."""
        now = when.astimezone(timezone.utc).time()
        start, end = time.fromisoformat(self.off_peak_start), time.fromisoformat(self.off_peak_end)
        off = start <= now < end if start <= end else now >= start or now < end   # the span may cross midnight
        return "off_peak" if off else "peak"

    def cost(self, cache_hit_tokens: int, cache_miss_tokens: int, output_tokens: int, period: str = "peak") -> dict:
        """The price of one response in `period`, as `usage.cost`."""
        rate = (lambda name: getattr(self, "off_peak_" + name)) if period == "off_peak" else \
            (lambda name: getattr(self, name))
        parts = {"input_cache_hit": cache_hit_tokens * rate("input_cache_hit") / 1e6,
                 "input_cache_miss": cache_miss_tokens * rate("input_cache_miss") / 1e6,
                 "output": output_tokens * rate("output") / 1e6}
        # rounded to a billionth of a cent, so sums print without float noise
        parts = {k: round(v, 11) for k, v in parts.items()}
        return {"currency": self.currency, "period": period, **parts, "total": round(sum(parts.values()), 11)}


def load_prices(path: str | Path) -> Prices:
    """Read a JSON object with any of the fields of `Prices`, e.g. {"input_cache_miss": 0.55, "output": 2.19}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no price file at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a JSON price table: {e}") from None
    fields = [f.name for f in dataclasses.fields(Prices)]
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object with some of {fields}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{path} has unknown price fields {unknown}; expected some of {fields}")
    return Prices(**data)
