"""infer/kv_cache.py (BlockPool, PagedBatch) and infer/runner.py: the paged forward equals the model's own."""
import pytest
import torch
from infer_models import TINY, make_model

from nanoseek.config import ModelConfig
from nanoseek.errors import NanoseekError
from nanoseek.infer.kv_cache import BlockPool, PagedBatch
from nanoseek.infer.runner import PARALLEL_TOKENS, Runner, threads_for

CONFIGS = {
    "mla_q_lora": TINY,
    "mla_no_q_lora_yarn_halves": TINY.replace(q_lora_rank=None, rope_interleave=False, n_group=1, topk_group=1,
                                              rope_scaling=dict(type="yarn", factor=4.0, mscale=1.0, mscale_all_dim=0.8,
                                                                original_max_position_embeddings=32)),
    "mla_dense_student": ModelConfig.from_preset("tiny-student-mla").replace(vocab_size=96),
    "gqa_student": ModelConfig.from_preset("tiny-student").replace(vocab_size=96),
    "softmax_routing_all_moe": TINY.replace(scoring_func="softmax", first_k_dense_replace=0, n_group=1, topk_group=1,
                                            norm_topk_prob=False),
}


def test_budget_becomes_blocks_and_blocks_are_refcounted_parked_and_evicted():
    pool = BlockPool(layers=3, width=10, block_size=4, budget_bytes=3 * 4 * 10 * 4 * 6)  # 6 blocks of 480 bytes
    assert pool.num_blocks == 6 and pool.capacity == 5 == pool.free_blocks  # block 0 is the padding sink
    a = pool.allocate(2)
    b = pool.allocate(3)
    assert 0 not in a + b and pool.free_blocks == 0
    with pytest.raises(NanoseekError, match="3 cache blocks"):
        pool.allocate(3)
    pool.share(a)                      # a second holder
    pool.release(a)
    assert pool.free_blocks == 0       # still held once
    assert pool.set_key(a[0], b"k0") and not pool.set_key(b[0], b"k0")  # one block per prefix
    pool.release(a)
    assert pool.free_blocks == 2 and pool.parked_blocks == 1 and pool.lookup(b"k0") == a[0]
    pool.share([a[0]])                 # a prefix hit takes the parked block back
    assert pool.parked_blocks == 0 and pool.free_blocks == 1
    pool.release([a[0]])
    pool.release(b)
    c = pool.allocate(5)               # empty blocks first, then the parked one is evicted and its key dropped
    assert sorted(c) == [1, 2, 3, 4, 5] and pool.lookup(b"k0") is None


def test_blocks_hold_finite_numbers_from_their_first_use():
    """Masked rows still enter p @ V: whatever the fresh memory held, a block handed out reads as zeros."""
    pool = BlockPool(layers=2, width=3, block_size=4, budget_bytes=2 * 4 * 3 * 4 * 6)
    pool.kv[:, pool.block_size:] = float("nan")  # as uninitialised memory might be
    a = pool.allocate(2)
    pool.release(a[:1])
    b = pool.allocate(3)                           # one reused block, two fresh ones
    assert torch.isfinite(pool.kv[:, :4 * (max(a + b) + 1)]).all()
    assert torch.isnan(pool.kv[:, 4 * (max(a + b) + 1):]).all()  # the rest is left alone until needed


def test_too_small_a_budget_is_refused():
    with pytest.raises(NanoseekError, match="need at least 2"):
        BlockPool(layers=4, width=80, block_size=16, budget_bytes=10_000)


def test_batch_maps_positions_to_pool_rows():
    pool = BlockPool(layers=1, width=2, block_size=4, budget_bytes=1 * 4 * 2 * 4 * 8)
    batch = PagedBatch(pool, tables=[[3, 5], [6]], starts=[2, 0], lengths=[3, 2])
    assert batch.positions.tolist() == [[2, 3, 4], [0, 1, 1]]        # padding repeats the last position
    assert batch.write.tolist() == [14, 15, 20, 24, 25, 0]            # block * 4 + offset; padding -> row 0
    assert batch.read[0].tolist() == [12, 13, 14, 15, 20]
    assert batch.mask[1, 1].tolist() == [True, True, False, False, False]
    decode = PagedBatch(pool, tables=[[3, 5]], starts=[6], lengths=[1])
    assert decode.write.tolist() == [22] and decode.bias(4, torch.float32) is None  # one row sees all


@pytest.mark.parametrize("name", CONFIGS)
def test_chunked_prefill_and_decode_reproduce_the_full_forward(name):
    config = CONFIGS[name]
    model = make_model(config, seed=1)
    runner = Runner(model)
    width = sum(config.cache_widths())
    pool = BlockPool(config.num_hidden_layers + config.num_nextn_predict_layers, width, 4, 1 << 20)
    ids = torch.randint(0, config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    tables = [pool.allocate(8), pool.allocate(8)]
    with torch.inference_mode():
        full = model(ids)
        got = torch.zeros_like(full)
        # rows of different lengths in one padded batch, in two chunks, then one token at a time together
        for start, lengths in ((0, [11, 5]), (None, [9, 6])):
            starts = [0, 0] if start == 0 else [11, 5]
            T = max(lengths)
            chunk = torch.stack([torch.cat([ids[i, s:s + n], torch.zeros(T - n, dtype=torch.long)])
                                 for i, (s, n) in enumerate(zip(starts, lengths))])
            logits = runner.logits(runner.hidden(chunk, PagedBatch(pool, tables, starts, lengths))).view(2, T, -1)
            for i, (s, n) in enumerate(zip(starts, lengths)):
                got[i, s:s + n] = logits[i, :n]
        pos = [20, 11]
        for _ in range(10):
            step = torch.tensor([[ids[0, pos[0]]], [ids[1, pos[1]]]])
            logits = runner.logits(runner.hidden(step, PagedBatch(pool, tables, pos, [1, 1])))
            got[0, pos[0]], got[1, pos[1]] = logits[0], logits[1]
            pos = [p + 1 for p in pos]
    assert full.std() > 0.5
    assert (got[0, :30] - full[0, :30]).abs().max() < 1e-4
    assert (got[1, :21] - full[1, :21]).abs().max() < 1e-4


def test_mtp_over_the_pool_matches_the_models_mtp_step():
    model = make_model(TINY, seed=2)
    runner = Runner(model)
    pool = BlockPool(TINY.num_hidden_layers + 1, sum(TINY.cache_widths()), 4, 1 << 20)
    ids = torch.randint(0, TINY.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    tables = [pool.allocate(5), pool.allocate(5)]
    with torch.inference_mode():
        h = model.hidden_states(ids)
        _, expected = model.mtp_step(0, h[:, :16], ids[:, 1:], torch.arange(16).expand(2, -1))
        batch = PagedBatch(pool, tables, [0, 0], [16, 16])
        _, got = runner.mtp(runner.hidden(ids[:, :16], batch), ids[:, 1:], batch)
    assert (got.view(2, 16, -1) - expected).abs().max() < 1e-4


def test_forwards_over_few_tokens_run_on_one_thread():
    torch.set_num_threads(2)  # the suite's fixture puts it back
    with threads_for(8):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads_for(PARALLEL_TOKENS):
        assert torch.get_num_threads() == 2
