"""infer/kv_cache.py: the block pool's accounting, and PagedBatch's rows, positions and padding."""
import pytest
import torch
from infer_models import TINY, make_model

from nanoseek.errors import NanoseekError
from nanoseek.infer.kv_cache import BlockPool, PagedBatch

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
    for kv in pool.kv:
        kv[pool.block_size:] = float("nan")  # as uninitialised memory might be
    a = pool.allocate(2)
    pool.release(a[:1])
    b = pool.allocate(3)                           # one reused block, two fresh ones
    end = 4 * (max(a + b) + 1)
    assert all(torch.isfinite(kv[:end]).all() and torch.isnan(kv[end:]).all() for kv in pool.kv)  # rest untouched


def test_too_small_a_budget_is_refused():
    with pytest.raises(NanoseekError, match="need at least 2"):
        BlockPool(layers=4, width=80, block_size=16, budget_bytes=10_000)


def test_batch_maps_positions_to_pool_rows():
    pool = BlockPool(layers=1, width=2, block_size=4, budget_bytes=1 * 4 * 2 * 4 * 8)
    batch = PagedBatch.build(pool, tables=[[3, 5], [6]], starts=[2, 0], lengths=[3, 2])
    assert batch.positions.tolist() == [[2, 3, 4], [0, 1, 1]]        # padding repeats the last position
    assert batch.write.tolist() == [14, 15, 20, 24, 25, 0]            # block * 4 + offset; padding -> row 0
    assert batch.read[0].tolist() == [12, 13, 14, 15, 20]
    assert batch.mask[1, 1].tolist() == [True, True, False, False, False]
    decode = PagedBatch.build(pool, tables=[[3, 5]], starts=[6], lengths=[1], absorbed=True)
    assert decode.write.tolist() == [22] and decode.absorbed


def test_a_compiled_steps_padding_reads_and_writes_only_block_0():
    """Padded to 4 rows and 16 positions, as a compiled decode step is: the extra rows feed position 0 of block 0,
    and the extra positions of a real row read block 0's rows, masked."""
    pool = BlockPool(layers=1, width=2, block_size=4, budget_bytes=1 * 4 * 2 * 4 * 8)
    batch = PagedBatch.build(pool, tables=[[3, 5]], starts=[6], lengths=[1], absorbed=True, span=16, rows=4)
    assert batch.read.shape == (4, 16) and batch.positions.tolist() == [[6], [0], [0], [0]]
    assert batch.write.tolist() == [22, 0, 0, 0]
    assert batch.read[0].tolist() == [12, 13, 14, 15, 20, 21, 22, 23] + [0, 1, 2, 3] * 2
    assert batch.mask[0, 0].tolist() == [True] * 7 + [False] * 9
    assert batch.read[1:].max() < 4 and batch.mask[1:, 0, 1:].sum() == 0


def test_mtp_over_the_pool_matches_the_models_mtp_module():
    model = make_model(TINY, seed=2)
    pool = BlockPool(TINY.num_hidden_layers + 1, sum(TINY.cache_widths()), 4, 1 << 20)
    ids = torch.randint(0, TINY.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    tables = [pool.allocate(5), pool.allocate(5)]
    with torch.inference_mode():
        h = model.hidden_states(ids)
        expected = model.mtp_head(0, model.mtp_hidden(0, h[:, :16], ids[:, 1:]))
        batch = PagedBatch.build(pool, tables, [0, 0], [16, 16])
        got = model.mtp_head(0, model.mtp_hidden(0, model.hidden_states(ids[:, :16], batch), ids[:, 1:], batch))
    assert (got - expected).abs().max() < 1e-4
