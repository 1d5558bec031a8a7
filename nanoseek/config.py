"""ModelConfig: every DeepSeek-V3 field, named as in Hugging Face's config.json, plus presets and parameter counts.

Presets: `tiny` (the CPU default, a few million parameters), `small` (~100M, one GPU), and the published shapes
of `deepseek-v2-lite` and `deepseek-v3` (V3 report, arXiv 2412.19437, §4.2 "Hyper-Parameters").
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from nanoseek.checks import check_fields
from nanoseek.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512            # dense FFN width (the first `first_k_dense_replace` layers)
    moe_intermediate_size: int = 128        # width of one routed or shared expert
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    # attention: "mla" (DeepSeek) or "gqa", grouped-query attention for the dense Llama/Qwen-shaped students that
    # R1 §2.4 distils into (then num_key_value_heads and head_dim apply and the MLA fields are unused)
    attention_type: str = "mla"
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    # MLA (V2 report §2.1): low-rank query and joint key-value compression
    q_lora_rank: int | None = 96            # None: queries are projected directly (V2-Lite)
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    # DeepSeekMoE (V3 §2.1.2)
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    first_k_dense_replace: int = 1
    n_group: int = 2
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"           # V3: sigmoid; V2: softmax
    # MTP (V3 §2.2): number of sequential next-token modules, D
    num_nextn_predict_layers: int = 1
    # positions
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None        # YaRN: {"type": "yarn", "factor", "original_max_position_embeddings", ...}
    rope_interleave: bool = True            # DeepSeek rotates adjacent pairs (x0, x1), (x2, x3), ...
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self):
        validate(self)
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"qk_rope_head_dim must be even for RoPE, got {self.qk_rope_head_dim}")
        if self.attention_type not in ("mla", "gqa"):
            raise ConfigError(f"attention_type must be 'mla' or 'gqa', got {self.attention_type!r}")
        if self.attention_type == "gqa":
            if self.num_attention_heads % self.kv_heads:
                raise ConfigError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                                  f"num_key_value_heads={self.kv_heads}")
            if self.attention_head_dim % 2:
                raise ConfigError(f"head_dim must be even for RoPE, got {self.attention_head_dim}")
        if self.scoring_func not in ("sigmoid", "softmax"):
            raise ConfigError(f"scoring_func must be 'sigmoid' or 'softmax', got {self.scoring_func!r}")
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ConfigError(f"first_k_dense_replace={self.first_k_dense_replace} exceeds "
                              f"num_hidden_layers={self.num_hidden_layers}")
        if self.n_routed_experts:
            if self.n_routed_experts % self.n_group:
                raise ConfigError(f"n_routed_experts={self.n_routed_experts} is not divisible by n_group={self.n_group}")
            if not 1 <= self.topk_group <= self.n_group:
                raise ConfigError(f"topk_group must be in [1, n_group={self.n_group}], got {self.topk_group}")
            per_group = self.n_routed_experts // self.n_group
            if not 1 <= self.num_experts_per_tok <= self.topk_group * per_group:
                raise ConfigError(f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, "
                                  f"topk_group * experts per group = {self.topk_group * per_group}]")
            if self.n_group > 1 and per_group < 2:
                raise ConfigError("group-limited routing scores a group by its top-2 experts: "
                                  f"need >= 2 experts per group, got {per_group}")
        if self.rope_scaling is not None:
            if self.rope_scaling.get("type", self.rope_scaling.get("rope_type")) != "yarn":
                raise ConfigError(f"only YaRN rope_scaling is supported, got {self.rope_scaling!r}")
            _check_yarn(self.rope_scaling)

    # ---- derived shapes -------------------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attention_head_dim(self) -> int:
        """GQA's per-head width (default hidden / heads)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope_dim(self) -> int:
        """How many dimensions per head RoPE turns: MLA's decoupled part, or GQA's whole head."""
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.attention_head_dim

    def cache_widths(self) -> tuple[int, int]:
        """Numbers cached per token and layer, as two streams: MLA's latent c_kv and shared rotary key
        (V2 §2.1.4), or GQA's keys and values of the key-value heads."""
        if self.attention_type == "mla":
            return self.kv_lora_rank, self.qk_rope_head_dim
        width = self.kv_heads * self.attention_head_dim
        return width, width

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers after the first `first_k_dense_replace` are MoE (V3 §4.2: the first three are dense)."""
        return self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- presets and serialisation ------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "deepseek_v3"
        d["architectures"] = ["DeepseekV3ForCausalLM"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Read a nanoseek config or a Hugging Face DeepseekV3 or Llama config.json (either rope_scaling or the newer
        rope_parameters layout); unknown keys are ignored."""
        d = dict(d)
        if d.get("model_type") == "llama":  # a dense grouped-query student, as checkpoint.py exports it
            d.update(attention_type="gqa", n_routed_experts=0, first_k_dense_replace=0, num_nextn_predict_layers=0,
                     rope_interleave=False, q_lora_rank=None)
        rope = d.pop("rope_parameters", None)
        if rope is not None and not isinstance(rope, dict):
            raise ConfigError(f"rope_parameters must be an object, got {rope!r:.80}")
        if rope:
            d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                d.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        scaling = d.get("rope_scaling")
        if isinstance(scaling, dict) and scaling.get("type", scaling.get("rope_type")) in (None, "default"):
            d["rope_scaling"] = None
        if d.get("n_routed_experts") is None:
            d["n_routed_experts"] = 0
        for key in ("n_group", "topk_group"):
            if d.get(key) is None:
                d[key] = 1
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        p = Path(path)
        p = p / "config.json" if p.is_dir() else p
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {p}") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"{p} is not a valid model config: {e}") from None

    # ---- counts ---------------------------------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameters: `total` (the main model, as the V3 report counts its 671B), `active` per token (shared parts
        plus the top-k routed experts), and `mtp` (the MTP modules, reported apart as the V3 report does)."""
        H, V = self.hidden_size, self.vocab_size
        embed = V * H
        head = 0 if self.tie_word_embeddings else V * H
        expert = 3 * H * self.moe_intermediate_size
        total = active = embed + head + H  # + final norm
        layer_total, layer_active = [], []
        for i in range(self.num_hidden_layers + self.num_nextn_predict_layers):
            att = self._attention_params() + 2 * H
            if self.is_moe_layer(i):
                shared = self.n_shared_experts * expert + self.n_routed_experts * H  # shared experts + router
                lt, la = att + shared + self.n_routed_experts * expert, att + shared + self.num_experts_per_tok * expert
            else:
                lt = la = att + 3 * H * self.intermediate_size
            layer_total.append(lt)
            layer_active.append(la)
        L = self.num_hidden_layers
        total += sum(layer_total[:L])
        active += sum(layer_active[:L])
        mtp = sum(layer_total[L:]) + self.num_nextn_predict_layers * (2 * H * H + 3 * H)  # eh_proj, enorm, hnorm, final norm
        return {"total": total, "active": active, "mtp": mtp}

    def _attention_params(self) -> int:
        H, nh = self.hidden_size, self.num_attention_heads
        if self.attention_type == "gqa":
            return 2 * H * nh * self.attention_head_dim + 2 * H * self.kv_heads * self.attention_head_dim
        if self.q_lora_rank is None:
            q = H * nh * self.qk_head_dim
        else:
            q = H * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * self.qk_head_dim
        kv = H * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
        kv += self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + nh * self.v_head_dim * H

    def kv_cache_values_per_token(self) -> dict[str, int]:
        """Cached numbers per token over all layers: MLA's latent cache against plain multi-head attention
        (V2 §2.1.4, Table 1: (d_c + d_h^R) l for MLA, 2 n_h d_h l for MHA)."""
        L = self.num_hidden_layers
        return {"cached": sum(self.cache_widths()) * L,
                "mha": 2 * self.num_attention_heads * self.score_dims()[1] * L}

    def score_dims(self) -> tuple[int, int]:
        """Per-head widths of the attention products: (q.k, p.v)."""
        if self.attention_type == "gqa":
            return self.attention_head_dim, self.attention_head_dim
        return self.qk_head_dim, self.v_head_dim


# ---- validation -------------------------------------------------------------------------------------------------
POSITIVE = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "q_lora_rank", "kv_lora_rank",
            "qk_rope_head_dim", "v_head_dim", "n_group", "topk_group", "routed_scaling_factor",
            "max_position_embeddings", "rms_norm_eps")
ABOVE = {**dict.fromkeys(POSITIVE, 0), "rope_theta": 1}   # RoPE's base: its logarithm divides (YaRN)


def validate(config: ModelConfig) -> None:
    """Every field of its annotated type and in range (nanoseek.checks): a bad config.json ("4" for 4, 4.5 layers,
    zero groups, a NaN epsilon) is one line naming the field, not a traceback from deep inside the model. The fields
    not in ABOVE are counts and ids, >= 0."""
    check_fields(config, {name: f"> {bound}" for name, bound in ABOVE.items()}, default=">= 0")


def _check_yarn(scaling: dict) -> None:
    """YaRN's factor and original context are required (rope.py); its other numbers, when given, are finite."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for key in ("factor", "original_max_position_embeddings"):
        if not number(scaling.get(key)) or scaling[key] <= 0:
            raise ConfigError(f"rope_scaling.{key} {scaling.get(key)!r:.80}: expected a positive number")
    for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if scaling.get(key) is not None and not number(scaling[key]):
            raise ConfigError(f"rope_scaling.{key} {scaling[key]!r:.80}: expected a number")


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature, 0.1 m ln(s) + 1 (V2 report, Appendix B; YaRN §3.4)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


