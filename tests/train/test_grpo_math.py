import math

import pytest
import torch

from nanoseek.train.curriculum import Curriculum, next_level
from nanoseek.train.grpo import (aggregate, clipped_objective, group_advantages, groups_with_signal, grpo_loss,
                                 kl_estimate, zero_variance_groups)


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


def test_clip_higher_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55, 0.625]]))  # ratios 1.5, 0.5, 1.1, 1.25
    # ε_low 0.2, ε_high 0.28, advantage 2: min(3, 1.28*2) = 2.56; min(1, 0.8*2) = 1; 2.2; 1.25 < 1.28: 2.5
    obj, clipped = clipped_objective(new, old, torch.tensor([2.0]), clip_eps=0.2, clip_eps_high=0.28)
    assert torch.allclose(obj, torch.tensor([[2.56, 1.0, 2.2, 2.5]]))
    assert clipped.tolist() == [[True, False, False, False]]
    sym, _ = clipped_objective(new, old, torch.tensor([2.0]), clip_eps=0.2)   # symmetric: 1.25 is clipped to 1.2
    assert sym[0, 3].item() == pytest.approx(2.4)
    # advantage -1: min(-1.5, -1.28) = -1.5; min(-0.5, -0.8) = -0.8 (ε_low still binds below); -1.1; -1.25
    obj, clipped = clipped_objective(new, old, torch.tensor([-1.0]), clip_eps=0.2, clip_eps_high=0.28)
    assert torch.allclose(obj, torch.tensor([[-1.5, -0.8, -1.1, -1.25]]))
    assert clipped.tolist() == [[False, True, False, False]]


def test_groups_with_signal_by_hand():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.5, 1.0]])
    assert groups_with_signal(r, 1) == [1]
    assert groups_with_signal(r, 2) == [1, 3]
    assert groups_with_signal(r, 5) == [1, 3]
    assert groups_with_signal(r, 0) == []


@pytest.mark.parametrize("level, rate, expected", [
    (1, 0.95, 2), (5, 0.95, 5),      # above the band: up, but not past the highest level
    (2, 0.05, 1), (1, 0.05, 1),      # below: down, but not under the lowest
    (3, 0.5, 3), (3, 0.9, 3), (3, 0.1, 3),   # inside the band, its edges included: stay
])
def test_next_level_by_hand(level, rate, expected):
    assert next_level(level, rate, band=(0.1, 0.9), levels=(1, 5)) == expected


def test_curriculum_by_hand():
    c = Curriculum(["arithmetic", "linear"], start=1, band=(0.25, 0.75), levels=(1, 3), window=4)
    c.record("arithmetic", 1, [1, 1, 1])
    assert c.level["arithmetic"] == 1 and c.pass_rate("arithmetic") == 1.0   # the window is not full yet
    c.record("arithmetic", 1, [1])
    assert c.level == {"arithmetic": 2, "linear": 1} and c.pass_rate("arithmetic") is None   # 4/4 > 0.75: up
    c.record("arithmetic", 1, [0, 0, 0, 0])      # drawn before the change: not counted
    assert c.level["arithmetic"] == 2 and c.outcomes["arithmetic"] == []
    c.record("arithmetic", 2, [0, 0])
    c.record("arithmetic", 2, [0, 1])            # 1/4 = 0.25, on the band's edge: stay
    assert c.level["arithmetic"] == 2
    for _ in range(3):                           # the window slides: [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]
        c.record("arithmetic", 2, [0])
    assert c.level["arithmetic"] == 2 and c.outcomes["arithmetic"] == [1, 0, 0, 0]
    state = c.state_dict()
    c.record("arithmetic", 2, [0])
    assert c.level["arithmetic"] == 1 and c.outcomes["arithmetic"] == []     # [0, 0, 0, 0]: down
    c.load_state_dict(state)
    assert c.level["arithmetic"] == 2 and c.outcomes["arithmetic"] == [1, 0, 0, 0]
