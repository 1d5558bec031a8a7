"""Tests for nanoseek/train/schedule.py and TrainConfig.lr_at, against values worked out by hand."""
import math

import pytest

from nanoseek.errors import ConfigError
from nanoseek.train.loop import TrainConfig
from nanoseek.train.schedule import warmup_cosine, warmup_stable_decay


def test_warmup_is_linear_up_to_the_peak():
    assert [warmup_cosine(s, 100, 1.0, 4, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_falls_from_peak_to_floor():
    lrs = [warmup_cosine(s, 100, 2.0, 10, 0.1) for s in range(100)]
    assert lrs[10] == pytest.approx(2.0, rel=1e-3)
    assert lrs[-1] == pytest.approx(0.2)
    mid = 10 + (99 - 10) / 2
    assert warmup_cosine(int(mid), 100, 2.0, 10, 0.1) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_wsd_holds_the_peak_then_decays():
    lrs = [warmup_stable_decay(s, 100, 1.0, 5, 20, 0.1) for s in range(100)]
    assert lrs[4] == 1.0 and set(lrs[5:80]) == {1.0}
    assert lrs[80] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))


def test_config_dispatches_on_schedule():
    cosine = TrainConfig(max_steps=50, lr=1e-3, warmup_steps=5)
    wsd = TrainConfig(max_steps=50, lr=1e-3, warmup_steps=5, schedule="wsd", decay_fraction=0.2)
    assert cosine.lr_at(30) == warmup_cosine(30, 50, 1e-3, 5, 0.1)
    assert wsd.lr_at(30) == 1e-3 and wsd.lr_at(49) == pytest.approx(1e-4)


@pytest.mark.parametrize("changes, word", [({"lr": -1e-3}, "lr -0.001: expected a number > 0"), ({"lr": 0.0}, "lr 0.0"),
                                           ({"schedule": "linear"}, "'linear'"), ({"batch_size": 6, "micro_batch_size": 4}, "multiple"),
                                           ({"max_steps": 0}, "max_steps 0")])
def test_bad_values_name_themselves(changes, word):
    with pytest.raises(ConfigError, match=word):
        TrainConfig(**changes)
