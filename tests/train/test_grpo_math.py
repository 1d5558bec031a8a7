import math

import pytest
import torch

from nanoseek.train.grpo import (aggregate, clipped_objective, group_advantages, grpo_loss, kl_estimate,
                                 zero_variance_groups)


def test_advantages_by_hand():
    # rewards 1, 0, 0, 1: mean 0.5, sample std sqrt((4 * 0.25) / 3) = 0.57735
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    expected = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([[expected, -expected, -expected, expected]]))
    assert torch.allclose(group_advantages(torch.tensor([[3.0, 1.0]]), scale="none"), torch.tensor([[1.0, -1.0]]))


def test_zero_variance_groups_are_found():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert zero_variance_groups(r).tolist() == [True, False, True]
    assert group_advantages(r)[0].abs().max() == 0


def test_kl_estimator_by_hand():
    # π_θ = 0.5, π_ref = 0.25: ratio 0.5 -> 0.5 - ln 0.5 - 1 = 0.193147
    kl = kl_estimate(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert kl.item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl_estimate(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0


def test_clipped_objective_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55]]))   # ratios 1.5, 0.5, 1.1
    # positive advantage 2: min(1.5*2, 1.2*2) = 2.4; min(0.5*2, 0.8*2) = 1.0; min(1.1*2, 1.1*2) = 2.2
    obj, clipped = clipped_objective(new, old, torch.tensor([2.0]), clip_eps=0.2)
    assert torch.allclose(obj, torch.tensor([[2.4, 1.0, 2.2]]))
    assert clipped.tolist() == [[True, False, False]]
    # negative advantage -1: min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8; -1.1
    obj, clipped = clipped_objective(new, old, torch.tensor([-1.0]), clip_eps=0.2)
    assert torch.allclose(obj, torch.tensor([[-1.5, -0.8, -1.1]]))
    assert clipped.tolist() == [[False, True, False]]


def test_aggregation_per_sequence_and_per_token():
    x = torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(x, mask, "sequence").item() == pytest.approx((1.0 + 4.0) / 2)
    assert aggregate(x, mask, "token").item() == pytest.approx(6.0 / 3)


def test_grpo_loss_at_the_old_policy_is_minus_mean_advantage():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    adv = torch.tensor([1.0, -3.0])
    loss, stats = grpo_loss(logp, logp, logp, adv, torch.ones(2, 2), beta=0.1)
    assert loss.item() == pytest.approx(-(1.0 - 3.0) / 2)
    assert stats["kl"] == 0 and stats["clip_frac"] == 0
