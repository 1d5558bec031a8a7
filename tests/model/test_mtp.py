import pytest
import torch

from nanoseek.config import ModelConfig
from nanoseek.model import Transformer
from nanoseek.model.mtp import mtp_inputs, mtp_targets


def test_targets_shift_like_hand_built_example():
    # tokens t0..t5; main input t0..t4, labels t1..t5. MTP depth 1 at position i reads t_{i+1}, predicts t_{i+2}.
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15]])
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    assert mtp_inputs(inputs, 1).tolist() == [[11, 12, 13, 14]]
    assert mtp_targets(labels, 1).tolist() == [[12, 13, 14, 15]]
    assert mtp_inputs(inputs, 2).tolist() == [[12, 13, 14]]
    assert mtp_targets(labels, 2).tolist() == [[13, 14, 15]]


@pytest.mark.parametrize("depth", [1, 2])
def test_mtp_losses_and_gradients(depth):
    config = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16,
                         kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
                         num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=16,
                         intermediate_size=48, num_nextn_predict_layers=depth)
    torch.manual_seed(0)
    model = Transformer(config).train()
    tokens = torch.randint(0, 64, (2, 12))
    losses = model.losses(tokens[:, :-1], tokens[:, 1:])
    assert len(losses.mtp) == depth
    # the depth-k loss equals a cross-entropy computed by hand from the module's own forward
    h = model.hidden_states(tokens[:, :-1])
    for k in range(1, depth + 1):
        T = 11 - k
        h = model.mtp_hidden(k - 1, h[:, :T], tokens[:, k:11])
        logits = model.mtp_head(k - 1, h)
        ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, k + 1:].flatten())
        assert torch.isclose(losses.mtp[k - 1], ref, atol=1e-5)
    sum(losses.mtp).backward()
    for k in range(depth):
        assert model.mtp[k].eh_proj.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad.abs().sum() > 0
    assert model.embed_tokens.weight.grad.abs().sum() > 0
