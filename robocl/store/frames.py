"""Fast random access to image frames of a store: bulk shard reads, direct decoding and a RAM cache.

zarr-python spends ~0.3 ms of per-chunk machinery on every frame it returns, so random window reads through
it top out near a thousand windows per second (shared/refs/data-formats.md measured the same). Image arrays
are written one frame per chunk inside shards (see ``format.FRAMES_PER_SHARD``), and this module reads a
whole shard's bytes at once, splits it with the shard index (zarr v3 sharding spec: an index of
(offset, nbytes) uint64 pairs plus a crc32c at the end of the shard) and decodes each frame with blosc
directly, checking the index's and every frame's crc32c as zarr would (``integrity.ShardLayout``). Decoded
shards stay in RAM: in one preallocated mirror when the whole array fits in the cache budget, otherwise in
an LRU of shards.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robocl.store.integrity import ChunkProblem, DamagedChunkError, ShardLayout, Unit, get_bytes, units


class FrameReader:
    """Gathers frames ``(len(ids), *frame_shape)`` from rows [0, n_rows) of a sharded zarr image array."""

    def __init__(
        self,
        array: zarr.Array,
        n_rows: int,
        cache_bytes: int,
        *,
        local_root: Path | None,
        episodes_of: Callable[[int, int], list[int] | None] | None = None,
    ) -> None:
        """``episodes_of(lo, hi)``: the episodes that own rows [lo, hi), named when a shard is damaged."""
        self.array = array
        self.n_rows = n_rows
        self.frame_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(str(array.dtype))
        self.frame_nbytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.rows_per_shard = int((array.shards or array.chunks)[0])
        self.n_shards = -(-n_rows // self.rows_per_shard)
        self._local_root = local_root
        self._episodes_of = episodes_of
        self._layout = ShardLayout.of(array)
        self._direct = self._layout is not None
        total = n_rows * self.frame_nbytes
        self._mirror: np.ndarray | None = None
        self._loaded = np.zeros(self.n_shards, dtype=bool)
        if total <= cache_bytes:
            # np.empty only reserves address space; pages are touched as shards are decoded into them.
            self._mirror = np.empty((n_rows, *self.frame_shape), dtype=self.dtype)
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lru_capacity = max(1, cache_bytes // max(self.rows_per_shard * self.frame_nbytes, 1))
        self.shards_read = 0

    def gather(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            raise IndexError(f"frame ids must lie in [0, {self.n_rows})")
        shards = np.unique(ids // self.rows_per_shard)
        if self._mirror is not None:
            for s in shards[~self._loaded[shards]]:
                lo = int(s) * self.rows_per_shard
                block = self._read_shard(int(s))
                self._mirror[lo : lo + len(block)] = block
                self._loaded[s] = True
            return self._mirror[ids]
        out = np.empty((len(ids), *self.frame_shape), dtype=self.dtype)
        shard_of = ids // self.rows_per_shard
        for s in shards:
            block = self._lru.get(int(s))
            if block is None:
                block = self._read_shard(int(s))
                self._lru[int(s)] = block
                if len(self._lru) > self._lru_capacity:
                    self._lru.popitem(last=False)
            else:
                self._lru.move_to_end(int(s))
            sel = shard_of == s
            out[sel] = block[ids[sel] - int(s) * self.rows_per_shard]
        return out

    def _read_shard(self, shard: int) -> np.ndarray:
        self.shards_read += 1
        lo = shard * self.rows_per_shard
        hi = min(lo + self.rows_per_shard, self.n_rows)
        if self._layout is None:
            return self.array[lo:hi]
        (unit,) = units(self.array, lo, hi)
        raw = self._shard_bytes(unit)
        try:
            if raw is None:
                if self._layout.checksummed:  # format 2 writes every shard: absent means lost
                    raise ChunkProblem("is missing")
                return self.array[lo:hi]  # format 1: never written, zarr returns fill values
            return self._layout.decode(raw, hi - lo)
        except ChunkProblem as exc:
            rows = exc.span(lo, hi)
            episodes = self._episodes_of(*rows) if self._episodes_of is not None else None
            raise DamagedChunkError(self.array.path, unit.name, rows, episodes, exc.problem) from None

    def _shard_bytes(self, unit: Unit) -> bytes | None:
        if self._local_root is not None:  # a plain file read skips zarr's async store machinery
            try:
                return (self._local_root / unit.key).read_bytes()
            except FileNotFoundError:
                return None
        return get_bytes(self.array.store, unit.key)


def local_root_of(store: Any) -> Path | None:
    root = getattr(store, "root", None)
    return Path(os.fspath(root)) if root is not None and isinstance(store, zarr.storage.LocalStore) else None
