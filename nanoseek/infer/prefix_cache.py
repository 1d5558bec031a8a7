"""Prefix caching: DeepSeek's "context caching on disk" (API docs, 2024), vLLM's automatic prefix caching.

A full cache block is keyed by a hash of the whole prefix up to its end, so two prompts share a block exactly
when they agree on every token before it. A new request takes the longest run of keyed blocks matching its
prompt and prefills only the rest; the number of prompt tokens so served is its cache hit. Keys chain: block i's
hash extends block i-1's hash with block i's tokens, one pass over the prompt.

When the pool also caches the MTP module's latents (speculative decoding), the entry at a block's last position
was computed from the token after it (V3 §2.2: the module at position i reads token i + 1), so such a block's
key covers one token more (`lookahead`).

Blocks nobody holds stay in the pool, least recently used first, and are reused only when space runs out
(kv_cache.BlockPool). With a directory, every keyed block is also written there as safetensors, named by its
key, and a prompt whose blocks are on disk but no longer in memory loads them back; the key's root mixes in
a fingerprint of the model and of the cache layout, so another model never reads them. The engine deletes only a
file it cannot read back (truncated, say), which then costs a cache miss and is counted in `corrupt_files`; remove
the directory to empty it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from nanoseek.atomic import write_atomic
from nanoseek.errors import InferenceError
from nanoseek.infer.kv_cache import BlockPool

log = logging.getLogger("nanoseek.infer")


class PrefixCache:
    def __init__(self, pool: BlockPool, root: bytes, lookahead: int = 0, directory: str | Path | None = None):
        self.pool, self.bs, self.lookahead = pool, pool.block_size, lookahead
        self.root = root
        self.directory = Path(directory) if directory is not None else None
        self.corrupt_files = 0   # files read back from the directory that were unreadable, and deleted
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InferenceError(f"cannot use {self.directory} as the prefix cache directory: {e}") from None

    def hasher(self):
        """The hash state of the empty prefix; `key` extends a copy of it block by block."""
        return hashlib.sha256(self.root)

    def key(self, hasher, tokens: list[int], block: int) -> bytes:
        """Advance `hasher` past block `block` of `tokens` and return that block's key."""
        hasher.update(_token_bytes(tokens[block * self.bs:(block + 1) * self.bs]))
        end = (block + 1) * self.bs
        if not self.lookahead:
            return hasher.digest()
        ahead = hasher.copy()
        ahead.update(_token_bytes(tokens[end:end + self.lookahead]))
        return ahead.digest()

    def match(self, prompt: list[int]) -> tuple[list[int], object]:
        """Hold the longest run of cached blocks at the start of `prompt`, leaving at least its last token to
        prefill (its logits give the first new token). Returns the blocks and the hash state after them."""
        hasher, blocks = self.hasher(), []
        for i in range((len(prompt) - 1) // self.bs):
            if (i + 1) * self.bs + self.lookahead > len(prompt):
                break
            state = hasher.copy()
            key = self.key(state, prompt, i)
            block = self.pool.lookup(key)
            if block is not None:
                self.pool.share([block])
            else:
                block = self._load(key)
                if block is None:
                    break
            blocks.append(block)
            hasher = state
        return blocks, hasher

    def register(self, block: int, key: bytes) -> None:
        """Key a block whose every cached entry is final; write it to disk when persisting."""
        if self.pool.set_key(block, key) and self.directory is not None:
            file = self.directory / f"{key.hex()}.safetensors"
            if not file.exists():
                write_atomic(file, save({"kv": self.pool.read_block(block)}))

    def _load(self, key: bytes) -> int | None:
        """A block from disk, into a fresh block of the pool; None if not there or no block is free."""
        if self.directory is None or self.pool.free_blocks == 0:
            return None
        file = self.directory / f"{key.hex()}.safetensors"
        if not file.exists():
            return None
        try:
            kv = load_file(file)["kv"]
        except (SafetensorError, KeyError, OSError) as e:
            self._discard(file, str(e))
            return None
        expected = (self.pool.layers, self.bs, self.pool.width)
        if tuple(kv.shape) != expected:
            self._discard(file, f"shape {tuple(kv.shape)}, expected {expected}")
            return None
        [block] = self.pool.allocate(1)
        self.pool.write_block(block, kv)
        self.pool.set_key(block, key)
        return block

    def _discard(self, file: Path, reason: str) -> None:
        """A damaged entry costs a miss, not the engine: delete it (the block is computed and written afresh)."""
        log.warning("prefix cache file %s is unreadable (%s); deleted it", file.name, reason)
        file.unlink(missing_ok=True)
        self.corrupt_files += 1


def _token_bytes(tokens: list[int]) -> bytes:
    return b"".join(t.to_bytes(4, "little") for t in tokens)


def fingerprint(model: torch.nn.Module, layout: str) -> bytes:
    """A digest of every weight and of the cache layout: the root of the keys of blocks persisted to disk."""
    h = hashlib.sha256(layout.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()
