"""Auxiliary-loss-free balancing through the training loop (V3 §2.1.2): with the routing-bias update the experts'
load ends more even than without it, on the same data from the same initial weights."""
import json

import pytest
from train_helpers import RandomBatches, small_model

from nanoseek.train.loop import TrainConfig, lm_loss, train


def final_imbalance(tmp_path, gamma: float, steps: int) -> float:
    """Mean max/mean expert load over the MoE layers and the last 10 steps."""
    config = TrainConfig(max_steps=steps, batch_size=8, lr=1e-2, warmup_steps=5, bias_update_speed=gamma,
                         balance_weight=0.0, save_every=1000)
    train(small_model(), RandomBatches(batch_size=8, seq_len=32), lm_loss(0.3, 0.0), config, tmp_path / f"g{gamma}")
    records = [json.loads(line) for line in (tmp_path / f"g{gamma}" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records[-10:]]
    return sum(sum(r["expert_load"]) / len(r["expert_load"]) for r in last) / len(last)


def test_bias_update_evens_the_load(tmp_path):
    balanced, free = final_imbalance(tmp_path, 0.001, 60), final_imbalance(tmp_path, 0.0, 60)
    assert balanced < free


@pytest.mark.slow
def test_bias_update_evens_the_load_over_a_longer_run(tmp_path):
    balanced, free = final_imbalance(tmp_path, 0.001, 400), final_imbalance(tmp_path, 0.0, 400)
    assert balanced < 0.9 * free
