import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nanoseek.config import ModelConfig
from nanoseek.infer.kv_cache import BlockPool, PagedBatch
from nanoseek.model import Transformer


def _student():
    return ModelConfig(attention_type="gqa", vocab_size=97, hidden_size=48, num_attention_heads=6,
                       num_key_value_heads=2, head_dim=10, num_hidden_layers=2, intermediate_size=64,
                       n_routed_experts=0, first_k_dense_replace=0, num_nextn_predict_layers=0,
                       rope_interleave=False, q_lora_rank=None, rope_theta=500.0)


def test_gqa_student_matches_llama():
    config = _student()
    torch.manual_seed(0)
    ours = Transformer(config).eval()
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                         head_dim=10, num_hidden_layers=2, intermediate_size=64, rope_theta=500.0,
                                         rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=False,
                                         attn_implementation="eager")).eval()
    theirs = llama.state_dict()
    ours.load_state_dict({k: theirs["model." + k if k != "lm_head.weight" else k] for k in ours.state_dict()})
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        assert (ours(ids) - llama(ids).logits).abs().max() <= 1e-4


def test_gqa_cached_decoding_reproduces_full_sequence():
    config = _student()
    torch.manual_seed(1)
    model = Transformer(config).eval()
    ids = torch.randint(0, 97, (2, 30))
    pool = BlockPool(2, sum(config.cache_widths()), 8, 1 << 20)
    assert pool.width == 2 * 2 * 10  # keys and values of the 2 key-value heads, not of all 6 query heads
    tables = [pool.allocate(4), pool.allocate(4)]
    with torch.no_grad():
        full = model(ids)
        out = [model(ids[:, :5], PagedBatch.build(pool, tables, [0, 0], [5, 5]))]
        out += [model(ids[:, t:t + 1], PagedBatch.build(pool, tables, [t, t], [1, 1], absorbed=True))
                for t in range(5, 30)]
    assert (torch.cat(out, 1) - full).abs().max() <= 1e-4


def test_student_presets_are_at_most_a_quarter_of_tiny():
    tiny = ModelConfig.from_preset("tiny").param_counts()["total"]
    for name in ("tiny-student", "tiny-student-mla"):
        student = ModelConfig.from_preset(name)
        assert student.param_counts()["total"] <= tiny / 4
        assert student.vocab_size == ModelConfig.from_preset("tiny").vocab_size  # they share the tokenizer
        with torch.device("meta"):
            assert sum(p.numel() for p in Transformer(student).parameters()) == student.param_counts()["total"]
