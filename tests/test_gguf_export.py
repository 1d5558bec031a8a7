"""GGUF export, read back with the gguf package's own reader: tensors, llama.cpp's deepseek2 keys, the tokenizer and
the chat template. llama.cpp itself is not needed (benchmarks/decode_vs_llamacpp.py runs it)."""
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from nanoseek.checkpoint import save_checkpoint, save_quantized
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError, ConfigError, TokenizerError
from nanoseek.model import Transformer
from nanoseek.model.rope import apply_rope
from nanoseek.tokenizer import EXTRA_TOKENS, SPECIAL_TOKENS, Tokenizer, render_chat
from nanoseek.train.default_tokenizer import ASSETS

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'nanoseek[gguf]')")
from nanoseek.checkpoint.gguf import export_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["12345 + 678 = 7023", "it's, we'll, they'd've", "안녕하세요, 세계! 2024년", "🎉🚀 done 👍🏽",
         "  spaces\n\ttabs  ",
         "<｜User｜>what is 3*4?<｜Assistant｜><think>\n12\n</think>\n\n12<｜end▁of▁sentence｜>"]
# llama.cpp's pre-tokenizer "smollm" (src/llama-vocab.cpp): digits one by one, then GPT-2's regex
SMOLLM = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]


def checkpoint(path: Path, **changes) -> tuple[Transformer, Path]:
    """The tiny shape with random weights (a non-zero routing bias, so that it is seen) and the shipped tokenizer."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny").replace(**changes))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for moe in model.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.1)
    save_checkpoint(model, path)
    shutil.copy(ASSETS / "tokenizer.json", path)
    return model, path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """type -> the GGUFReader of the tiny checkpoint exported in that type."""
    out = tmp_path_factory.mktemp("gguf")
    types = ("f32", "f16", "bf16", "q8_0", "q4_0")
    return {t: gguf.GGUFReader(export_gguf(tiny[1], out / f"{t}.gguf", t)[0]) for t in types}


def tensors(reader) -> dict[str, np.ndarray]:
    """name -> float32 values in numpy's order (the reverse of ggml's ne), dequantized."""
    out = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    return out


def expected(model: Transformer) -> dict[str, torch.Tensor]:
    """Our tensors under llama.cpp's names, written out by hand; kv_b_proj stays whole (the test joins its halves),
    the MTP module is left out."""
    names = {"self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm",
             "self_attn.q_b_proj": "attn_q_b", "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
             "self_attn.kv_a_layernorm": "attn_kv_a_norm", "self_attn.o_proj": "attn_output",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
             "mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
             "mlp.shared_experts.down_proj": "ffn_down_shexp", "self_attn.kv_b_proj": "attn_kv_b"}
    out = {"token_embd.weight": model.embed_tokens.weight, "output_norm.weight": model.norm.weight,
           "output.weight": model.lm_head.weight}
    for i, layer in enumerate(model.layers):
        for ours, theirs in names.items():
            try:
                out[f"blk.{i}.{theirs}.weight"] = layer.get_submodule(ours).weight
            except AttributeError:  # dense layers have no gate and shared experts, MoE layers no dense FFN
                continue
        if model.config.is_moe_layer(i):
            experts = layer.mlp.experts
            out[f"blk.{i}.ffn_gate_exps.weight"] = experts.gate_proj
            out[f"blk.{i}.ffn_up_exps.weight"] = experts.up_proj
            out[f"blk.{i}.ffn_down_exps.weight"] = experts.down_proj
            out[f"blk.{i}.exp_probs_b.bias"] = layer.mlp.gate.e_score_correction_bias
    return {name: t.detach().float() for name, t in out.items()}


def joined(read: dict[str, np.ndarray], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The file's tensors with each layer's attn_k_b (heads, rank, nope) and attn_v_b (heads, v, rank) joined back
    into kv_b_proj's (heads * (nope + v), rank)."""
    out = {name: torch.from_numpy(t) for name, t in read.items() if not name.endswith(("attn_k_b.weight",
                                                                                       "attn_v_b.weight"))}
    for i in range(config.num_hidden_layers):
        k_b, v_b = (torch.from_numpy(read[f"blk.{i}.attn_{x}_b.weight"]) for x in "kv")
        out[f"blk.{i}.attn_kv_b.weight"] = torch.cat([k_b.transpose(1, 2), v_b], dim=1).flatten(0, 1)
    return out


def test_f32_tensors_equal_ours(tiny, exported):
    model = tiny[0]
    want, got = expected(model), joined(tensors(exported["f32"]), model.config)
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in exported["f32"].tensors)


