"""infer/prefix_cache.py: hits of block-aligned shared prefixes, outputs unchanged, LRU eviction, persistence."""

import pytest
import torch
from infer_models import TINY, greedy_reference, make_model, prompts

from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.infer.kv_cache import BlockPool

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return make_model(TINY, seed=11)


def run(engine: Engine, prompt: list[int], params: SamplingParams = GREEDY) -> tuple[list[int], int]:
    """(output, prompt tokens served from the cache)"""
    [last] = [u for u in engine.stream([engine.add_request(prompt, params)]) if u.finish_reason]
    return last.sequence.output_ids, last.sequence.request.cached_tokens


def test_cached_tokens_are_the_block_aligned_shared_prefix(model):
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=8))
    a, tail = prompts([50, 20], seed=1)
    assert run(engine, a)[1] == 0
    for shared in (37, 40, 8, 7, 50):
        b = a[:shared] + [(t + 1) % TINY.vocab_size for t in a[shared:shared + 1]] + tail
        out, cached = run(engine, b)
        assert cached == shared // 8 * 8
        assert out == greedy_reference(model, b, 6)
    # the whole prompt cached: its last token is still prefilled, for the logits of the first new token
    assert run(engine, a)[1] == 48
    assert run(engine, a[:48])[1] == 40


def test_outputs_are_the_same_with_and_without_the_prefix_cache(model):
    system = prompts([29], seed=2)[0]
    batch = [system + q for q in prompts([3, 11, 6, 17], seed=3)] + [system[:13]]
    cached = Engine(model, EngineConfig(cache_mb=2, block_size=4))
    plain = Engine(model, EngineConfig(cache_mb=2, block_size=4, prefix_cache=False))
    params = SamplingParams(temperature=0.8, max_tokens=12, ignore_eos=True, seed=3)
    with_cache = [run(cached, p, params) for p in batch]
    assert [c for _, c in with_cache] == [0, 28, 28, 28, 12]
    assert [o for o, _ in with_cache] == [run(plain, p, params)[0] for p in batch]
    assert plain.stats.cached_tokens == 0


def test_lru_keeps_the_recently_used_prefix():
    pool = BlockPool(layers=1, width=4, block_size=2, budget_bytes=1 * 2 * 4 * 4 * 4)  # 3 usable blocks
    x, y, z = pool.allocate(3)
    for block, key in ((x, b"x"), (y, b"y"), (z, b"z")):
        pool.set_key(block, key)
    pool.release([x, y, z])             # parked in this order: x is the least recently used
    pool.share([x])                     # a hit on x makes it the most recent again
    pool.release([x])
    [reused] = pool.allocate(1)
    assert reused == y and pool.lookup(b"y") is None and pool.lookup(b"x") == x


def test_eviction_under_a_small_budget(model):
    block_bytes = TINY.num_hidden_layers * 4 * sum(TINY.cache_widths()) * 4
    engine = Engine(model, EngineConfig(cache_mb=25 * block_bytes / 2**20, block_size=4))  # 24 usable blocks
    a, b = prompts([40, 60], seed=4)
    out_a, _ = run(engine, a)
    assert engine.pool.parked_blocks == 11 and engine.free_blocks == 24  # a's 11 full blocks stay cached
    assert run(engine, a) == (out_a, 36)
    # b needs 17 blocks, 13 are empty: the 4 least recently used of a's parked blocks give way, the two a's second
    # run did not touch and then its first two (re-parked first), so a's prefix no longer matches at all
    run(engine, b)
    assert engine.pool.parked_blocks == 11 - 4 + 16
    out, cached = run(engine, a)
    assert out == out_a and cached == 0


def test_persisted_cache_survives_an_engine_restart(model, tmp_path):
    a = prompts([45], seed=5)[0]
    first = Engine(model, EngineConfig(cache_mb=2, block_size=8, prefix_cache_dir=str(tmp_path)))
    out, cached = run(first, a)
    assert cached == 0 and len(list(tmp_path.glob("*.safetensors"))) == 6  # 50 tokens cached: 6 full blocks
    del first
    second = Engine(model, EngineConfig(cache_mb=2, block_size=8, prefix_cache_dir=str(tmp_path)))
    assert run(second, a) == (out, 40)
    other = make_model(TINY, seed=12)  # other weights never read these blocks
    third = Engine(other, EngineConfig(cache_mb=2, block_size=8, prefix_cache_dir=str(tmp_path)))
    assert run(third, a) == (greedy_reference(other, a, 6), 0)


def test_changed_weights_drop_the_cached_prefixes(model):
    local = make_model(TINY, seed=13)
    engine = Engine(local, EngineConfig(cache_mb=2, block_size=8))
    a = prompts([30], seed=6)[0]
    run(engine, a)
    with torch.no_grad():
        local.lm_head.weight.mul_(1.5)
        local.layers[0].self_attn.kv_a_proj_with_mqa.weight.add_(0.1)
    assert run(engine, a) == (greedy_reference(local, a, 6), 0)


def test_a_shared_1024_token_prefix_is_not_computed_again():
    """The second request runs only its own 8 tokens through the model (wall time:
    benchmarks/batching_and_prefix_cache.py)."""
    model = make_model(TINY.replace(max_position_embeddings=2048), seed=14)
    engine = Engine(model, EngineConfig(cache_mb=32, block_size=16))
    prefix = prompts([1024], seed=7)[0]
    first, second = (prefix + q for q in prompts([8, 8], seed=8))
    params = SamplingParams(temperature=0, max_tokens=1)
    computed = []  # prompt tokens of each prefill forward (max_tokens=1: the first token comes from the prefill)
    prefill = engine.forward.prefill

    def counted(seqs, starts, lengths):
        computed.append(sum(lengths))
        return prefill(seqs, starts, lengths)

    engine.forward.prefill = counted
    run(engine, first, params)
    cold = sum(computed)
    computed.clear()
    _, cached = run(engine, second, params)
    assert cached == 1024 and cold == 1032 and sum(computed) == 8


def test_a_corrupt_file_on_disk_is_a_miss_deleted_and_counted(model, tmp_path):
    a = prompts([45], seed=5)[0]
    first = Engine(model, EngineConfig(cache_mb=2, block_size=8, prefix_cache_dir=str(tmp_path)))
    out, _ = run(first, a)
    hasher = first.prefix.hasher()
    third = tmp_path / f"{[first.prefix.key(hasher, a, i) for i in range(3)][2].hex()}.safetensors"
    third.write_bytes(third.read_bytes()[:100])           # truncated: the prompt's third block
    second = Engine(model, EngineConfig(cache_mb=2, block_size=8, prefix_cache_dir=str(tmp_path)))
    assert run(second, a) == (out, 16)                    # the two blocks before it still hit
    assert second.prefix.corrupt_files == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 6 and third.stat().st_size > 100   # written afresh
