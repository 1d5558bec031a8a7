"""Export to GGUF, the file llama.cpp (and Ollama, LM Studio on top of it) runs, as its `deepseek2` architecture.

llama.cpp runs DeepSeek-V2/V3 with MLA over the compressed latent cache (V2 §2.1) and DeepSeekMoE with expert
groups, sigmoid gating and the routing bias (V3 §2.1.2). The file is written with the `gguf` package's writer, in
the layout llama.cpp's own `convert_hf_to_gguf.py` produces for a DeepseekV3ForCausalLM checkpoint:

- MLA as "MQA with one wide head": head_count_kv = 1, key_length = kv_lora_rank + qk_rope_head_dim, value_length
  = kv_lora_rank, and the per-head sizes as key_length_mla / value_length_mla.
- `kv_b_proj` split into its two halves for the absorbed decode (V2 §2.1.2): W_uk as `attn_k_b` (heads,
  kv_lora_rank, qk_nope_head_dim), transposed so that the query multiplies it directly, and W_uv as `attn_v_b`.
- the routed experts' matrices stacked per layer (`ffn_gate_exps`, (E, I, H)), as our model already holds them.
- RoPE over adjacent pairs (llama.cpp's "norm" rope, DeepSeek's interleaved layout); a model that rotates halves
  has the rows of its rotary projections reordered so that the same pairs turn.
- the tokenizer as "gpt2" (byte-level BPE): every token, the merges, DeepSeek's special tokens as control tokens,
  and pre-tokenizer `smollm`: llama.cpp's name for our pre-tokenization, digits split one by one (DeepSeek LLM
  §2.1), then GPT-2's byte-level regex.
- the chat template, so that `llama-cli` and `llama-server` render DeepSeek-R1's turns.

What does not carry over: the MTP modules (V3 §2.2). llama.cpp's converter drops them for `deepseek2` and so does
this export; llama.cpp decodes without self-speculation. The sequence-wise balance loss and the bias update are
training-only, and the routing bias itself is kept.

Types: f32 writes every tensor as it is; f16 and bf16 round the matrices; q8_0 and q4_0 (ggml's blocks of 32
weights along a row with one f16 scale each, 8.5 and 4.5 bits per weight) round them block-wise. Norms, the router
and the routing bias stay f32 in every type, as llama.cpp's converter keeps them; with q4_0 the embedding and the
output head are q8_0 (they set the logits directly; our int4 keeps them in bf16). A matrix whose rows are not a
multiple of 32 cannot be cut into blocks and stays f16, and `export_gguf` reports it. `attn_v_b` is never f16:
llama.cpp's CPU backend cannot run it in f16 (f32 instead).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from nanoseek.atomic import path_atomic
from nanoseek.checkpoint.load import load_checkpoint
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError, ConfigError, TokenizerError
from nanoseek.model import Transformer
from nanoseek.quant import is_quantized
from nanoseek.tokenizer import CHAT_TEMPLATE, EOS, SPECIAL_TOKENS

try:
    import gguf
except ImportError:  # an optional extra: `pip install nanoseek[gguf]`
    gguf = None

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
PRE_TOKENIZER = "smollm"  # llama.cpp: "\p{N}" then GPT-2's regex (llama-vocab.cpp)
# llama.cpp's Jinja engine knows no {% generation %} (transformers' mark of the SFT loss), and without --jinja it
# recognises DeepSeek-V3's turns by the literal end-of-sentence string (llama-chat.cpp): same text as CHAT_TEMPLATE
GGUF_CHAT_TEMPLATE = (CHAT_TEMPLATE.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
                      .replace("{{- eos_token }}", f"{{{{- '{EOS}' }}}}"))
_ALWAYS_F32 = re.compile(r".*(norm|ffn_gate_inp|exp_probs_b)\.(weight|bias)")


def export_gguf(src: str | Path, out: str | Path, type: str = "f32") -> tuple[Path, Counter]:
    """Write the checkpoint directory `src` (ours or Hugging Face layout, with its tokenizer.json) to the GGUF file
    `out`, matrices in `type` (see TYPES). Atomic. Returns the path and how many tensors went out in each ggml type
    ("F16 (rows not in blocks of 32)", "F32 (...)" count the matrices that q8_0 / q4_0 blocks cannot cut)."""
    if gguf is None:
        raise ConfigError("GGUF export needs the gguf package: pip install 'nanoseek[gguf]'")
    if type not in TYPES:
        raise ConfigError(f"unknown GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    src, out = Path(src), Path(out)
    tokenizer_file = src / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerError(f"no tokenizer at {tokenizer_file}: a GGUF file carries its tokenizer")
    model = load_checkpoint(src)
    if is_quantized(model):
        raise CheckpointError(f"{src} is int8/int4-quantized; export the float checkpoint it came from with "
                              f"--type q8_0 or q4_0")
    config = model.config
    _check_config(config)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DEEPSEEK2])
    writer.add_name(src.resolve().name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyperparameters(writer, config)
    _add_tokenizer(writer, json.loads(tokenizer_file.read_text(encoding="utf-8")), config, tokenizer_file)
    counts = Counter()
    for name, t in gguf_tensors(model).items():
        data, qtype, fallback = _encode(name, t, type)
        writer.add_tensor(name, data, raw_dtype=qtype)
        counts[qtype.name + (" (rows not in blocks of 32)" if fallback else "")] += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    with path_atomic(out) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out, counts


def _check_config(config: ModelConfig) -> None:
    if config.attention_type != "mla":
        raise CheckpointError(f"llama.cpp's deepseek2 attends with MLA; this model has "
                              f"attention_type={config.attention_type!r} (export it to Hugging Face's layout: "
                              f"convert_hf_to_gguf.py takes it as a Llama)")


# ---- hyper-parameters -------------------------------------------------------------------------------------------
def _add_hyperparameters(writer, config: ModelConfig) -> None:
    """Every key llama.cpp's deepseek2 reads (llama-model.cpp), as its converter writes them."""
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.qk_rope_head_dim)
    # V2 §2.1: the cache holds c_kv and k_rope, one "head" of kv_lora_rank + rope numbers for all query heads
    writer.add_head_count_kv(1)
    writer.add_q_lora_rank(config.q_lora_rank or 0)  # 0: queries projected directly (attn_q)
    writer.add_kv_lora_rank(config.kv_lora_rank)
    writer.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
    writer.add_value_length(config.kv_lora_rank)
    writer.add_key_length_mla(config.qk_head_dim)
    writer.add_value_length_mla(config.v_head_dim)
    # V3 §2.1.2: DeepSeekMoE
    moe = config.n_routed_experts > 0
    writer.add_leading_dense_block_count(config.first_k_dense_replace if moe else config.num_hidden_layers)
    writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    writer.add_expert_shared_count(config.n_shared_experts)
    if moe:
        writer.add_expert_count(config.n_routed_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_group_count(config.n_group)
        writer.add_expert_group_used_count(config.topk_group)
        writer.add_expert_weights_scale(config.routed_scaling_factor)
        writer.add_expert_weights_norm(config.norm_topk_prob)
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if config.scoring_func == "sigmoid"
                                      else gguf.ExpertGatingFuncType.SOFTMAX)
    if config.rope_scaling:  # YaRN (V2 Appendix B)
        scaling = config.rope_scaling
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling["factor"])
        writer.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
        writer.add_rope_scaling_yarn_beta_fast(scaling.get("beta_fast") or 32)
        writer.add_rope_scaling_yarn_beta_slow(scaling.get("beta_slow") or 1)
        if scaling.get("mscale_all_dim"):
            # llama.cpp divides this key by 0.1 when it reads it (its converter multiplies, for old files' sake)
            writer.add_rope_scaling_yarn_log_mul(0.1 * scaling["mscale_all_dim"])