@pytest.mark.parametrize("type, rel", [("f16", 2**-11), ("bf16", 2**-8)])
def test_half_types_round_each_matrix(tiny, exported, type, rel):
    model = tiny[0]
    want, got = expected(model), joined(tensors(exported[type]), model.config)
    v_b = {t.tensor_type.name for t in exported[type].tensors if t.name.endswith("attn_v_b.weight")}
    assert v_b == {"F32" if type == "f16" else "BF16"}  # llama.cpp's CPU backend cannot run attn_v_b in f16
    for name, t in want.items():
        if t.dim() == 1 or "ffn_gate_inp" in name:
            assert torch.equal(got[name], t), name
        else:  # half a unit in the last place; f16 below 2^-14 is subnormal, spaced 2^-24
            assert (got[name] - t).abs().le(rel * t.abs() + 2**-25).all(), name


@pytest.mark.parametrize("type, steps, within", [("q8_0", 127, 0.5), ("q4_0", 8, 1.0)])
def test_block_types_within_a_step_of_each_block(tiny, exported, type, steps, within):
    """ggml's q8_0 and q4_0: one f16 scale d per 32 weights of a row, amax/127 and amax/8. q8_0 rounds to nearest:
    half a step; q4_0 takes levels -8..7 with the block's largest magnitude at -8, so its opposite clips: a step.
    Plus the scale's f16 rounding, 2^-11 d per level. Rows that 32 does not divide stay f16, attn_v_b f32."""
    model = tiny[0]
    read = tensors(exported[type])
    types = {t.name: t.tensor_type.name for t in exported[type].tensors}
    want, got = expected(model), joined(read, model.config)
    for name, t in want.items():
        if t.dim() == 1 or "ffn_gate_inp" in name:
            assert torch.equal(got[name], t), name
            continue
        if name.endswith("attn_kv_b.weight"):
            continue  # its halves are checked below, block by block as stored
        blocks = t.reshape(-1, 32)
        step = blocks.abs().amax(-1, keepdim=True) / steps
        err = (got[name].reshape(-1, 32) - blocks).abs()
        assert err.le(step * (within + steps * 2**-11)).all(), name
    for name, t in types.items():
        if name.endswith("attn_k_b.weight"):   # (heads, rank, nope): rows of 32
            assert t == type.upper(), name
        if name.endswith("attn_v_b.weight"):   # (heads, v, rank = 48): f16's fallback, f32 for llama.cpp's CPU
            assert t == "F32", name
    assert types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    assert types["blk.1.ffn_gate_exps.weight"] == type.upper()


def value(reader, key: str):
    return reader.fields[key].contents()


def test_metadata_holds_deepseek2_keys(tiny, exported):
    c, r = tiny[0].config, exported["f32"]
    want = {"general.architecture": "deepseek2", "deepseek2.block_count": c.num_hidden_layers,
            "deepseek2.context_length": c.max_position_embeddings, "deepseek2.embedding_length": c.hidden_size,
            "deepseek2.feed_forward_length": c.intermediate_size, "deepseek2.vocab_size": c.vocab_size,
            "deepseek2.attention.head_count": c.num_attention_heads, "deepseek2.attention.head_count_kv": 1,
            "deepseek2.attention.q_lora_rank": c.q_lora_rank, "deepseek2.attention.kv_lora_rank": c.kv_lora_rank,
            "deepseek2.attention.key_length": c.kv_lora_rank + c.qk_rope_head_dim,
            "deepseek2.attention.value_length": c.kv_lora_rank,
            "deepseek2.attention.key_length_mla": c.qk_nope_head_dim + c.qk_rope_head_dim,
            "deepseek2.attention.value_length_mla": c.v_head_dim,
            "deepseek2.rope.dimension_count": c.qk_rope_head_dim, "deepseek2.rope.freq_base": c.rope_theta,
            "deepseek2.leading_dense_block_count": c.first_k_dense_replace,
            "deepseek2.expert_count": c.n_routed_experts, "deepseek2.expert_used_count": c.num_experts_per_tok,
            "deepseek2.expert_shared_count": c.n_shared_experts,
            "deepseek2.expert_feed_forward_length": c.moe_intermediate_size,
            "deepseek2.expert_group_count": c.n_group, "deepseek2.expert_group_used_count": c.topk_group,
            "deepseek2.expert_weights_scale": c.routed_scaling_factor, "deepseek2.expert_weights_norm": True,
            "deepseek2.expert_gating_func": 2,  # sigmoid, llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.add_bos_token": True}
    got = {key: value(r, key) for key in want}
    assert got == pytest.approx(want)
    assert value(r, "deepseek2.attention.layer_norm_rms_epsilon") == pytest.approx(c.rms_norm_eps)
    assert not any(key.startswith("deepseek2.nextn") for key in r.fields)
    assert value(exported["q8_0"], "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0


def test_yarn_keys(tmp_path):
    """YaRN (V2 Appendix B) as llama.cpp reads it; its log multiplier is written x 0.1 (llama.cpp divides it back)."""
    scaling = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32,
               "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    _, path = checkpoint(tmp_path / "yarn", rope_scaling=scaling, num_nextn_predict_layers=0)
    r = gguf.GGUFReader(export_gguf(path, tmp_path / "m.gguf")[0])
    got = {key: value(r, f"deepseek2.rope.scaling.{key}") for key in
           ("type", "factor", "original_context_length", "yarn_beta_fast", "yarn_beta_slow", "yarn_log_multiplier")}
    assert got == pytest.approx({"type": "yarn", "factor": 4.0, "original_context_length": 256,
                                 "yarn_beta_fast": 32, "yarn_beta_slow": 1, "yarn_log_multiplier": 0.1})


def test_tokenizer_rebuilt_from_gguf_encodes_like_ours(exported):
    """A byte-level BPE built from the file's tokens and merges alone, pre-tokenized by llama.cpp's "smollm" regexes,
    its control tokens added as special: the same ids as our tokenizer."""
    r = exported["f32"]
    tokens, types, merges = (value(r, f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "merges"))
    control = [t for t, kind in zip(tokens, types) if kind == gguf.TokenType.CONTROL]
    assert sorted(control) == sorted([*SPECIAL_TOKENS, *EXTRA_TOKENS])  # DeepSeek's, FIM's and tool calls'
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind != gguf.TokenType.UNUSED}
    backend = Backend(models.BPE(vocab, [tuple(m.split(" ")) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), "isolated") for regex in SMOLLM]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    assert [backend.token_to_id(t) for t in control] == [tokens.index(t) for t in control]
    ours = Tokenizer.from_dir(ASSETS)
    for text in TEXTS:
        assert backend.encode(text, add_special_tokens=False).ids == ours.encode(text), text


def test_chat_template_renders_our_turns(exported):
    template = value(exported["f32"], "tokenizer.chat_template")
    assert "<｜end▁of▁sentence｜>" in template  # how llama.cpp recognises DeepSeek-V3's turns without --jinja
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "3*3?"},
                {"role": "assistant", "content": "9", "reasoning_content": "three threes"}]
    env = jinja2.Environment()
    for convo, prompt in ((messages, False), (messages[:4], True)):
        text = env.from_string(template).render(messages=convo, add_generation_prompt=prompt,
                                                bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1])
        assert text == render_chat(convo, add_generation_prompt=prompt)


