import subprocess
import sys

import pytest
import torch

from nanoseek.config import ModelConfig
from nanoseek.cost import flops_per_token, measure_matmul_peak, parse_amount, serving_price_per_million, training_cost
from nanoseek.errors import ConfigError


def test_flops_of_a_small_config_counted_by_hand():
    c = ModelConfig(vocab_size=10, hidden_size=4, num_hidden_layers=2, first_k_dense_replace=1,
                    num_attention_heads=2, q_lora_rank=None, kv_lora_rank=2, qk_nope_head_dim=2,
                    qk_rope_head_dim=2, v_head_dim=2, n_routed_experts=4, num_experts_per_tok=1, n_group=1,
                    topk_group=1, n_shared_experts=1, moe_intermediate_size=3, intermediate_size=5,
                    num_nextn_predict_layers=1)
    # per layer, attention weights a token multiplies: q 4x8, kv_a 4x4, kv_b 2x8, o 4x4 = 32 + 16 + 16 + 16
    attention = 80
    dense = 3 * 4 * 5                            # gate, up, down
    moe = 4 * 4 + 3 * 4 * 3 + 3 * 4 * 3          # router + shared expert + one routed expert
    head = 10 * 4
    main = attention + dense + attention + moe + head
    mtp = 8 * 4 + attention + moe + head         # eh_proj, the MTP block (an MoE block), the shared head again
    seq = 7
    scores = 3 * 2 * 2 * (4 + 2) * (seq + 1) / 2  # 3 attention layers, 2 heads, q.k over 4 and p.v over 2
    assert flops_per_token(c, seq, training=False) == 2 * (main + mtp) + scores
    assert flops_per_token(c, seq) == 3 * (2 * (main + mtp) + scores)
    assert flops_per_token(c, seq, training=False, mtp=False) == 2 * main + scores * 2 / 3


def test_v3_report_hours_and_dollars_reproduce():
    v3 = ModelConfig.from_preset("deepseek-v3")
    solved = training_cost(v3, 14.8e12, 4096, 989e12, hours=2.788e6, price=2)
    again = training_cost(v3, 14.8e12, 4096, 989e12, mfu=solved["mfu"], price=2)
    assert again["device_hours"] == pytest.approx(2.788e6)
    assert again["dollars"] == pytest.approx(5.576e6)
    assert 0.2 < solved["mfu"] < 0.6


def test_cost_cli_prints_the_v3_figures():
    out = subprocess.run([sys.executable, "-m", "nanoseek", "cost", "deepseek-v3", "--tokens", "14.8T", "--gpu",
                          "h800", "--price", "2", "--hours", "2.788M"], capture_output=True, text=True, check=True)
    assert "2,788,000" in out.stdout and "$5,576,000" in out.stdout and "MFU" in out.stdout


def test_amounts_and_prices():
    assert parse_amount("14.8T") == 14.8e12 and parse_amount("2.788M") == 2.788e6 and parse_amount("1,000") == 1000
    with pytest.raises(ConfigError, match="abc"):
        parse_amount("abc")
    with pytest.raises(ConfigError, match="-3"):
        parse_amount("-3")
    assert serving_price_per_million(1000, 3.6) == pytest.approx(1.0)


def test_measuring_the_peak_leaves_the_random_stream_alone():
    """The training loop probes the peak after seeding: the run's random numbers must not depend on it."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    assert measure_matmul_peak(repeats=1) > 0
    assert torch.equal(torch.rand(4), expected)
