import itertools

import pytest
import torch

from nanoseek.config import ModelConfig
from nanoseek.model.moe import MoE, balance_loss, route, update_bias


def brute_force_route(choice_row, top_k, n_group, topk_group):
    """Plainly: try every set of topk_group groups, keep the set with the best sum of group scores (each the sum
    of its two best experts), then take the top_k experts inside it."""
    E = len(choice_row)
    size = E // n_group
    groups = [choice_row[g * size:(g + 1) * size] for g in range(n_group)]
    group_score = [sum(sorted(g, reverse=True)[:2]) for g in groups]
    best = max(itertools.combinations(range(n_group), topk_group), key=lambda gs: sum(group_score[g] for g in gs))
    allowed = [e for e in range(E) if e // size in best]
    return set(sorted(allowed, key=lambda e: -choice_row[e])[:top_k])


@pytest.mark.parametrize("E,k,n_group,topk_group", [(8, 2, 1, 1), (16, 4, 4, 2), (12, 3, 3, 1), (16, 6, 8, 4)])
def test_group_limited_routing_matches_brute_force(E, k, n_group, topk_group):
    g = torch.Generator().manual_seed(E + k)
    scores = torch.rand(64, E, generator=g, dtype=torch.float64)
    bias = torch.randn(E, generator=g, dtype=torch.float64) * 0.1
    got = route(scores, bias, k, n_group, topk_group)
    for row in range(64):
        choice = (scores[row] + bias).tolist()
        assert set(got[row].tolist()) == brute_force_route(choice, k, n_group, topk_group)


def _moe(**kw):
    config = ModelConfig(hidden_size=32, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                         moe_intermediate_size=16, **kw)
    torch.manual_seed(0)
    moe = MoE(config)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return moe


def test_bias_changes_choice_not_gate_weights():
    moe = _moe()
    x = torch.randn(200, 32)
    w0, idx0, scores = moe.gate(x)
    moe.gate.e_score_correction_bias.copy_(torch.linspace(-0.3, 0.3, 8))
    w1, idx1, _ = moe.gate(x)
    assert (idx0 != idx1).any(), "the bias must change which experts are chosen"
    # gate weights are the raw sigmoid scores of the chosen experts, normalised and scaled, never biased
    expected = scores.gather(1, idx1)
    expected = expected / expected.sum(-1, keepdim=True) * 2.5
    torch.testing.assert_close(w1, expected)


def test_experts_run_only_on_their_tokens_and_match_dense_reference():
    moe = _moe().eval()
    x = torch.randn(3, 10, 32)
    calls = {}
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, inp, out, e=e: calls.__setitem__(e, inp[0].shape[0]))
    out = moe(x)
    weights, idx, _ = moe.gate(x.view(-1, 32))
    for e in range(8):
        assert calls.get(e, 0) == int((idx == e).sum())
    # reference: every expert on every token, combined with a dense gate matrix
    dense = torch.zeros(30, 8).scatter(1, idx, weights)
    ref = sum(dense[:, e:e + 1] * moe.experts[e](x.view(-1, 32)) for e in range(8))
    ref = ref + moe.shared_experts(x.view(-1, 32))
    torch.testing.assert_close(out.view(-1, 32), ref, atol=1e-5, rtol=1e-5)


def test_bias_update_balances_skewed_router():
    torch.manual_seed(0)
    E, k, gamma = 16, 2, 0.01
    experts_dir = torch.randn(E, 64)
    skew = torch.linspace(-2.0, 2.0, E)  # a per-expert offset: the right-hand experts win most tokens
    bias = torch.zeros(E)

    def load_of(bias, tokens=4096):
        x = torch.randn(tokens, 64)
        scores = torch.sigmoid(x @ experts_dir.T / 8 + skew)
        idx = route(scores, bias, k, 4, 2)
        return torch.bincount(idx.flatten(), minlength=E).float()

    first = load_of(bias)
    assert first.max() / first.mean() > 2
    for step in range(200):  # like V3 §4.2, the update speed is lowered late in training
        bias = update_bias(bias, load_of(bias), gamma if step < 150 else gamma / 5)
    final = load_of(bias, tokens=32768)
    assert final.max() / final.mean() < 1.2, final.max() / final.mean()


def test_balance_loss_matches_equations():
    # Eq. 17-20 by hand for one sequence of 2 tokens, 4 experts, top-1
    scores = torch.tensor([[[0.9, 0.1, 0.5, 0.5], [0.2, 0.8, 0.5, 0.5]]])
    indices = torch.tensor([[[0], [1]]])
    f = torch.tensor([1.0, 1.0, 0.0, 0.0]) * 4 / (1 * 2)
    s = scores[0] / scores[0].sum(-1, keepdim=True)
    p = s.mean(0)
    assert torch.isclose(balance_loss(scores, indices, 4), (f * p).sum())


def test_training_forward_counts_load_and_balance_term():
    moe = _moe().train()
    moe(torch.randn(2, 5, 32))
    assert moe.tokens_per_expert.sum() == 2 * 5 * 2
    assert moe.aux_loss is not None and moe.aux_loss.requires_grad