def test_rotate_halves_model_exports_interleaved(tmp_path):
    """llama.cpp turns adjacent pairs only: a model that turns halves gets its rotary rows reordered, and q·k after
    llama.cpp's rotation of the exported rows equals ours."""
    model, path = checkpoint(tmp_path / "halves", rope_interleave=False)
    read = tensors(gguf.GGUFReader(export_gguf(path, tmp_path / "m.gguf")[0]))
    c = model.config
    d, nope, r = c.qk_rope_head_dim, c.qk_nope_head_dim, c.kv_lora_rank
    x = torch.randn(5, c.q_lora_rank)
    h = torch.randn(5, c.hidden_size)
    angles = torch.rand(1, 5, d // 2) * 6
    cos, sin = angles.cos(), angles.sin()

    def q_and_k(q_b, kv_a, interleave):
        q = (x @ q_b.T).view(1, 5, c.num_attention_heads, -1)[..., nope:]
        k = (h @ kv_a.T)[:, r:].view(1, 5, 1, d)
        return apply_rope(q, cos, sin, interleave), apply_rope(k, cos, sin, interleave)

    layer = model.layers[0].self_attn
    q0, k0 = q_and_k(layer.q_b_proj.weight.detach(), layer.kv_a_proj_with_mqa.weight.detach(), False)
    q1, k1 = q_and_k(torch.from_numpy(read["blk.0.attn_q_b.weight"]),
                     torch.from_numpy(read["blk.0.attn_kv_a_mqa.weight"]), True)
    torch.testing.assert_close(q1 @ k1.transpose(-1, -2), q0 @ k0.transpose(-1, -2))
    assert not torch.equal(torch.from_numpy(read["blk.0.attn_q_b.weight"]), layer.q_b_proj.weight.detach())


def test_refusals(tiny, tmp_path):
    src = tiny[1]
    with pytest.raises(ConfigError, match="'q3_k'"):
        export_gguf(src, tmp_path / "m.gguf", "q3_k")
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        export_gguf(bare, tmp_path / "m.gguf")
    save_quantized(tiny[0], tmp_path / "int8", "int8", extra_files=(src / "tokenizer.json",))
    with pytest.raises(CheckpointError, match="int8/int4"):
        export_gguf(tmp_path / "int8", tmp_path / "m.gguf")
    assert not any(tmp_path.glob("*.gguf")) and not any(tmp_path.glob(".m.gguf*"))


def test_cli_exports(tiny, tmp_path):
    out = tmp_path / "m.gguf"
    cmd = [sys.executable, "-m", "nanoseek", "checkpoint", "export", str(tiny[1]), "--format", "gguf",
           "--type", "q4_0", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Q4_0" in run.stdout and "MTP modules left out" in run.stdout
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "deepseek2"
