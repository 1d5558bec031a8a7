import json
import math

import pytest
import torch
from checkpoint_helpers import stored_state
from safetensors import safe_open
from safetensors.torch import save_file

from nanoseek.checkpoint import files, load
from nanoseek import load_checkpoint, save_checkpoint
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError, NanoseekError
from nanoseek.model import Transformer

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                   v_head_dim=8, n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2,
                   num_nextn_predict_layers=1, max_position_embeddings=64)


def make_model(config: ModelConfig = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1, 0.1)  # norms: not the all-ones they start at
    return model


def assert_same_state(a: Transformer, b: Transformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def assert_usable(model: Transformer) -> None:
    """Loaded in eval mode, nothing left on the meta device, and it runs."""
    assert not model.training
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    model(torch.randint(0, model.config.vocab_size, (1, 5)))


def deepseek_release_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """The layout of DeepSeek's V3/R1 release, written out plainly: `model.` prefix, MTP module k as decoder layer
    num_hidden_layers + k with its final norm under shared_head and copies of the embedding and the head."""
    L = model.config.num_hidden_layers
    out = {}
    for name, t in stored_state(model).items():
        if name.startswith("mtp."):
            k, rest = name.split(".", 2)[1:]
            rest = "shared_head.norm.weight" if rest == "norm.weight" else rest
            out[f"model.layers.{L + int(k)}.{rest}"] = t.clone()
        elif name == "lm_head.weight":
            out[name] = t.clone()
        else:
            out["model." + name] = t.clone()
    for k in range(model.config.num_nextn_predict_layers):
        out[f"model.layers.{L + k}.embed_tokens.weight"] = model.embed_tokens.weight.detach().clone()
        out[f"model.layers.{L + k}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    return out


def deepseek_release_config(config: ModelConfig, **extra) -> dict:
    d = config.to_dict()
    d.update(rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=16, beta_fast=32, beta_slow=1,
                               mscale=1.0, mscale_all_dim=1.0),
             num_key_value_heads=config.num_attention_heads, topk_method="noaux_tc", torch_dtype="bfloat16", **extra)
    return d


def write_deepseek_release(directory, tensors: dict, config: dict) -> None:
    """Two shards and an index, as DeepSeek ships it."""
    directory.mkdir()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, directory / file, metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config))


