"""GPTQ (nanoseek/gptq.py): the layer's outputs on its calibration inputs, not its weights, stay close."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanoseek import quant
from nanoseek.checkpoint import load_checkpoint, save_checkpoint, save_quantized
from nanoseek.cli import main
from nanoseek.config import ModelConfig
from nanoseek.gptq import calibration_sequences, hessians
from nanoseek.model import Transformer
from nanoseek.train.default_tokenizer import default_tokenizer


def correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """n rows of k features mixed from k/4 sources, magnitudes spread over columns: what hidden states look like.
    The mixing is the same for every seed; the seed draws the rows."""
    fixed = torch.Generator().manual_seed(100)
    mix, columns = torch.randn(k // 4, k, generator=fixed), torch.exp(torch.randn(k, generator=fixed))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k // 4, generator=g) @ mix + 0.1 * torch.randn(n, k, generator=g)) * columns


def dequantized(fmt: str, w: torch.Tensor, hessian: torch.Tensor | None, G: int = 32) -> torch.Tensor:
    if fmt == "int8":
        return quant.dequantize_int8(*quant.quantize_int8(w, hessian))
    return quant.dequantize_int4(*quant.quantize_int4(w, G, hessian))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_uncorrelated_inputs_leave_nothing_to_compensate(fmt):
    """With a diagonal X^T X no column can absorb another's error: GPTQ rounds to nearest, bit for bit."""
    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(1))
    hessian = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(2)) + 0.5)
    assert torch.equal(dequantized(fmt, w, hessian), dequantized(fmt, w, None))


@pytest.mark.parametrize("fmt, G", [("int8", 0), ("int4", 32), ("int4", 64)])
def test_outputs_on_the_calibration_inputs_are_closer_than_rounding_to_nearest(fmt, G):
    X = correlated_inputs(1024, 128)
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(3))
    hessian = X.t() @ X
    gptq_w, rtn_w = dequantized(fmt, w, hessian, G), dequantized(fmt, w, None, G)
    error = (X @ (gptq_w - w).t()).norm() / (X @ (rtn_w - w).t()).norm()
    assert error < 0.3
    Y = correlated_inputs(1024, 128, seed=1)  # fresh inputs from the same distribution, not the fitted ones
    assert (Y @ (gptq_w - w).t()).norm() / (Y @ (rtn_w - w).t()).norm() < 0.3


def test_same_scales_and_range_as_rounding_to_nearest():
    """The stored layout does not change: the scale of a group is max|w| / 7 either way, q stays in [-7, 7]."""
    X = correlated_inputs(512, 64)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(4))
    w[3] = 0                                                  # an all-zero row: scale 0, q 0
    packed, scale = quant.quantize_int4(w, 32, X.t() @ X)
    _, rtn_scale = quant.quantize_int4(w, 32)
    q = quant.unpack_int4(packed)
    assert torch.equal(scale, rtn_scale)
    assert q.abs().max() <= 7 and not q[3].any()
    assert not torch.equal(packed, quant.quantize_int4(w, 32)[0])  # GPTQ did move some integers


CONFIG = ModelConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                     num_hidden_layers=2, num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32,
                     qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=4, n_group=1,
                     topk_group=1, num_experts_per_tok=2, num_nextn_predict_layers=1, max_position_embeddings=256)


@torch.no_grad()
def test_hessians_hold_each_layers_inputs_and_experts_see_only_their_tokens():
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    sequences = calibration_sequences(default_tokenizer(), 3)
    moe_inputs = []
    hook = model.layers[1].mlp.register_forward_pre_hook(lambda m, args: moe_inputs.append(args[0].flatten(0, 1)))
    sums = hessians(model, sequences)
    hook.remove()
    # the first attention projection reads the normed embeddings, computed here by hand
    X = torch.cat([model.layers[0].input_layernorm(model.embed_tokens(torch.tensor(s[:-1]))) for s in sequences])
    assert torch.allclose(sums["layers.0.self_attn.q_a_proj.weight"], X.t() @ X, rtol=1e-4, atol=1e-3)
    # every token goes to top-k routed experts and to the shared one, each reading the same input
    moe = "layers.1.mlp."
    routed = sum(sums[f"{moe}experts.{e}.gate_proj.weight"] for e in range(4) if f"{moe}experts.{e}.gate_proj.weight"
                 in sums)
    assert torch.allclose(routed, 2 * sums[moe + "shared_experts.gate_proj.weight"], rtol=1e-4, atol=1e-3)
    # a routed expert's down_proj reads the SwiGLU activation of the tokens routed to it, computed here plainly
    x = torch.cat(moe_inputs)
    _, indices, _ = model.layers[1].mlp.gate(x)
    experts = model.layers[1].mlp.experts
    for e in range(4):
        mine = x[(indices == e).any(dim=1)]
        h = F.silu(mine @ experts.gate_proj[e].T) * (mine @ experts.up_proj[e].T)
        assert torch.allclose(sums[f"{moe}experts.{e}.down_proj.weight"], h.T @ h, rtol=1e-4, atol=1e-3)
    assert "mtp.0.self_attn.q_a_proj.weight" in sums  # the MTP module ran too
    # every plain linear layer has its inputs, kv_b_proj too, though MLA uses it as a matrix rather than a module
    linears = {name + ".weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears <= sums.keys()
    assert model.training is False


def test_calibration_sequences_are_worked_training_problems():
    tokenizer = default_tokenizer()
    sequences = calibration_sequences(tokenizer, 8, seq_len=64)
    assert len(sequences) == 8 and all(0 < len(s) <= 64 for s in sequences)
    text = tokenizer.decode(sequences[0], skip_special=False)
    assert "<think>" in text                                   # the reasoning, as the model writes it


def test_cli_quantize_calibrates_by_default(tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(Transformer(CONFIG), tmp_path / "src")
    default_tokenizer().save(tmp_path / "src")
    main(["quantize", str(tmp_path / "src"), "--to", "int4", "--calibrate", "8", "--out", str(tmp_path / "gptq")])
    assert "GPTQ on 8 problems" in capsys.readouterr().out
    main(["quantize", str(tmp_path / "src"), "--to", "int4", "--calibrate", "0", "--out", str(tmp_path / "rtn")])
    gptq_model, rtn_model = load_checkpoint(tmp_path / "gptq"), load_checkpoint(tmp_path / "rtn")
    a = gptq_model.get_submodule("layers.1.mlp.shared_experts.down_proj")
    b = rtn_model.get_submodule("layers.1.mlp.shared_experts.down_proj")
    assert isinstance(a, quant.Int4Linear) and torch.equal(a.scale_and_zero, b.scale_and_zero)
    assert not torch.equal(a.packed, b.packed)
    a, b = (m.get_submodule("layers.1.mlp.experts.down_proj") for m in (gptq_model, rtn_model))
    assert isinstance(a, quant.QuantizedStack) and torch.equal(a.scale, b.scale) and not torch.equal(a.q, b.q)


@pytest.mark.parametrize("args, message", [(["--calibrate", "-1"], "got -1"),
                                           ([], "has no tokenizer.json; pass --calibrate 0")])
def test_cli_calibration_errors_are_one_line(args, message, tmp_path, capsys):
    save_checkpoint(Transformer(CONFIG), tmp_path / "src")
    with pytest.raises(SystemExit) as exit:
        main(["quantize", str(tmp_path / "src"), "--to", "int8", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
