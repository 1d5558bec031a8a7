"""The latent KV cache of MLA: per layer and token it holds only c_kv (kv_lora_rank) and the shared rotary key
(qk_rope_head_dim) — V2 report §2.1.4 — never per-head keys or values.

`BlockPool` is the byte budget cut into blocks of a fixed number of tokens, which sequences hold in lists and share
by reference count (paged attention, Kwon et al. 2023, here over MLA's latents). `PagedBatch` is one forward's view
of it: where each new token's cache row goes and which rows each sequence attends over. It is what the model's
attention takes as its cache (model/attention.py, model/gqa.py).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from nanoseek.errors import InferenceError


class BlockPool:
    """`budget_bytes` of cache as blocks of `block_size` tokens over `layers` layers, each token `width` numbers
    wide (c_kv and k_rope side by side). Token t of block b lives in row b * block_size + t of `kv[layer]`.

    A block is held by the sequences that use it (reference count). A full block may carry a key (a hash of the
    prefix it holds, see prefix_cache.py): when its last holder lets go it is not emptied but parked, least
    recently used first, and reused only when no empty block is left. Block 0 is never handed out: the padding
    tokens of a batch write there."""

    def __init__(self, layers: int, width: int, block_size: int, budget_bytes: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.block_size, self.width, self.layers = block_size, width, layers
        self.bytes_per_block = layers * block_size * width * torch.empty((), dtype=dtype).element_size()
        self.num_blocks = int(budget_bytes // self.bytes_per_block)
        if self.num_blocks < 2:
            raise InferenceError(f"a cache budget of {budget_bytes / 2**20:.3f} MiB holds {self.num_blocks} blocks "
                                 f"of {self.bytes_per_block} bytes ({block_size} tokens x {layers} layers x {width} "
                                 f"values); need at least 2")
        # One tensor per layer, (rows, width): a compiled step writes its new rows into each in place (a view into
        # one tensor of all layers would make the compiler copy the whole pool at every step).
        # Rows a batch reads but masks out still enter p @ V (0 * NaN is NaN), so every block must hold finite
        # numbers: each is zeroed the first time it is handed out (zeroing the whole budget up front took 0.5 s
        # for 256 MiB), block 0 now.
        self.kv = [torch.empty(self.num_blocks * block_size, width, dtype=dtype, device=device) for _ in range(layers)]
        self._zero(0, 1)
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
            self._zero(self._untouched, fresh)
            self._untouched = fresh
        return blocks

    def _zero(self, first: int, end: int) -> None:
        for kv in self.kv:
            kv[first * self.block_size:end * self.block_size] = 0

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

    def read_block(self, block: int) -> torch.Tensor:
        """A block's cache rows over every layer, (layers, block_size, width)."""
        return torch.stack([kv[self.rows(block)] for kv in self.kv])

    def write_block(self, block: int, rows: torch.Tensor) -> None:
        for kv, layer_rows in zip(self.kv, rows):
            kv[self.rows(block)] = layer_rows.to(kv.dtype)

    def copy_block(self, src: int, dst: int) -> None:
        self.write_block(dst, self.read_block(src))


@dataclass
class PagedBatch:
    """One forward over the pool: B sequences, T new tokens each (shorter rows padded), each attending over the
    pool rows `read` names, positions 0..S-1 of its own sequence.

    kv:        the pool's per-layer tensors (BlockPool.kv)
    positions: (B, T) the new tokens' positions
    write:     (B * T,) the pool row each new token's cache row goes to (padding tokens: row 0, block 0's)
    read:      (B, S) the pool rows of each sequence's positions 0..S-1 (past its blocks: block 0's rows, masked)
    absorbed:  attend in the latent space (decode steps, V2 §2.1.2) rather than decompressing every cached token
               (prefill); both paths are in model/attention.py
    Only tensors and a flag: a compiled decode step builds one from its inputs."""
    kv: list[torch.Tensor]
    positions: torch.Tensor
    write: torch.Tensor
    read: torch.Tensor
    absorbed: bool = False

    @classmethod
    def build(cls, pool: BlockPool, tables: list[list[int]], starts: list[int], lengths: list[int],
              absorbed: bool = False, span: int | None = None, rows: int | None = None) -> PagedBatch:
        """Row i feeds `lengths[i]` new tokens at positions starts[i], starts[i] + 1, ... and holds the blocks
        `tables[i]`. Padding repeats a row's last position (so its attention stays finite) and writes into block 0.
        `span` pads S (at least the furthest position + 1) and `rows` pads B with rows that feed one token at
        position 0 into block 0: the static shapes of a compiled step."""
        device, bs = pool.kv[0].device, pool.block_size
        pad = (rows or len(tables)) - len(tables)
        tables, starts, lengths = tables + [[]] * pad, starts + [0] * pad, lengths + [1] * pad
        B, T = len(tables), max(lengths)
        S = span or max(s + n for s, n in zip(starts, lengths))
        nb = -(-S // bs)
        table = torch.tensor([t[:nb] + [0] * (nb - len(t[:nb])) for t in tables], device=device)
        read = (table.unsqueeze(-1) * bs + torch.arange(bs, device=device)).view(B, nb * bs)[:, :S]
        if T == 1:  # a decode step: positions and rows of the pool straight from the block tables
            positions = torch.tensor([[s] for s in starts], device=device)
            write = torch.tensor([t[s // bs] * bs + s % bs if t else 0 for t, s in zip(tables, starts)], device=device)
        else:
            start = torch.tensor(starts, device=device).unsqueeze(1)
            length = torch.tensor(lengths, device=device).unsqueeze(1)
            offset = torch.arange(T, device=device)
            positions = start + torch.minimum(offset, length - 1)                            # (B, T)
            write = torch.where(offset < length, read.gather(1, positions), 0).flatten()
        return cls(pool.kv, positions, write, read, absorbed)

    @property
    def mask(self) -> torch.Tensor:
        """(B, T, S): True where a key is visible, at or before the query's position."""
        S = self.read.shape[1]
        return torch.arange(S, device=self.read.device) <= self.positions.unsqueeze(-1)

    def store(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Write the new tokens' cache rows (B, T, width) into layer `layer` and return what each sequence attends
        over, (B, S, width)."""
        kv = self.kv[layer]
        kv.index_copy_(0, self.write, rows.flatten(0, 1).to(kv.dtype))
        return kv.index_select(0, self.read.flatten()).view(*self.read.shape, -1)  # eager: 3x faster than kv[read]