PRESETS: dict[str, dict] = {
    # CPU default: ~3M parameters (1.3M active per token), small enough for the whole R1 recipe on 2 cores. Sized for
    # learning per second: at this budget (a few million tokens) a narrower model that steps faster learns more than
    # a wider one (width 128 reached width 192's loss in 0.6x the time); 16 fine-grained experts add capacity, not
    # FLOPs. 32 rotary dimensions at a short-context θ let it learn to copy digits by position in a few hundred steps
    # (16 at θ = 10^4 took about twice as long). Weights start at std ~ 1/sqrt(hidden), not V3's 0.006 (0.02 in the
    # HF config, sized for hidden 7168): a std of 0.02 leaves attention scores near zero, and copying took several
    # times as many steps.
    "tiny": dict(hidden_size=128, num_attention_heads=4, q_lora_rank=64, kv_lora_rank=48, qk_rope_head_dim=32,
                 intermediate_size=384, moe_intermediate_size=96, n_routed_experts=16, rope_theta=500.0,
                 initializer_range=0.07),
    # `tiny`'s width with 12 layers: one MTP module beside a main stack of 12, as V3 has one beside 61 (§2.2), so that
    # the draft is a small share of a speculative step (benchmarks/mtp_speculative.py).
    "tiny-deep": dict(hidden_size=128, num_attention_heads=4, q_lora_rank=64, kv_lora_rank=48, qk_rope_head_dim=32,
                      intermediate_size=384, moe_intermediate_size=96, n_routed_experts=16, rope_theta=500.0,
                      initializer_range=0.07, num_hidden_layers=12),
    # Dense distillation students for `tiny` (R1 §2.4), at most a quarter of its parameters: Llama-shaped with
    # grouped-query attention (exports as LlamaForCausalLM), or with MLA.
    "tiny-student": dict(attention_type="gqa", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=3, intermediate_size=224, n_routed_experts=0, first_k_dense_replace=0,
                         num_nextn_predict_layers=0, tie_word_embeddings=True, rope_interleave=False,
                         q_lora_rank=None),
    "tiny-student-mla": dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=3, intermediate_size=224,
                             q_lora_rank=None, kv_lora_rank=32, n_routed_experts=0, first_k_dense_replace=0,
                             num_nextn_predict_layers=0, tie_word_embeddings=True),
    # ~100M total for one GPU.
    "small": dict(vocab_size=16384, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
                  num_hidden_layers=8, num_attention_heads=8, q_lora_rank=192, kv_lora_rank=128,
                  qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=32,
                  num_experts_per_tok=4, n_group=4, topk_group=2, max_position_embeddings=4096),
    # DeepSeek-V2-Lite's published config (V2 report, Appendix B).
    "deepseek-v2-lite": dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944,
                             moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
                             q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                             v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
                             first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0,
                             norm_topk_prob=False, scoring_func="softmax", num_nextn_predict_layers=0,
                             max_position_embeddings=163840,
                             rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096,
                                               beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707),
                             bos_token_id=100000, eos_token_id=100001),
    # DeepSeek-V3's published config (V3 report §4.2): 671B total, 37B active.
    "deepseek-v3": dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                        num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256,
                        n_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=3, n_group=8,
                        topk_group=4, routed_scaling_factor=2.5, num_nextn_predict_layers=1,
                        max_position_embeddings=163840,
                        rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096,
                                          beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
                        bos_token_id=0, eos_token_id=1),
}
