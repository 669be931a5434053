"""The exact embedding cache: one bounded LRU per revision, in each API process's memory.

Keys are the bytes of an input's int64 token-id array, so a hit is exactly the input the
revision would compute again (same tokenizer output, same truncation); values are the revision's
raw float32 vectors, before any adapter or `dimensions` cut. Each `RevisionRoute` owns its cache
(`cache_mib` of its config, 0 = none at all), so a switch to another revision never answers with
this one's vectors, and dropping the route frees it.

The bound counts, per entry, the key's bytes, the vector's bytes and `ENTRY_OVERHEAD` (the
Python objects around them); the least recently used entries go first. Everything runs on the
event loop: no lock.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

MIB = 1024 * 1024
# what an entry costs beyond its key and vector bytes: the bytes and ndarray objects and the
# ordered dict's slot (about 220 bytes, measured with tracemalloc on CPython 3.11; rounded up)
ENTRY_OVERHEAD = 256


def cache_key(token_ids: np.ndarray) -> bytes:
    """The exact key of one input: its token ids as int64 bytes."""
    return np.ascontiguousarray(token_ids, dtype=np.int64).tobytes()


class EmbeddingCache:
    """A least-recently-used map from token-id keys to raw vectors, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("an embedding cache needs a positive size")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @classmethod
    def of_mib(cls, cache_mib: int) -> EmbeddingCache | None:
        """The cache of a revision whose config says `cache_mib`; None when it is 0."""
        return cls(cache_mib * MIB) if cache_mib > 0 else None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> np.ndarray | None:
        """The vector stored under `key` (now the most recently used), or None."""
        vector = self._entries.get(key)
        if vector is not None:
            self._entries.move_to_end(key)
        return vector

    def put(self, key: bytes, vector: np.ndarray) -> None:
        """Store a copy of `vector` (a row of a batch must not keep the whole batch alive),
        then evict the least recently used entries until the bound holds again. An entry
        larger than the whole bound is not stored."""
        cost = self.entry_cost(key, vector)
        if cost > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self.entry_cost(key, old)
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.flags.writeable = False  # hits are shared: nobody may change them in place
        self._entries[key] = stored
        self.bytes += cost
        while self.bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= self.entry_cost(evicted_key, evicted)

    @staticmethod
    def entry_cost(key: bytes, vector: np.ndarray) -> int:
        return len(key) + vector.size * 4 + ENTRY_OVERHEAD