# ---- tokenizer --------------------------------------------------------------------------------------------------
def _add_tokenizer(writer, data: dict, config: ModelConfig, file: Path) -> None:
    """Tokens by id (the embedding's rows past the tokenizer's vocabulary as unused pads), merges, token types,
    the special tokens' ids and the chat template, from a nanoseek tokenizer.json (Hugging Face tokenizers')."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _is_ours(data.get("pre_tokenizer")):
        raise TokenizerError(f"{file}: llama.cpp's {PRE_TOKENIZER!r} pre-tokenizer matches a nanoseek tokenizer "
                             f"(digits, then byte-level BPE); this one has pre_tokenizer "
                             f"{json.dumps(data.get('pre_tokenizer'))[:120]}")
    by_id = {i: token for token, i in model["vocab"].items()}
    special = {t["id"]: t["content"] for t in data.get("added_tokens", [])}
    by_id.update(special)
    if max(by_id) >= config.vocab_size:
        raise TokenizerError(f"{file} has token id {max(by_id)}, beyond the model's vocab_size {config.vocab_size}")
    tokens, types = [], []
    for i in range(config.vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {content: i for i, content in special.items()}
    missing = [t for t in SPECIAL_TOKENS if t not in ids]
    if missing:
        raise TokenizerError(f"{file} lacks the special tokens {missing}")
    bos, eos = ids[SPECIAL_TOKENS[0]], ids[EOS]
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(True)  # as DeepSeek's tokenizer_config.json: a prompt starts with bos
    writer.add_add_eos_token(False)
    writer.add_chat_template(GGUF_CHAT_TEMPLATE)


def _is_ours(pre: dict | None) -> bool:
    """The pre-tokenizer tokenizer.train_tokenizer sets: Digits(individual) then ByteLevel with GPT-2's regex."""
    steps = (pre or {}).get("pretokenizers") or []
    return (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") is True
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space"))


# ---- tensors ----------------------------------------------------------------------------------------------------
def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names and in its layouts (float32), MTP modules left out."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, config.num_hidden_layers)
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("mtp.") or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        t = t.detach().float()
        if name.endswith((".q_proj.weight", ".q_b_proj.weight", ".kv_a_proj_with_mqa.weight")):
            t = _interleave_rope(name, t, config)
        if name.endswith(".kv_b_proj.weight"):
            # V2 §2.1.2: rows are per head [W_uk (nope rows) ; W_uv (v rows)], columns the latent c_kv
            kv_b = t.view(config.num_attention_heads, config.qk_nope_head_dim + config.v_head_dim, -1)
            k_b, v_b = kv_b.split([config.qk_nope_head_dim, config.v_head_dim], dim=1)
            for part, w in (("k_b_proj", k_b.transpose(1, 2)), ("v_b_proj", v_b)):
                out[_gguf_name(names, name.replace("kv_b_proj", part))] = w.contiguous()
            continue
        out[_gguf_name(names, name)] = t
    return out


def _gguf_name(names, name: str) -> str:
    hf = name if name == "lm_head.weight" else "model." + name
    if hf.endswith("_bias"):  # the routing bias, e_score_correction_bias
        base, suffix = hf.removesuffix("_bias"), ".bias"
    else:
        base, suffix = hf.removesuffix(".weight"), ".weight"
    mapped = names.get_name(base)
    if mapped is None:
        raise CheckpointError(f"tensor {name!r} has no counterpart in llama.cpp's deepseek2")
    return mapped + suffix


def _interleave_rope(name: str, t: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """A model that rotates halves (pair i, i + d/2) gets the rows of its rotary outputs reordered into adjacent
    pairs (2i, 2i+1), llama.cpp's only order for deepseek2; interleaved models come back unchanged."""
    if config.rope_interleave:
        return t
    d = config.qk_rope_head_dim
    order = torch.arange(d).view(2, d // 2).t().flatten()  # 0, d/2, 1, d/2 + 1, ...
    if name.endswith(".kv_a_proj_with_mqa.weight"):  # [c_kv rows ; the shared rotary key's d rows]
        return torch.cat([t[:config.kv_lora_rank], t[config.kv_lora_rank:][order]])
    heads = t.view(config.num_attention_heads, config.qk_head_dim, -1)    # per head [nope rows ; rope rows]
    rope = heads[:, config.qk_nope_head_dim:][:, order]
    return torch.cat([heads[:, :config.qk_nope_head_dim], rope], dim=1).flatten(0, 1)


def _encode(name: str, t: torch.Tensor, type: str) -> tuple[np.ndarray, object, bool]:
    """(data for the writer, its ggml type, whether it fell back from q8_0 / q4_0 because blocks of 32 do not cut
    its rows)."""
    Q = gguf.GGMLQuantizationType
    fallback = False
    if type == "f32" or t.dim() == 1 or _ALWAYS_F32.fullmatch(name):
        qtype = Q.F32
    elif type in ("f16", "bf16"):
        qtype = Q.F16 if type == "f16" else Q.BF16
    else:
        qtype = Q.Q8_0 if type == "q8_0" or name in ("token_embd.weight", "output.weight") else Q.Q4_0
        if t.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype, fallback = Q.F16, True
    if qtype == Q.F16 and name.endswith(".attn_v_b.weight"):
        # llama.cpp's CPU backend finds no kernel for the W_uv product in F16 and aborts while creating a context
        # (llama-cpp-python 0.3.36: GGML_ASSERT(*cur_backend_id != -1)); BF16 and F32 run
        qtype = Q.F32
    return gguf.quants.quantize(t.numpy(), qtype), qtype, fallback
