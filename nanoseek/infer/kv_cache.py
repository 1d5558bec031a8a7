"""The latent KV cache of MLA: per layer and token it holds only c_kv (kv_lora_rank) and the shared rotary key
(qk_rope_head_dim) — V2 report §2.1.4 — never per-head keys or values.

Two layouts. `LatentCache` is one contiguous tensor per batch, for simple loops (evaluation, tests). `BlockPool`
is the engine's: the byte budget cut into blocks of a fixed number of tokens, which sequences hold in lists and
share by reference count (paged attention, Kwon et al. 2023, here over MLA's latents); `PagedBatch` is one
forward's view of it.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import InferenceError


class LatentCache:
    """A contiguous cache for `batch` sequences of up to `max_len` tokens, over the main layers and the MTP
    modules. Each row writes at its own positions, so rows of different lengths share one batched forward."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype=torch.float32, device=None):
        layers = config.num_hidden_layers + config.num_nextn_predict_layers
        latent, rope = config.cache_widths()  # GQA students cache their key and value heads here instead
        self.c_kv = torch.zeros(layers, batch, max_len, latent, dtype=dtype, device=device)
        self.k_rope = torch.zeros(layers, batch, max_len, rope, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer: int, c_kv: torch.Tensor, k_rope: torch.Tensor, positions: torch.Tensor):
        """Store new latents (batch, T, .) at positions (batch, T); return the cached latents up to the furthest
        position and the mask (batch, T, S) of keys each new token may see (its own and earlier positions)."""
        rows = torch.arange(c_kv.shape[0], device=c_kv.device).unsqueeze(1)
        self.c_kv[layer, rows, positions] = c_kv.to(self.c_kv.dtype)
        self.k_rope[layer, rows, positions] = k_rope.to(self.k_rope.dtype)
        S = int(positions.max()) + 1
        mask = torch.arange(S, device=positions.device) <= positions.unsqueeze(-1)
        return self.c_kv[layer, : c_kv.shape[0], :S], self.k_rope[layer, : c_kv.shape[0], :S], mask


