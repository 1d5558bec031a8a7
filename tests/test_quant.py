"""nanoseek/quant.py and the quantized checkpoints of nanoseek/checkpoint.py: each format's error bound (checked
against references written plainly here), the packing, the modules against dequantize-then-matmul, file round trips,
the size targets, a trained model that keeps its answers, clear errors for bad scales, and `nanoseek quantize`."""
import json
import math

import pytest
import torch
from checkpoint_helpers import stored_state
from safetensors import safe_open
from safetensors.torch import save_file

from nanoseek import quant
from nanoseek.checkpoint import load_checkpoint, save_checkpoint, save_quantized
from nanoseek.checkpoint.hf import hf_name
from nanoseek.cli import main
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError, ConfigError
from nanoseek.gptq import hessians
from nanoseek.train.evaluate import generate
from nanoseek.model import Transformer

# Shapes chosen to reach every path: int4 in groups of 64 (K = 192, 320) and of 32 (K = 96), int8 where 32 does not
# divide K (48), rows padded for the int4 kernel (kv_a: 72 rows), FP8 blocks partial at the edge (192, 320, 72).
CONFIG = ModelConfig(vocab_size=96, hidden_size=192, intermediate_size=320, moe_intermediate_size=48,
                     num_hidden_layers=2, num_attention_heads=2, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=16,
                     qk_rope_head_dim=8, v_head_dim=24, n_routed_experts=4, n_group=2, topk_group=1,
                     num_experts_per_tok=2, num_nextn_predict_layers=1, max_position_embeddings=64)


