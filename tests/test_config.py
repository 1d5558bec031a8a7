import json
import subprocess
import sys

import pytest
import torch

from nanoseek.config import PRESETS, ModelConfig
from nanoseek.errors import ConfigError
from nanoseek.model import Transformer


def test_deepseek_v3_counts_match_the_report():
    counts = ModelConfig.from_preset("deepseek-v3").param_counts()
    assert abs(counts["total"] / 671e9 - 1) <= 0.01      # V3 report: 671B total
    assert abs(counts["active"] / 37e9 - 1) <= 0.03      # and 37B activated per token
    assert 10e9 < counts["mtp"] < 15e9                   # the MTP module, counted apart (report: 14B with embedding)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_counts_equal_the_built_model(name):
    config = ModelConfig.from_preset(name)
    with torch.device("meta"):
        model = Transformer(config)
    counts = config.param_counts()
    assert sum(p.numel() for p in model.parameters()) == counts["total"] + counts["mtp"]
    # active: everything but the routed experts a token does not use
    expert = 3 * config.hidden_size * config.moe_intermediate_size
    moe_main = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    unused = moe_main * (config.n_routed_experts - config.num_experts_per_tok) * expert
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    assert counts["active"] == main - unused


def test_tiny_is_a_few_million_and_small_about_100m():
    assert 2e6 < ModelConfig.from_preset("tiny").param_counts()["total"] < 10e6
    assert 70e6 < ModelConfig.from_preset("small").param_counts()["total"] < 150e6


def test_reads_hf_config_layouts():
    v3 = ModelConfig.from_preset("deepseek-v3")
    released = {**v3.to_dict(), "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
                "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}}
    assert ModelConfig.from_dict(released) == v3
    v5 = dict(released)
    v5.pop("rope_scaling")
    v5.pop("rope_theta")
    v5["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, **{k: v for k, v in released["rope_scaling"].items() if k != "type"}}
    assert ModelConfig.from_dict(v5).rope_scaling["factor"] == 40
    assert ModelConfig.from_dict(json.loads(json.dumps(ModelConfig().to_dict()))) == ModelConfig()


@pytest.mark.parametrize("changes,word", [
    (dict(n_routed_experts=6, n_group=4), "n_group"),
    (dict(topk_group=3, n_group=2), "topk_group"),
    (dict(scoring_func="relu"), "relu"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(qk_rope_head_dim=5), "qk_rope_head_dim"),
])
def test_bad_values_are_named(changes, word):
    with pytest.raises(ConfigError, match=word):
        ModelConfig(**changes)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="tiny"):
        ModelConfig.from_preset("gpt-5")


def test_info_cli_prints_v3_figures():
    out = subprocess.run([sys.executable, "-m", "nanoseek", "info", "deepseek-v3"], capture_output=True, text=True,
                         check=True).stdout
    assert "671.03B" in out and "37.55B" in out and "MTP parameters" in out and "56.9x" in out


def test_every_subcommand_has_help():
    from nanoseek.cli import COMMANDS

    for name in COMMANDS:
        r = subprocess.run([sys.executable, "-m", "nanoseek", name, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: nanoseek " + name in r.stdout, name


def test_bad_model_name_is_one_line_error():
    r = subprocess.run([sys.executable, "-m", "nanoseek", "info", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'nope'" in r.stderr


@pytest.mark.parametrize("changes, words", [
    (dict(hidden_size="192"), "hidden_size '192': expected an int"),
    (dict(num_hidden_layers=4.5), "num_hidden_layers 4.5: expected an int"),
    (dict(num_experts_per_tok=True), "num_experts_per_tok True: expected an int"),
    (dict(n_group=0), "n_group 0: expected an int > 0"),
    (dict(moe_intermediate_size=-8), "moe_intermediate_size -8: expected an int > 0"),
    (dict(n_shared_experts=-1), "n_shared_experts -1: expected an int >= 0"),
    (dict(q_lora_rank="96"), "q_lora_rank '96': expected an int or none"),
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps nan: expected a finite number"),
    (dict(rope_theta=1), "rope_theta 1: expected a number > 1"),
    (dict(norm_topk_prob="yes"), "norm_topk_prob 'yes': expected a bool"),
    (dict(scoring_func=None), "scoring_func None: expected a string"),
    (dict(eos_token_id=-1), "eos_token_id -1: expected an int >= 0"),
    (dict(rope_scaling="yarn"), "rope_scaling 'yarn': expected an object or none"),
    (dict(rope_scaling={"type": "yarn", "factor": float("inf"), "original_max_position_embeddings": 4096}),
     "rope_scaling.factor inf: expected a positive number"),
    (dict(rope_scaling={"type": "yarn", "factor": 4}), "rope_scaling.original_max_position_embeddings"),
])
def test_every_field_is_checked_for_type_and_range(changes, words):
    """As config.json gives them (NaN included): one ConfigError naming the field, never a traceback from deeper."""
    d = json.loads(json.dumps({**ModelConfig().to_dict(), **changes}))
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(d)
    assert words in str(e.value)
