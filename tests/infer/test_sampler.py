import math

import pytest
import torch
from infer_models import make_model, prompts

from nanoseek.errors import NanoseekError
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.infer.sampler import apply_penalties, min_p_mask, probabilities, top_k_mask, top_logprobs, top_p_mask


def test_penalties_match_a_hand_worked_example():
    # vocabulary of 4; token 0 generated twice, token 2 once, token 3 only in the prompt
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    counts = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    seen = torch.tensor([[True, False, True, True]])
    one = torch.tensor([[1.0]])
    # OpenAI: logit[j] -= frequency * c[j] + presence * (c[j] > 0)
    out = apply_penalties(logits, counts, seen, presence=torch.tensor([[0.5]]), frequency=torch.tensor([[0.25]]),
                          repetition=one)
    assert out.tolist() == [[2.0 - 0.5 - 0.5, 1.0, -1.0 - 0.25 - 0.5, 0.5]]
    # CTRL: seen tokens, positive logits divided by r, negative multiplied; token 1 was never seen
    out = apply_penalties(logits, counts, seen, presence=torch.zeros(1, 1), frequency=torch.zeros(1, 1),
                          repetition=torch.tensor([[2.0]]))
    assert out.tolist() == [[1.0, 1.0, -2.0, 0.25]]


def _reference_top_p(row: list[float], p: float) -> set[int]:
    probs = torch.tensor(row).softmax(-1).tolist()
    order = sorted(range(len(row)), key=lambda i: -probs[i])
    kept, total = set(), 0.0
    for i in order:
        kept.add(i)
        total += probs[i]
        if total >= p:
            break
    return kept


def test_truncation_masks_match_plain_reference_computations():
    torch.manual_seed(0)
    logits = torch.randn(6, 20) * 2
    k = torch.tensor([[1], [3], [0], [7], [20], [5]])
    kept = ~torch.isinf(top_k_mask(logits, k))
    for row, kk in zip(range(6), k.flatten().tolist()):
        expected = set(sorted(range(20), key=lambda i: -logits[row, i].item())[:kk or 20])
        assert set(kept[row].nonzero().flatten().tolist()) == expected
    p = torch.tensor([[0.1], [0.5], [0.9], [1.0], [0.3], [0.99]])
    kept = ~torch.isinf(top_p_mask(logits, p))
    for row in range(6):
        assert set(kept[row].nonzero().flatten().tolist()) == _reference_top_p(logits[row].tolist(), p[row].item())
    m = torch.tensor([[0.0], [0.05], [0.2], [0.5], [0.9], [1.0]])
    kept = ~torch.isinf(min_p_mask(logits, m))
    for row in range(6):
        probs = logits[row].softmax(-1)
        expected = {i for i in range(20) if probs[i] >= m[row].item() * probs.max()}
        assert set(kept[row].nonzero().flatten().tolist()) == expected


def test_probabilities_apply_temperature_then_truncate_and_renormalise():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    probs = probabilities(logits, torch.tensor([[0.5]]), torch.tensor([[2]]), torch.ones(1, 1), torch.zeros(1, 1))
    top2 = torch.tensor([6.0, 8.0]).softmax(-1)  # logits / 0.5, tokens 2 and 3 kept
    assert torch.allclose(probs, torch.tensor([[0.0, 0.0, top2[0], top2[1]]]))


def test_logprobs_are_the_models_own_log_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    picked, top = top_logprobs(logits, torch.tensor([0, 0]), 2)
    logp = logits.log_softmax(-1)
    assert picked == pytest.approx([logp[0, 0].item(), logp[1, 0].item()])
    assert [t for t, _ in top[0]] == [2, 1] and top[0][0][1] == pytest.approx(logp[0, 2].item())
    assert [t for t, _ in top[1]][0] == 0


@pytest.mark.parametrize("bad, value", [(dict(max_tokens=0), "0"), (dict(top_p=0.0), "0.0"), (dict(top_p=1.5), "1.5"),
                                        (dict(temperature=-1), "-1"), (dict(n=0), "0"),
                                        (dict(presence_penalty=3), "3"), (dict(stop=("",)), "''")])
def test_bad_sampling_parameters_name_the_value(bad, value):
    with pytest.raises(NanoseekError, match=next(iter(bad))) as e:
        SamplingParams(**bad)
    assert value in str(e.value)


@pytest.fixture(scope="module")
def engine():
    return Engine(make_model(), EngineConfig(cache_mb=2, block_size=4))


def test_same_seed_same_output_and_other_seeds_differ(engine):
    [p] = prompts([7])
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, ignore_eos=True, seed=5)
    a = engine.generate([p], params)
    b = engine.generate([p, p[:3]], params)[0]  # in another batch
    c = engine.generate([p], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, ignore_eos=True, seed=6))
    assert a == [b] and a != c


def test_penalties_change_greedy_output_as_their_definition_says(engine):
    [p] = prompts([6], seed=3)
    plain = engine.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0]
    # a huge presence penalty forbids any generated token from coming back: all 30 tokens distinct
    fresh = engine.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, presence_penalty=2.0,
                                                repetition_penalty=1.0))[0]
    assert len(set(plain)) < 30 and len(set(fresh)) == 30


def test_logprobs_in_outputs_match_a_full_forward(engine):
    [p] = prompts([5], seed=4)
    request = engine.add_request(p, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3))
    updates = [u for u in engine.stream([request])]
    seq = updates[-1].sequence
    with torch.no_grad():
        logp = engine.model(torch.tensor([seq.tokens[:-1]]))[0].log_softmax(-1)
    for i, (token, (chosen, top)) in enumerate(zip(seq.output_ids, seq.logprobs)):
        row = logp[len(p) - 1 + i]
        assert chosen == pytest.approx(row[token].item(), abs=1e-4)
        assert len(top) == 3 and top[0][0] == token  # greedy: the chosen token is the most likely one
        assert [lp for _, lp in top] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
    assert sum(len(u.logprobs) for u in updates) == 6


def test_sampling_follows_the_distribution(engine):
    """Temperature sampling draws from softmax(logits / T): first-token frequencies against the exact ones."""
    [p] = prompts([4], seed=9)
    ids = [engine.add_request(p, SamplingParams(temperature=1.5, max_tokens=1, n=48, seed=48 * r)) for r in range(25)]
    outs = [u.token_ids[0] for u in engine.stream(ids)]
    with torch.no_grad():
        expected = (engine.model(torch.tensor([p]))[0, -1] / 1.5).softmax(-1)
    counts = torch.bincount(torch.tensor(outs), minlength=expected.numel()).float()
    top = expected.topk(3).indices
    N = len(outs)
    for t in top.tolist():  # each within 4.5 standard deviations
        sd = math.sqrt(N * expected[t] * (1 - expected[t]))
        assert abs(counts[t] - N * expected[t]) < 4.5 * sd