def make_model(config: ModelConfig = CONFIG, seed: int = 0) -> Transformer:
    """Random weights whose magnitudes differ by orders between rows and columns, so a scale applied to the wrong
    row, group or block shows; norms around 1; a routing bias."""
    g = torch.Generator().manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                for w in p if p.ndim == 3 else [p]:  # the routed experts' stacks: each expert's matrix alike
                    rows = torch.exp(2 * torch.randn(w.shape[0], 1, generator=g))
                    cols = torch.exp(torch.randn(1, w.shape[1], generator=g))
                    w.copy_(torch.randn(w.shape, generator=g) * rows * cols * w.shape[1] ** -0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model


def stored_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def rewrite(directory, change) -> None:
    file = directory / "model.safetensors"
    tensors = stored_tensors(directory)
    change(tensors)
    save_file({name: t.contiguous() for name, t in tensors.items()}, file, metadata={"format": "pt"})


def quantized_layers(model):
    """Name -> Int8Linear, Int4Linear or QuantizedStack (a routed experts' projection, one matrix per expert)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, quant.QUANTIZED)}


def spread_matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Gaussian values with row and column magnitudes spread over orders, one outlier, one all-zero row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp(2 * torch.randn(rows, 1, generator=g))
    w = w * torch.exp(torch.randn(1, cols, generator=g))
    w[1, 5] = 50 * w[1].abs().max()
    w[2] = 0
    return w


# ---- int8 and int4: |w - q s| <= s / 2 --------------------------------------------------------------------------
def test_int8_error_is_within_half_a_step_of_its_row():
    w = spread_matrix(40, 200)
    q, scale = quant.quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.bfloat16 and scale.shape == (40,)
    s = scale.float().unsqueeze(1)
    err = (quant.dequantize_int8(q, scale) - w).abs()
    assert (err <= s / 2 * (1 + 1e-6)).all()
    assert q.abs().max() == 127 and (q.abs().amax(1)[s.squeeze(1) > 0] >= 126).all()  # scales are tight
    assert scale[2] == 0 and (q[2] == 0).all()  # the zero row
    assert torch.equal(quant.dequantize_int8(q, scale), q.float() * s)


@pytest.mark.parametrize("G", [32, 64, 128])
def test_int4_error_is_within_half_a_step_of_its_group(G):
    w = spread_matrix(24, 256, seed=G)
    packed, scale = quant.quantize_int4(w, G)
    assert packed.dtype == torch.uint8 and packed.shape == (24, 128)
    assert scale.dtype == torch.bfloat16 and scale.shape == (24, 256 // G)
    s = scale.float().repeat_interleave(G, 1)  # group j covers columns j*G .. (j+1)*G - 1
    got = quant.dequantize_int4(packed, scale)
    assert ((got - w).abs() <= s / 2 * (1 + 1e-6)).all()
    q = quant.unpack_int4(packed)
    assert q.min() >= -7 and q.max() <= 7
    assert torch.equal(got, q.float() * s)
    assert ((got - w).abs() > 0).any()


def test_int4_packing_round_trips_all_16_values_two_per_byte():
    q = torch.arange(-8, 8, dtype=torch.int8)
    q = torch.stack([q, q.flip(0), q.roll(3)])                     # (3, 16): every value in both nibbles
    packed = quant.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 8)
    for r in range(3):
        for j in range(8):  # low nibble column 2j, high nibble 2j+1, each stored as q + 8
            assert packed[r, j] == (int(q[r, 2 * j]) + 8) | ((int(q[r, 2 * j + 1]) + 8) << 4)
    assert torch.equal(quant.unpack_int4(packed), q)
    everything = torch.arange(256, dtype=torch.uint8).view(2, 128)  # and every byte back
    assert torch.equal(quant.pack_int4(quant.unpack_int4(everything)), everything)


# ---- FP8 e4m3 in 128x128 blocks ---------------------------------------------------------------------------------
def fp8_blocks_plainly(w: torch.Tensor, block: int = 128) -> torch.Tensor:
    """scale_inv per block, as DeepSeek's release defines it: max|w| over the block / 448."""
    rows, cols = w.shape
    scale = torch.empty(math.ceil(rows / block), math.ceil(cols / block))
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            scale[i, j] = w[i * block:(i + 1) * block, j * block:(j + 1) * block].abs().max() / 448
    return scale


def test_fp8_error_is_within_e4m3_rounding_of_its_block():
    w = spread_matrix(300, 200)  # partial edge blocks in both directions
    w[:128, :128] *= 1e-3        # blocks of very different scales
    w[140:150, 130:140] = 1e-6 * w[140:150, 130:140].sign()  # values deep in the subnormal range of their block
    w[256:, 128:] = 0            # an all-zero block
    q, scale_inv = quant.quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert scale_inv.dtype == torch.float32
    torch.testing.assert_close(scale_inv, fp8_blocks_plainly(w), rtol=0, atol=0)
    s = scale_inv.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    got = quant.dequantize_fp8(q, scale_inv)
    # e4m3: 3 mantissa bits, so |err| <= 2^-4 |w| for normal values; below 2^-6 (in units of s) the subnormals are
    # spaced 2^-9, so |err| <= 2^-10 s there
    assert ((got - w).abs() <= 2**-4 * w.abs() + 2**-10 * s).all()
    assert scale_inv[2, 1] == 0 and (got[256:, 128:] == 0).all()
    assert (q.float().abs().amax() == 448)  # the largest value of a block maps onto e4m3's largest


# ---- the modules ------------------------------------------------------------------------------------------------
# K = 24 and 40: torch's int8 kernel computes garbage there on AVX-512 unless K is padded (quant.INT8_K_MULTIPLE)
@pytest.mark.parametrize("kind, N, K, G", [("int8", 72, 48, 0), ("int8", 32, 24, 0), ("int8", 24, 40, 0),
                                           ("int4", 72, 192, 64), ("int4", 48, 96, 32)])
def test_quant_linear_computes_x_times_dequantized_weight(kind, N, K, G):
    w = spread_matrix(N, K)
    if kind == "int8":
        q, scale = quant.quantize_int8(w)
        dequantized = quant.dequantize_int8(q, scale)
    else:
        q, scale = quant.quantize_int4(w, G)
        dequantized = quant.dequantize_int4(q, scale)
    layer = quant.quant_linear(kind, q, scale, G)
    assert (layer.in_features, layer.out_features) == (K, N)
    x = torch.randn(2, 5, K, generator=torch.Generator().manual_seed(1))
    y = layer(x)
    assert y.shape == (2, 5, N) and y.dtype == torch.float32
    # the kernels take bf16 activations, accumulate in float32 and round the output to bf16
    expected = x.bfloat16().float() @ dequantized.T
    assert ((y - expected).abs() <= 2**-8 * expected.abs() + 1e-4 * expected.abs().max()).all()
    if kind == "int8":
        assert torch.equal(layer.weight, dequantized)


def test_int8_layer_takes_tensors_off_a_64_byte_boundary():
    """A tensor read from a safetensors file, or a bf16 activation sliced from a wider one, may start anywhere;
    torch's int8 kernel crashed the process on such operands (seen on a quantized checkpoint in the engine)."""
    N, K = 64, 128
    q, scale = quant.quantize_int8(spread_matrix(N, K))
    shifted_q = torch.empty(N * K + 8, dtype=torch.int8)[8:].view(N, K).copy_(q)
    shifted_scale = torch.empty(N + 3, dtype=scale.dtype)[3:].copy_(scale)
    assert shifted_q.data_ptr() % 32 and shifted_scale.data_ptr() % 32
    layer = quant.quant_linear("int8", shifted_q, shifted_scale, 0)
    wide = torch.randn(4, K + 4, generator=torch.Generator().manual_seed(2)).bfloat16()
    x = wide.flatten()[4:4 + 3 * K].view(3, K)  # bf16, contiguous, 8 bytes past an allocation's start
    assert x.data_ptr() % 32
    expected = x.float() @ quant.dequantize_int8(q, scale).T
    assert torch.allclose(layer(x).float(), expected, rtol=2**-7, atol=1e-3 * expected.abs().max().item())


def test_quantize_model_swaps_block_matrices_only(tmp_path):
    model = quant.quantize_model(make_model(), "int4")
    layers = quantized_layers(model)
    assert "layers.0.self_attn.q_a_proj" in layers and "mtp.0.mlp.experts.down_proj" in layers
    kinds = {name: type(m).__name__ for name, m in layers.items()}
    assert kinds["layers.0.self_attn.kv_b_proj"] == "Int8Linear"       # read as a matrix by absorbed decoding
    assert layers["layers.1.mlp.experts.down_proj"].q.dtype == torch.int8  # K = 48: no int4 group divides it
    assert layers["layers.1.mlp.experts.up_proj"].q.shape == (4, 48, 96)   # int4, two per byte, per expert
    assert layers["layers.0.self_attn.q_b_proj"].group_size == 32       # K = 96: 64 does not divide it
    assert layers["layers.0.mlp.down_proj"].group_size == 64
    for kept in ("lm_head", "mtp.0.eh_proj"):
        assert isinstance(model.get_submodule(kept), torch.nn.Linear)
    assert isinstance(model.layers[1].mlp.gate.weight, torch.nn.Parameter)
    with pytest.raises(ConfigError, match="fp8"):
        quant.quantize_model(make_model(), "fp8")
    # in memory as through a file, GPTQ included: the same integers and scales, the experts' in expert order
    fitted = hessians(make_model(), torch.randint(0, CONFIG.vocab_size, (4, 16)).tolist())
    fitted_layers = quantized_layers(quant.quantize_model(make_model(), "int4", hessians=fitted))
    save_quantized(make_model(), tmp_path / "int4", "int4", hessians=fitted)
    loaded = quantized_layers(load_checkpoint(tmp_path / "int4"))
    assert loaded.keys() == fitted_layers.keys() == layers.keys()
    for name, layer in fitted_layers.items():
        assert all(torch.equal(a, b) for a, b in zip(layer.buffers(), loaded[name].buffers(), strict=True)), name
    experts = "layers.1.mlp.experts.gate_proj"
    assert not torch.equal(fitted_layers[experts].q, layers[experts].q)  # GPTQ moved some of the experts' integers


# ---- files ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8", "bf16"])
def test_round_trip_through_files_is_within_each_formats_bound(fmt, tmp_path):
    model = make_model()
    save_quantized(model, tmp_path / fmt, fmt)
    stored = stored_tensors(tmp_path / fmt)
    config = json.loads((tmp_path / fmt / "config.json").read_text())
    weights = stored_state(model)
    names = {name: hf_name(name, CONFIG) if fmt == "fp8" else name for name in weights}
    loaded = load_checkpoint(tmp_path / fmt)
    loaded_state = stored_state(loaded)
    layers = quantized_layers(loaded)
    n_quantized = 0
    for name, w in weights.items():
        t = stored[names[name]]
        kind, G = quant.stored_as(name, tuple(w.shape), fmt)
        if kind is None:  # higher precision: bf16, the routing bias float32
            wanted = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
            assert t.dtype == wanted and torch.equal(t, w.to(wanted)), name
            assert torch.equal(loaded_state[name], t.float()), name
            continue
        n_quantized += 1
        if kind == "fp8":
            s = stored[names[name] + "_scale_inv"]
            got = quant.dequantize_fp8(t, s)
            s = s.repeat_interleave(128, 0)[: w.shape[0]].repeat_interleave(128, 1)[:, : w.shape[1]]
            assert ((got - w).abs() <= 2**-4 * w.abs() + 2**-10 * s).all(), name
            assert torch.equal(loaded_state[name], got), name
            continue
        s = stored[name + "_scale"]
        got = quant.dequantize_int8(t, s) if kind == "int8" else quant.dequantize_int4(t, s)
        step = s.float().unsqueeze(1) if kind == "int8" else s.float().repeat_interleave(G, 1)
        assert ((got - w).abs() <= step / 2 * (1 + 1e-6)).all(), name
        if ".experts." in name:  # a routed expert's matrix: its projection's stack holds it, at its index
            stack, e, projection, _ = name.rsplit(".", 3)
            assert torch.equal(layers[f"{stack}.{projection}"][int(e)], got), name
            continue
        layer = layers[name.removesuffix(".weight")]
        x = torch.randn(3, w.shape[1])
        expected = x.bfloat16().float() @ got.T
        assert ((layer(x) - expected).abs() <= 2**-8 * expected.abs() + 1e-4 * expected.abs().max()).all(), name
    if fmt == "bf16":
        assert "quantization_config" not in config and n_quantized == 0
    elif fmt == "fp8":
        assert n_quantized > 0 and not layers
    else:
        assert n_quantized == sum(len(m.q) if isinstance(m, quant.QuantizedStack) else 1 for m in layers.values()) > 0
    if fmt == "int4":
        assert config["quantization_config"] == {"quant_method": "nanoseek", "format": "int4", "group_size": 64}


def test_fp8_output_is_deepseeks_layout(tmp_path):
    save_quantized(make_model(), tmp_path / "fp8", "fp8")
    config = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert config["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                             "weight_block_size": [128, 128]}
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["torch_dtype"] == "bfloat16"
    stored = stored_tensors(tmp_path / "fp8")
    mtp = f"model.layers.{CONFIG.num_hidden_layers}"
    w, s = stored[f"{mtp}.mlp.experts.1.up_proj.weight"], stored[f"{mtp}.mlp.experts.1.up_proj.weight_scale_inv"]
    assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (1, 2)
    assert stored["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (1, 2)
    assert stored["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    assert stored["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    for kept in ("lm_head.weight", "model.embed_tokens.weight", f"{mtp}.eh_proj.weight",
                 f"{mtp}.shared_head.head.weight", f"{mtp}.embed_tokens.weight"):
        assert stored[kept].dtype == torch.bfloat16 and kept + "_scale_inv" not in stored


@torch.no_grad()
def test_fp8_output_loads_in_transformers_fp8_path_with_the_same_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers' FP8 loader requires it
    # block-aligned shapes: on the CPU transformers dequantizes with a block size taken from weight / scale grid,
    # which is right only when every block is whole or a dimension has a single block
    config = CONFIG.replace(hidden_size=256, intermediate_size=256, moe_intermediate_size=64, kv_lora_rank=56)
    ours = make_model(config)
    save_quantized(ours, tmp_path, "fp8")
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                            dtype=torch.float32).eval()
    loaded = load_checkpoint(tmp_path)
    hf_state = hf.state_dict()
    compared = 0
    for name, t in loaded.state_dict().items():  # transformers fuses the experts, and has no MTP layer
        if hf_name(name, config) in hf_state:
            assert torch.equal(hf_state[hf_name(name, config)].float(), t), name
            compared += "_proj" in name
    assert compared >= 10
    ids = torch.randint(0, config.vocab_size, (2, 12))
    expected = loaded(ids)
    assert (hf(ids).logits - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_sizes_on_disk_and_in_memory(tmp_path):
    """The acceptance targets on the `tiny` preset: int8 <= 0.55x and int4 <= 0.30x the bf16 bytes of the weights
    they quantize, counting their scales; the whole checkpoint shrinks less (embedding and head stay bf16)."""
    model = Transformer(ModelConfig.from_preset("tiny"))
    save_quantized(model, tmp_path / "bf16", "bf16")
    whole_bf16 = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    for fmt, target, whole_target in (("int8", 0.55, 0.65), ("int4", 0.30, 0.45)):
        save_quantized(model, tmp_path / fmt, fmt)
        stored = stored_tensors(tmp_path / fmt)
        quantized = [n for n in stored if n + "_scale" in stored]
        disk = sum(stored[n].nbytes + stored[n + "_scale"].nbytes for n in quantized)
        bf16 = sum(2 * stored_state(model)[n].numel() for n in quantized)
        memory, memory_bf16 = quant.quantized_bytes(load_checkpoint(tmp_path / fmt))
        assert memory_bf16 == bf16
        assert disk / bf16 <= target and memory / bf16 <= target, (fmt, disk / bf16, memory / bf16)
        whole = (tmp_path / fmt / "model.safetensors").stat().st_size / whole_bf16
        assert whole <= whole_target, (fmt, whole)


# ---- a trained model keeps its answers --------------------------------------------------------------------------
def counting(batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """Sequences start + step * i (mod 64): the model must read the step off the context."""
    start = torch.randint(0, 64, (batch, 1), generator=g)
    step = torch.randint(1, 4, (batch, 1), generator=g)
    return (start + step * torch.arange(length)) % 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32,
                         qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=4, n_group=2,
                         topk_group=1, num_experts_per_tok=2, num_nextn_predict_layers=0, max_position_embeddings=64)
    model = Transformer(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        x = counting(16, 25, g)
        loss = model.losses(x[:, :-1], x[:, 1:]).total()
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("trained") / "fp32"
    save_checkpoint(model, path)
    return path


def greedy(model: Transformer, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """n tokens after each prompt row, decoded by the engine (absorbed attention over the latent cache)."""
    return torch.tensor(generate(model, prompt.tolist(), n, stop_id=None))


# bf16 also rounds the embeddings, norms and router that the other formats keep: together they can tip a token's
# expert choice near a tie, which moves its logits more than rounding does (3% on one CPU, each part alone <0.2%)
@pytest.mark.parametrize("fmt, rel_bound", [("bf16", 0.05), ("fp8", 0.05), ("int8", 0.02), ("int4", 0.2)])
@torch.no_grad()
def test_quantized_trained_model_keeps_its_logits_and_its_answers(trained, fmt, rel_bound, tmp_path):
    reference = load_checkpoint(trained)
    save_quantized(reference, tmp_path / fmt, fmt)
    model = load_checkpoint(tmp_path / fmt)
    seqs = counting(8, 24, torch.Generator().manual_seed(1))
    expected, got = reference(seqs), model(seqs)
    assert expected[:, 4:-1].argmax(-1).eq(seqs[:, 5:]).float().mean() > 0.95  # it learned to count
    rel = (got - expected).norm() / expected.norm()
    assert 0 < rel <= rel_bound
    assert torch.equal(got[:, 4:].argmax(-1), expected[:, 4:].argmax(-1))  # where the step is known
    prompt, continuation = seqs[:, :8], seqs[:, 8:16]
    answers = greedy(reference, prompt, 8)
    assert answers.eq(continuation).float().mean() > 0.9
    assert torch.equal(greedy(model, prompt, 8), answers)


@torch.no_grad()
def test_gptq_keeps_a_trained_models_logits_closer_than_rounding_to_nearest(trained, tmp_path):
    reference = load_checkpoint(trained)
    fitted = hessians(reference, counting(64, 24, torch.Generator().manual_seed(2)).tolist())  # calibration
    seqs = counting(8, 24, torch.Generator().manual_seed(1))                                  # held out
    expected = reference(seqs)
    error = {}
    for how, rounding in (("nearest", None), ("gptq", fitted)):
        save_quantized(reference, tmp_path / how, "int4", hessians=rounding)
        error[how] = (load_checkpoint(tmp_path / how)(seqs) - expected).norm() / expected.norm()
    assert error["gptq"] < 0.8 * error["nearest"]


# ---- errors -----------------------------------------------------------------------------------------------------
def nan_at_start(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


BAD_SCALES = {  # format, tensor, how it is spoiled, what the message says
    "int4 NaN": ("int4", "layers.1.mlp.experts.2.up_proj.weight_scale", nan_at_start, "non-finite"),
    "int4 dtype": ("int4", "layers.0.mlp.gate_proj.weight_scale", lambda t: t.float(), "torch.float32"),
    "int8 shape": ("int8", "layers.0.self_attn.o_proj.weight_scale", lambda t: t[:-1], r"\(191,\)"),
    "int8 negative": ("int8", "mtp.0.self_attn.q_a_proj.weight_scale", lambda t: -t, "negative"),
    "fp8 shape": ("fp8", "model.layers.0.mlp.down_proj.weight_scale_inv", lambda t: t[:, :1], r"\(2, 1\)"),
    "fp8 NaN": ("fp8", "model.layers.1.self_attn.q_b_proj.weight_scale_inv", nan_at_start, "nan"),
    "fp8 dtype": ("fp8", "model.layers.0.self_attn.o_proj.weight_scale_inv", lambda t: t.bfloat16(), "bfloat16"),
}


@pytest.mark.parametrize("case", BAD_SCALES)
def test_corrupt_or_mismatched_scale_is_named(case, tmp_path):
    fmt, name, spoil, message = BAD_SCALES[case]
    save_quantized(make_model(), tmp_path / fmt, fmt)
    rewrite(tmp_path / fmt, lambda t: t.update({name: spoil(t[name])}))
    with pytest.raises(CheckpointError, match=f"(?s){name}.*{message}"):
        load_checkpoint(tmp_path / fmt)


def test_missing_scale_wrong_weight_and_lost_config_are_named(tmp_path):
    save_quantized(make_model(), tmp_path / "int4", "int4")
    name = "layers.0.self_attn.q_a_proj.weight"
    rewrite(tmp_path / "int4", lambda t: t.pop(name + "_scale"))
    with pytest.raises(CheckpointError, match=name + "_scale"):
        load_checkpoint(tmp_path / "int4")
    save_quantized(make_model(), tmp_path / "int4", "int4")
    rewrite(tmp_path / "int4", lambda t: t.update({name: t[name].view(torch.int8)}))
    with pytest.raises(CheckpointError, match=f"{name}.*torch.int8.*torch.uint8"):
        load_checkpoint(tmp_path / "int4")
    save_quantized(make_model(), tmp_path / "int8", "int8")
    config_file = tmp_path / "int8" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "quantization_config"}))
    with pytest.raises(CheckpointError, match="torch.int8.*quantization_config"):
        load_checkpoint(tmp_path / "int8")
    config_file.write_text(json.dumps(dict(config, quantization_config={"quant_method": "nanoseek",
                                                                        "format": "int4", "group_size": 48})))
    with pytest.raises(CheckpointError, match="group_size 48"):
        load_checkpoint(tmp_path / "int8")


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match="'int5'"):
        save_quantized(make_model(), tmp_path / "x", "int5")
    with pytest.raises(ConfigError, match="group size.*48"):
        save_quantized(make_model(), tmp_path / "x", "int4", group_size=48)
    save_quantized(make_model(), tmp_path / "int8", "int8")
    with pytest.raises(CheckpointError, match="'cuda'"):  # before anything touches the device
        load_checkpoint(tmp_path / "int8", device="cuda")
    with pytest.raises(CheckpointError, match="already int8/int4"):
        save_quantized(load_checkpoint(tmp_path / "int8"), tmp_path / "again", "int4")
    with pytest.raises(CheckpointError, match="already int8/int4"):
        save_checkpoint(load_checkpoint(tmp_path / "int8"), tmp_path / "again")
    assert not (tmp_path / "x").exists() and not (tmp_path / "again").exists()


# ---- the command ------------------------------------------------------------------------------------------------
def test_cli_quantize_from_our_layout_and_from_hugging_face_layout(tmp_path, capsys):
    model = make_model()
    save_checkpoint(model, tmp_path / "ours")
    save_checkpoint(model, tmp_path / "hf", format="hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "ours" / name).write_text('{"kept": true}')
    # rounded to nearest: the tokenizer files are stand-ins (calibration is tests/test_gptq.py's)
    main(["quantize", str(tmp_path / "ours"), "--to", "int4", "--calibrate", "0", "--out", str(tmp_path / "from_ours")])
    assert "wrote int4 checkpoint" in capsys.readouterr().out
    main(["quantize", str(tmp_path / "hf"), "--to", "int4", "--calibrate", "0", "--out", str(tmp_path / "from_hf")])
    files = sorted(p.name for p in (tmp_path / "from_ours").iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    a, b = stored_tensors(tmp_path / "from_ours"), stored_tensors(tmp_path / "from_hf")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)  # the same weights, the same bytes
    ids = torch.randint(0, CONFIG.vocab_size, (1, 6))
    assert torch.equal(load_checkpoint(tmp_path / "from_ours")(ids), load_checkpoint(tmp_path / "from_hf")(ids))
    main(["quantize", str(tmp_path / "hf"), "--to", "fp8", "--out", str(tmp_path / "fp8")])
    # written for transformers, unused by MLA: head_dim (the rope width) and num_key_value_heads
    assert load_checkpoint(tmp_path / "fp8").config.replace(head_dim=None, num_key_value_heads=None) == CONFIG


@pytest.mark.parametrize("args, message", [(["--to", "int5"], "unknown quantization format 'int5'"),
                                           (["--to", "int4", "--group-size", "100"], "100"),
                                           (["--to", "int8"], "nowhere does not exist")])
def test_cli_quantize_errors_are_one_line(args, message, tmp_path, capsys):
    src = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit:
        main(["quantize", str(src), *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
