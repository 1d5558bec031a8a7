"""infer/speculative.py: the acceptance rule keeps the target distribution; MTP speculation leaves greedy output
unchanged and sampled output distributed as plain sampling."""
import itertools
import math

import pytest
import torch
from infer_models import TINY, greedy_reference, make_model, prompts

from nanoseek.errors import NanoseekError
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.infer.speculative import accept_draft


def chi2_threshold(dof: int, z: float = 3.72) -> float:
    """Wilson-Hilferty: the chi-square quantile at the normal quantile z (3.72: p = 1e-4)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was produced"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_accept_draft_output_is_distributed_as_the_target():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.2, 0.1])
    g = torch.Generator().manual_seed(0)
    N, accepted = 6000, 0
    counts = torch.zeros(6)
    for _ in range(N):
        draft = int(torch.multinomial(q, 1, generator=g))
        ok, token = accept_draft(p, q, draft, g)
        accepted += ok
        counts[token] += 1
    assert chi2(counts, p) < chi2_threshold(4)
    assert abs(accepted / N - torch.minimum(p, q).sum().item()) < 0.025  # P(accept) = sum_x min(p(x), q(x))


SMALL_VOCAB = TINY.replace(vocab_size=6)  # the random MTP guesses right often enough to test both branches


@pytest.mark.parametrize("config, penalties", [(TINY, {}), (SMALL_VOCAB, {}),
                                               (SMALL_VOCAB, dict(presence_penalty=0.7, repetition_penalty=1.3))])
def test_greedy_speculation_gives_plain_greedy_output(config, penalties):
    model = make_model(config, seed=21)
    batch = prompts([4, 19, 33, 9, 1], vocab=config.vocab_size, seed=1)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, **penalties)
    plain = Engine(model, EngineConfig(cache_mb=2, block_size=4)).generate(batch, params)
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4, prefill_chunk=12, speculative=True))
    assert engine.generate(batch, params) == plain
    if not penalties:
        assert plain == [greedy_reference(model, p, 40) for p in batch]
    stats = engine.stats
    assert stats.drafted > 0 and (config is TINY or 0 < stats.accepted < stats.drafted)
    # an accepted draft yields two tokens from one main-model forward
    assert stats.generated_tokens == 40 * len(batch)


def test_speculation_with_samples_stops_and_the_prefix_cache():
    model = make_model(SMALL_VOCAB, seed=22)
    [p] = prompts([21], vocab=6, seed=2)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    spec = Engine(model, EngineConfig(cache_mb=2, block_size=8, speculative=True))
    expected = greedy_reference(model, p, 30)
    assert spec.generate([p], params) == [expected]
    # with MTP latents cached, a block's key covers one token past it: a 40-token shared prefix gives 32
    b = expected[:19] + [(expected[19] + 1) % 6]
    request = spec.add_request(p + b, params)
    [last] = [u for u in spec.stream([request]) if u.finish_reason]
    assert last.sequence.request.cached_tokens == 32 and last.sequence.output_ids == greedy_reference(model, p + b, 30)
    stop = expected[11]
    assert spec.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_token_ids=(stop,))) \
        == [expected[:expected.index(stop) + 1]]
    samples = spec.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, n=3))
    assert samples == [expected] * 3


def test_sampled_speculation_keeps_the_target_distribution():
    """Three sampled tokens after a fixed prompt: the second comes from a verified draft, the third from the
    bonus position or the next step. Their joint frequencies must follow the model's own distribution."""
    model = make_model(SMALL_VOCAB, seed=23)
    [p] = prompts([5], vocab=6, seed=3)
    V, T = 6, 1.3
    with torch.no_grad():  # exact P(t1, t2, t3) by full forwards over every (t1, t2), row t1 * V + t2
        conts = torch.tensor(list(itertools.product(range(V), repeat=2)))
        probs = (model(torch.cat([torch.tensor([p]).expand(V * V, -1), conts], dim=1)) / T).softmax(-1)
    L, rows = len(p), torch.arange(V * V)
    first = probs[0, L - 1, conts[:, 0]] * probs[rows, L, conts[:, 1]]          # P(t1) P(t2 | t1)
    joint = first.unsqueeze(1) * probs[:, L + 1]                                 # (V * V, V): times P(t3 | t1, t2)
    assert torch.isclose(joint.sum(), torch.tensor(1.0), atol=1e-5)
    engine = Engine(model, EngineConfig(cache_mb=8, block_size=4, max_seqs=256, speculative=True))
    requests = [engine.add_request(p, SamplingParams(temperature=T, max_tokens=3, n=64, seed=64 * r, ignore_eos=True))
                for r in range(60)]
    outs = [u.sequence.output_ids for u in engine.stream(requests) if u.finish_reason]
    assert len(outs) == 3840 and 0.1 < engine.stats.acceptance_rate < 0.9
    counts = torch.zeros(V ** 3)
    for t1, t2, t3 in outs:
        counts[(t1 * V + t2) * V + t3] += 1
    pair = joint.view(V, V, V).sum(0).flatten()  # (t2, t3): where speculation acts
    pair_counts = counts.view(V, V, V).sum(0).flatten()
    assert chi2(pair_counts, pair) < chi2_threshold(V * V - 1)
    assert chi2(counts.view(V, V, V).sum((0, 2)), joint.view(V, V, V).sum((0, 2))) < chi2_threshold(V - 1)


def test_speculation_needs_an_mtp_module():
    with pytest.raises(NanoseekError, match="num_nextn_predict_layers=0"):
        Engine(make_model(TINY.replace(num_nextn_predict_layers=0)), EngineConfig(speculative=True))