# ---- round trips ------------------------------------------------------------------------------------------------
def test_nanoseek_round_trip_is_exact_and_keeps_mtp(tmp_path):
    model = make_model()
    save_checkpoint(model, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == TINY and len(loaded.mtp) == 1
    assert_same_state(model, loaded)
    assert_usable(loaded)
    ids = torch.randint(0, TINY.vocab_size, (2, 7))
    assert torch.equal(model.eval()(ids), loaded(ids))


def test_tied_embeddings_are_saved_once_and_tied_on_load(tmp_path):
    model = make_model(TINY.replace(tie_word_embeddings=True))
    for format in ("nanoseek", "hf"):
        save_checkpoint(model, tmp_path / format, format=format)
        with safe_open(tmp_path / format / "model.safetensors", "pt") as f:
            assert "lm_head.weight" not in f.keys()
        loaded = load_checkpoint(tmp_path / format)
        assert loaded.lm_head.weight is loaded.embed_tokens.weight
        assert_same_state(model, loaded)


def test_sharded_round_trip(tmp_path):
    model = make_model()
    save_checkpoint(model, tmp_path / "ck", max_shard_bytes=40_000)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 2 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert "model.safetensors" not in files
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    state = stored_state(model)
    assert index["weight_map"].keys() == state.keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for shard in shards:  # no shard over the limit unless one tensor alone is
        with safe_open(tmp_path / "ck" / shard, "pt") as f:
            sizes = [f.get_tensor(n).numel() * 4 for n in f.keys()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1
    loaded = load_checkpoint(tmp_path / "ck")
    assert_same_state(model, loaded)


def test_load_in_bfloat16_keeps_routing_bias_in_float32(tmp_path):
    model = make_model()
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck", dtype=torch.bfloat16)
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    bias = loaded.layers[1].mlp.gate.e_score_correction_bias
    assert bias.dtype == torch.float32 and torch.equal(bias, model.layers[1].mlp.gate.e_score_correction_bias)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


# ---- DeepSeek / Hugging Face layouts ----------------------------------------------------------------------------
def test_deepseek_release_layout_loads_mtp(tmp_path):
    model = make_model()
    write_deepseek_release(tmp_path / "ds", deepseek_release_tensors(model), deepseek_release_config(TINY))
    loaded = load_checkpoint(tmp_path / "ds")
    assert len(loaded.mtp) == 1 and loaded.config.rope_scaling["factor"] == 4.0
    state = loaded.state_dict()
    for name, t in model.state_dict().items():  # MTP included: enorm, hnorm, eh_proj, block, shared_head.norm
        assert torch.equal(state[name], t), name
    assert_usable(loaded)


def test_hf_export_matches_deepseek_release_layout(tmp_path):
    model = make_model()
    save_checkpoint(model, tmp_path / "hf", format="hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        saved = {n: f.get_tensor(n) for n in f.keys()}
    expected = deepseek_release_tensors(model)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[n], expected[n]) for n in saved)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["architectures"] == ["DeepseekV3ForCausalLM"]
    assert config["num_key_value_heads"] == TINY.num_attention_heads and config["torch_dtype"] == "float32"


def fp8_quantize(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain block quantization: per block, scale = amax / 448 (e4m3's largest finite value), q = w / scale."""
    rows, cols = w.shape
    scale = torch.empty(math.ceil(rows / block), math.ceil(cols / block))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            scale[i, j] = blk.abs().max() / 448
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (blk / scale[i, j]).to(torch.float8_e4m3fn)
    return q, scale


def test_fp8_release_is_dequantized_within_e4m3_rounding(tmp_path):
    # widths that are not multiples of 128 (partial edge blocks) and larger than one block
    config = TINY.replace(vocab_size=96, hidden_size=160, intermediate_size=200, moe_intermediate_size=72,
                          q_lora_rank=136)
    model = make_model(config)
    tensors = deepseek_release_tensors(model)
    g = torch.Generator().manual_seed(0)
    originals = {}
    for name in [n for n in tensors if n.endswith("proj.weight")]:
        w = tensors[name]
        w = w * torch.exp(2 * torch.randn(w.shape[0] // 64 + 1, 1, generator=g)).repeat_interleave(64, 0)[: w.shape[0]]
        originals[name] = w  # block magnitudes differ by orders, so a misplaced scale shows
        tensors[name], tensors[name + "_scale_inv"] = fp8_quantize(w)
    assert any(max(t.shape) > 128 and t.shape[0] % 128 for t in originals.values())
    quant = dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8", weight_block_size=[128, 128])
    write_deepseek_release(tmp_path / "fp8", tensors, deepseek_release_config(config, quantization_config=quant))
    state = stored_state(load_checkpoint(tmp_path / "fp8"))
    for name, w in originals.items():
        ours = name.removeprefix("model.").replace(f"layers.{config.num_hidden_layers}.", "mtp.0.")
        got = state[ours]
        # e4m3 rounds to nearest with 3 mantissa bits: relative error <= 2^-4 for normals; below 2^-6 (subnormals,
        # spacing 2^-9) the absolute error is <= 2^-10, in units of the block's scale.
        scale = tensors[name + "_scale_inv"].repeat_interleave(128, 0).repeat_interleave(128, 1)
        scale = scale[: w.shape[0], : w.shape[1]]
        err = (got - w).abs()
        assert (err <= 2**-4 * w.abs() + 2**-10 * scale).all(), name
        assert err.max() > 0  # it really went through FP8
    assert torch.equal(state["embed_tokens.weight"], model.embed_tokens.weight)


def test_fp8_tensor_without_scale_names_it(tmp_path):
    model = make_model()
    tensors = deepseek_release_tensors(model)
    name = "model.layers.0.self_attn.o_proj.weight"
    tensors[name] = tensors[name].to(torch.float8_e4m3fn)
    write_deepseek_release(tmp_path / "fp8", tensors, deepseek_release_config(TINY))
    with pytest.raises(CheckpointError, match=name + "_scale_inv"):
        load_checkpoint(tmp_path / "fp8")


def test_hf_checkpoint_without_mtp_loads_without_mtp_and_says_so(tmp_path, capsys):
    model = make_model(TINY.replace(num_nextn_predict_layers=0))
    save_checkpoint(model, tmp_path / "hf", format="hf")
    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(json.dumps(dict(json.loads(config_file.read_text()), num_nextn_predict_layers=1)))
    capsys.readouterr()
    loaded = load_checkpoint(tmp_path / "hf")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "MTP" in err and str(tmp_path / "hf") in err
    assert len(loaded.mtp) == 0 and loaded.config.num_nextn_predict_layers == 0
    assert_same_state(model, loaded)


# ---- refusals and errors ----------------------------------------------------------------------------------------
def test_too_large_is_refused_before_reading_any_tensor(tmp_path, monkeypatch):
    model = make_model()
    save_checkpoint(model, tmp_path / "ck")
    state = model.state_dict()
    bf16_bytes = sum(t.numel() * (4 if n.endswith("e_score_correction_bias") else 2) for n, t in state.items())
    assert load_checkpoint(tmp_path / "ck", dtype=torch.bfloat16, max_bytes=bf16_bytes) is not None

    def no_reads(*args):
        raise AssertionError("a tensor was read before the size check")

    monkeypatch.setattr(load, "read_float_tensor", no_reads)
    with pytest.raises(CheckpointError, match="GiB"):
        load_checkpoint(tmp_path / "ck", dtype=torch.bfloat16, max_bytes=bf16_bytes - 1)
    with pytest.raises(CheckpointError, match="float32"):  # the same limit is too small in float32
        load_checkpoint(tmp_path / "ck", max_bytes=bf16_bytes)


def test_available_memory_reads_meminfo():
    assert files.available_memory("cpu") > 0


@pytest.mark.parametrize("cut", ["tail", "header"])
def test_corrupt_file_is_named(tmp_path, cut):
    save_checkpoint(make_model(), tmp_path / "ck")
    file = tmp_path / "ck" / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-100] if cut == "tail" else data[:50])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ck")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(make_model(), tmp_path / "ck", max_shard_bytes=40_000)
    shard = sorted((tmp_path / "ck").glob("model-*.safetensors"))[1]
    shard.rename(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=shard.name):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(make_model(), tmp_path / "single")
    (tmp_path / "single" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "single")


def rewrite_weights(directory, change) -> None:
    file = directory / "model.safetensors"
    with safe_open(file, "pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    change(tensors)
    save_file(tensors, file)


def test_wrong_shape_missing_and_unexpected_tensors_are_named(tmp_path):
    save_checkpoint(make_model(), tmp_path / "ck")
    name = "layers.1.mlp.experts.3.up_proj.weight"
    rewrite_weights(tmp_path / "ck", lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(CheckpointError, match=rf"{name}.*\(15, 32\).*\(16, 32\)"):
        load_checkpoint(tmp_path / "ck")
    rewrite_weights(tmp_path / "ck", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(tmp_path / "ck")
    rewrite_weights(tmp_path / "ck", lambda t: t.update({name: torch.zeros(16, 32), "layers.9.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="layers.9.extra"):
        load_checkpoint(tmp_path / "ck")


def test_failed_save_leaves_the_existing_checkpoint_whole(tmp_path, monkeypatch):
    old = make_model(seed=0)
    save_checkpoint(old, tmp_path / "ck", max_shard_bytes=40_000)
    (tmp_path / "ck" / "tokenizer.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.iterdir())

    def fail_halfway(tensors, file, metadata=None):
        file.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(files, "save_file", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_model(seed=1), tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary directory left behind
    assert_same_state(old, load_checkpoint(tmp_path / "ck"))


def test_save_over_existing_replaces_weights_and_keeps_other_files(tmp_path):
    save_checkpoint(make_model(seed=0), tmp_path / "ck", max_shard_bytes=40_000)
    (tmp_path / "ck" / "tokenizer.json").write_text('{"kept": true}')
    new = make_model(seed=1)
    save_checkpoint(new, tmp_path / "ck")  # unsharded this time: the old shards and index must go
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((tmp_path / "ck" / "tokenizer.json").read_text()) == {"kept": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert_same_state(new, load_checkpoint(tmp_path / "ck"))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="'gguf'"):
        save_checkpoint(make_model(), tmp_path / "ck", format="gguf")


def test_hf_export_refuses_what_deepseek_v3_cannot_express(tmp_path):
    with pytest.raises(CheckpointError, match="softmax"):
        save_checkpoint(make_model(TINY.replace(scoring_func="softmax")), tmp_path / "ck", format="hf")
    assert not tmp_path.joinpath("ck").exists()


def test_gqa_student_exports_as_llama_and_loads_back(tmp_path):
    student = make_model(ModelConfig.from_preset("tiny-student").replace(vocab_size=64, num_hidden_layers=2))
    save_checkpoint(student, tmp_path / "llama", format="hf")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_key_value_heads"], config["head_dim"], config["tie_word_embeddings"]) == (2, 32, True)
    with safe_open(tmp_path / "llama" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == {"model." + name for name in student.state_dict() if name != "lm_head.weight"}
    loaded = load_checkpoint(tmp_path / "llama")
    assert loaded.config.attention_type == "gqa" and not loaded.moe_layers() and not len(loaded.mtp)
    assert_same_state(student, loaded)


@pytest.mark.parametrize("change, words", [(dict(rope_interleave=True), "rope_interleave=True"),
                                           (dict(num_nextn_predict_layers=1), "num_nextn_predict_layers=1"),
                                           (dict(n_routed_experts=4, first_k_dense_replace=1), "1 MoE layer")])
def test_llama_export_refuses_what_llama_cannot_express(tmp_path, change, words):
    config = ModelConfig.from_preset("tiny-student").replace(vocab_size=64, num_hidden_layers=2, **change)
    with pytest.raises(CheckpointError, match=words):
        save_checkpoint(make_model(config), tmp_path / "ck", format="hf")
    assert not tmp_path.joinpath("ck").exists()


@pytest.mark.parametrize("change, words", [
    (dict(num_hidden_layers=100_000), "num_hidden_layers=100000, but the weights hold 2 layers"),
    (dict(n_routed_experts=1_000_000), "n_routed_experts=1000000 from layer 1 on, but the weights hold "
                                       "layers.1.mlp.gate.weight of shape (4, 32)"),
    (dict(vocab_size=10**12), "vocab_size=1000000000000"),
])
def test_a_config_claiming_more_than_the_headers_is_refused_before_the_model_is_built(tmp_path, monkeypatch,
                                                                                      change, words):
    save_checkpoint(make_model(), tmp_path / "ck")
    file = tmp_path / "ck" / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))

    def no_model(config):
        raise AssertionError("the model was built before the config was checked against the weights")

    monkeypatch.setattr(load, "Transformer", no_model)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ck")
    assert words in str(e.value)


def test_a_config_json_of_the_wrong_types_is_one_error(tmp_path):
    save_checkpoint(make_model(), tmp_path / "ck")
    file = tmp_path / "ck" / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "n_group": 0, "rms_norm_eps": float("nan")}))
    with pytest.raises(NanoseekError, match="n_group 0: expected an int > 0"):
        load_checkpoint(tmp_path / "ck")