class BlockPool:
    """`budget_bytes` of cache as blocks of `block_size` tokens over `layers` layers, each token `width` numbers
    wide (c_kv and k_rope side by side). Token t of block b lives in row b * block_size + t of `kv[layer]`.

    A block is held by the sequences that use it (reference count). A full block may carry a key (a hash of the
    prefix it holds, see prefix_cache.py): when its last holder lets go it is not emptied but parked, least
    recently used first, and reused only when no empty block is left. Block 0 is never handed out: the padding
    tokens of a batch write there."""

    def __init__(self, layers: int, width: int, block_size: int, budget_bytes: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.block_size, self.width = block_size, width
        self.bytes_per_block = layers * block_size * width * torch.empty((), dtype=dtype).element_size()
        self.num_blocks = int(budget_bytes // self.bytes_per_block)
        if self.num_blocks < 2:
            raise InferenceError(f"a cache budget of {budget_bytes / 2**20:.3f} MiB holds {self.num_blocks} blocks "
                                 f"of {self.bytes_per_block} bytes ({block_size} tokens x {layers} layers x {width} "
                                 f"values); need at least 2")
        # Rows a batch reads but masks out still enter p @ V (0 * NaN is NaN), so every block must hold finite
        # numbers: each is zeroed the first time it is handed out (zeroing the whole budget up front took 0.5 s
        # for 256 MiB), block 0 now.
        self.kv = torch.empty(layers, self.num_blocks * block_size, width, dtype=dtype, device=device)
        self.kv[:, self.rows(0)] = 0
        self._untouched = 1                                       # blocks from here on were never handed out
        self._empty = list(range(self.num_blocks - 1, 0, -1))   # a stack: low block ids first
        self._refs = [0] * self.num_blocks
        self._key_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._parked: OrderedDict[int, None] = OrderedDict()   # keyed blocks nobody holds, least recent first

    @property
    def capacity(self) -> int:
        """Blocks a request can ever get (block 0 excluded)."""
        return self.num_blocks - 1

    @property
    def free_blocks(self) -> int:
        """Blocks no sequence holds: empty ones plus parked prefixes, which are given up on demand."""
        return len(self._empty) + len(self._parked)

    @property
    def parked_blocks(self) -> int:
        return len(self._parked)

    def allocate(self, n: int) -> list[int]:
        """n blocks for a new holder: empty ones first, then the least recently used parked prefixes."""
        if n > self.free_blocks:
            raise InferenceError(f"asked for {n} cache blocks with {self.free_blocks} free")
        blocks = []
        for _ in range(n):
            if self._empty:
                b = self._empty.pop()
            else:
                b, _ = self._parked.popitem(last=False)
                del self._block_of[self._key_of.pop(b)]
            self._refs[b] = 1
            blocks.append(b)
        # fresh blocks come off the stack in increasing order, after any reused one
        fresh = max(blocks, default=0) + 1
        if fresh > self._untouched:
            self.kv[:, self._untouched * self.block_size:fresh * self.block_size] = 0
            self._untouched = fresh
        return blocks

    def share(self, blocks: list[int]) -> None:
        """One more holder for each block (a parked block is taken back into use)."""
        for b in blocks:
            if self._refs[b] == 0:
                del self._parked[b]
            self._refs[b] += 1

    def release(self, blocks: list[int]) -> None:
        """One holder fewer; a block nobody holds is parked if it has a key, emptied otherwise."""
        for b in blocks:
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._key_of:
                    self._parked[b] = None
                else:
                    self._empty.append(b)

    def set_key(self, block: int, key: bytes) -> bool:
        """Name a full block by the prefix it holds; False when another block already holds that prefix."""
        if key in self._block_of or block in self._key_of:
            return False
        self._key_of[block], self._block_of[key] = key, block
        return True

    def lookup(self, key: bytes) -> int | None:
        return self._block_of.get(key)

    def forget_keys(self) -> None:
        """Drop every key (the weights changed): parked blocks become empty."""
        self._empty.extend(self._parked)
        self._parked.clear()
        self._key_of.clear()
        self._block_of.clear()

    def rows(self, block: int) -> slice:
        return slice(block * self.block_size, (block + 1) * self.block_size)

    def copy_block(self, src: int, dst: int) -> None:
        self.kv[:, self.rows(dst)] = self.kv[:, self.rows(src)]


class PagedBatch:
    """One forward over the pool: row i feeds `lengths[i]` new tokens at positions starts[i], starts[i] + 1, ...
    and holds the blocks `tables[i]`. Shorter rows are padded to the longest; padding repeats the row's last
    position (so its attention stays finite) and writes into block 0.

    It serves the model's cache interface, `update(layer, first, second, positions)`, and gives the engine's
    fast path its flat indices: `write` (batch * T,) rows of the pool, `read` (batch, S) rows each row attends
    over, `mask` (batch, T, S) True where a key is visible (at or before the query's position)."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], starts: list[int], lengths: list[int]):
        self.pool = pool
        device, bs = pool.kv.device, pool.block_size
        self.B, self.T = len(tables), max(lengths)
        ends = [s + n for s, n in zip(starts, lengths)]
        S = max(ends)
        nb = -(-S // bs)
        table = torch.tensor([t[:nb] + [0] * (nb - len(t[:nb])) for t in tables], device=device)
        self.read = (table.unsqueeze(-1) * bs + torch.arange(bs, device=device)).view(self.B, nb * bs)[:, :S]
        if self.T == 1:  # a decode step: positions and rows of the pool straight from the block tables
            self.positions = torch.tensor([[s] for s in starts], device=device)
            self.write = torch.tensor([t[s // bs] * bs + s % bs for t, s in zip(tables, starts)], device=device)
        else:
            start = torch.tensor(starts, device=device).unsqueeze(1)
            length = torch.tensor(lengths, device=device).unsqueeze(1)
            offset = torch.arange(self.T, device=device)
            self.positions = start + torch.minimum(offset, length - 1)                      # (B, T)
            self.write = torch.where(offset < length, self.read.gather(1, self.positions), 0).flatten()
        # every query sees every key when all rows end together and each feeds a single token
        self._all_visible = self.T == 1 and min(ends) == S
        self._mask: torch.Tensor | None = None
        self._bias: dict[int, torch.Tensor | None] = {}

    @property
    def mask(self) -> torch.Tensor:
        if self._mask is None:
            S = self.read.shape[1]
            self._mask = torch.arange(S, device=self.read.device) <= self.positions.unsqueeze(-1)  # (B, T, S)
        return self._mask

    def bias(self, heads: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The mask as an additive bias (0 or -inf) for `heads` query heads per token, (B, T * heads, S); None
        when nothing is masked."""
        if self._all_visible:
            return None
        if heads not in self._bias:
            bias = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device).masked_fill_(~self.mask, float("-inf"))
            self._bias[heads] = bias.unsqueeze(2).expand(-1, -1, heads, -1).reshape(self.B, self.T * heads, -1)
        return self._bias[heads]

    def store(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Write the new tokens' cache rows (batch * T, width) and return what each row attends over (B, S, width)."""
        kv = self.pool.kv[layer]
        kv.index_copy_(0, self.write, rows.to(kv.dtype))
        return kv.index_select(0, self.read.flatten()).view(self.B, -1, kv.shape[1])  # 3x faster than kv[read]

    def update(self, layer: int, first: torch.Tensor, second: torch.Tensor, positions: torch.Tensor):
        """The model's cache interface (attention.py, gqa.py): first/second (B, T, .) are c_kv and k_rope, or a
        GQA layer's keys and values; `positions` are those this batch was built with."""
        cached = self.store(layer, torch.cat([first, second], dim=-1).flatten(0, 1))
        return cached[..., : first.shape[-1]], cached[..., first.shape[-1]:], self.mask
