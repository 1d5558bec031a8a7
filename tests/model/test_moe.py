import itertools

import pytest
import torch
import torch.nn.functional as F

from nanoseek.config import ModelConfig
from nanoseek.model import moe as moe_module
from nanoseek.model.moe import GATHER_MAX, MoE, balance_loss, route, update_bias


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


def per_token_reference(experts, x, weights, indices):
    """Plainly: each token through each of its chosen experts' SwiGLU, one at a time, summed with its gate weights."""
    rows = []
    for n in range(x.shape[0]):
        y = torch.zeros_like(x[n])
        for j in range(indices.shape[1]):
            e = int(indices[n, j])
            h = F.silu(experts.gate_proj[e] @ x[n]) * (experts.up_proj[e] @ x[n])
            y = y + weights[n, j] * (experts.down_proj[e] @ h)
        rows.append(y)
    return torch.stack(rows)


def routed(tokens, seed=0):
    """`tokens` random tokens, each sent to two of the first six of the eight experts: the last two stay idle."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 32, generator=g)
    return x, torch.rand(tokens, 2, generator=g), torch.rand(tokens, 6, generator=g).topk(2, dim=-1).indices


# top-2: a token is two (token, expert) pairs, gathered up to GATHER_MAX pairs and sorted beyond
@pytest.mark.parametrize("tokens", [1, GATHER_MAX // 2, GATHER_MAX // 2 + 1, 200])
def test_experts_match_a_per_token_reference(tokens):
    moe = _moe().eval()
    x, weights, indices = routed(tokens)
    torch.testing.assert_close(moe.experts(x, weights, indices), per_token_reference(moe.experts, x, weights, indices),
                               atol=1e-5, rtol=1e-5)
    weights, indices, _ = moe.gate(x)  # through the whole layer, routed by its gate
    full = moe(x.view(1, tokens, 32)).view(tokens, 32)
    expected = per_token_reference(moe.experts, x, weights, indices) + moe.shared_experts(x)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)


def test_gathering_and_sorting_agree_and_sorting_has_the_references_gradients(monkeypatch):
    moe = _moe()
    x, weights, indices = routed(40)
    x.requires_grad_(True)
    weights.requires_grad_(True)
    tensors = [x, weights, *moe.experts.parameters()]
    monkeypatch.setattr(moe_module, "GATHER_MAX", 10**6)
    gathered = moe.experts(x, weights, indices)
    monkeypatch.setattr(moe_module, "GATHER_MAX", 0)
    out = moe.experts(x, weights, indices)
    assert (out - gathered).abs().max() <= 1e-5
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, tensors, upstream)
    expected = torch.autograd.grad(per_token_reference(moe.experts, x, weights, indices), tensors, upstream)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert (got[2].flatten(1).norm(dim=1) > 0).tolist() == [True] * 6 + [False] * 2  # idle experts: zero gradient


def test_sorting_runs_each_expert_once_on_its_own_tokens(monkeypatch):
    """Without a grouped product (here: not offered), a loop over the experts, each on its own tokens."""
    moe = _moe().eval()
    x, weights, indices = routed(100)
    rows = []
    ffn = moe.experts.ffn

    def counting_ffn(chunk, *matrices):
        rows.append(len(chunk))
        return ffn(chunk, *matrices)

    monkeypatch.setattr(moe.experts, "ffn", counting_ffn)
    monkeypatch.setattr(moe_module, "can_group", lambda *args: False)
    moe.experts(x, weights, indices)
    assert rows == torch.bincount(indices.flatten()).tolist()  # experts 0-5 in turn, each on its own tokens; 6, 7 idle


def test_the_grouped_product_gets_each_experts_tokens_as_one_group(monkeypatch):
    moe = _moe().eval()
    x, weights, indices = routed(100)
    calls = []
    grouped = F.grouped_mm

    def recording(a, b, offs):
        calls.append((a, b, offs))
        return grouped(a, b, offs=offs)

    monkeypatch.setattr(F, "grouped_mm", recording)
    out = moe.experts(x, weights, indices)
    assert len(calls) == 3  # gate, up, down: one product each for all experts
    a, b, offs = calls[0]
    assert offs.tolist() == torch.bincount(indices.flatten(), minlength=8).cumsum(0).tolist()
    for e, (start, end) in enumerate(zip([0] + offs.tolist(), offs.tolist())):  # group e: the tokens routed to e
        tokens = [(x[t] == a[i]).all().item() for i, t in enumerate((indices == e).any(1).nonzero()[:, 0], start)]
        assert end - start == len(tokens) and all(tokens)
    torch.testing.assert_close(out, per_token_reference(moe.experts, x, weights, indices))


def test_few_tokens_compile_into_one_graph():
    """The gathered path has no data-dependent shape and no host synchronisation: a compiled decoding step need not
    break its graph around the experts."""
    moe = _moe().eval()
    x, weights, indices = routed(GATHER_MAX // 2)
    compiled = torch.compile(moe.experts, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, weights, indices), moe.experts(x, weights, indices))


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
