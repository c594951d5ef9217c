"""Integrity at rest: which stored chunks hold which rows, and whether their bytes are still what was written.

Format 2 stores (``format.FORMAT_VERSION``) end every chunk with a crc32c of its compressed bytes (zarr v3's
``crc32c`` codec; sharded image arrays also checksum each shard's index) and write every chunk, all-zero
ones included. A chunk file that is absent is therefore lost data, never "all fill value". Format 1 stores
have neither property: their damage can only show as a decoder error.

The unit of storage is a chunk file for low-dimensional arrays and a shard file for images (one frame per
inner chunk). :func:`read_unit` decodes one such file and raises :class:`ChunkProblem` saying what is
wrong with it; the store, the frame reader and ``robocl validate`` turn that into a
:class:`DamagedChunkError` that names the array, the chunk, its rows and the episodes they belong to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

EMPTY = np.uint64(2**64 - 1)  # sharding spec: the index entry of an inner chunk that was never written
CRC_BYTES = 4


class ChunkProblem(ValueError):
    """What is wrong with one stored chunk; ``rows`` narrows it to rows of the chunk when that is known."""

    def __init__(self, problem: str, rows: tuple[int, int] | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.rows = rows

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """The array rows at fault, for a chunk that holds rows [lo, hi)."""
        return (lo, hi) if self.rows is None else (lo + self.rows[0], lo + self.rows[1])


class DamagedStoreError(ValueError):
    """A store whose files were damaged after they were written (missing metadata, chunks or bytes)."""


class DamagedChunkError(DamagedStoreError):
    """A stored chunk is missing or its bytes fail their checksum or decoder."""

    def __init__(
        self, array: str, chunk: str, rows: tuple[int, int], episodes: list[int] | None, problem: str
    ) -> None:
        self.array, self.chunk, self.rows, self.episodes, self.problem = array, chunk, rows, episodes, problem
        super().__init__(
            f"{array} chunk {chunk} (rows {rows[0]}..{rows[1] - 1}, {describe_episodes(episodes)}) "
            f"{problem}; `robocl validate` lists all damage and `--repair` removes it"
        )


@dataclass(frozen=True)
class Unit:
    """One stored chunk (or shard) file: its store key and the rows [lo, hi) of the array it holds."""

    key: str
    lo: int
    hi: int

    @property
    def name(self) -> str:
        """The key below the array, as zarr names chunks (``c/3/0``)."""
        return self.key[self.key.index("/c/") + 1 :] if "/c/" in self.key else self.key


def units(array: zarr.Array, lo: int, hi: int) -> list[Unit]:
    """The storage units that hold rows [lo, hi) of ``array`` (clipped to those rows)."""
    rows = int((array.shards or array.chunks)[0])
    out = []
    for i in range(lo // rows, -(-hi // rows)):
        coords = (i, *([0] * (array.ndim - 1)))
        key = f"{array.path}/{array.metadata.encode_chunk_key(coords)}"
        out.append(Unit(key, max(lo, i * rows), min(hi, (i + 1) * rows)))
    return out


def stored_keys(array: zarr.Array) -> set[str]:
    """Keys of every chunk file the array has in its store (one listing, not one request per chunk)."""

    async def collect() -> set[str]:
        return {key async for key in array.store.list_prefix(f"{array.path}/c/")}

    return sync(collect())


def get_bytes(store: Any, key: str) -> bytes | None:
    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def strip_checksum(raw: bytes | memoryview, what: str = "") -> memoryview:
    """The payload of bytes that end with their crc32c; raises ChunkProblem if it does not match.
    ``what`` names the part of a chunk the bytes are ("frame 3 "), empty for a whole chunk."""
    view = memoryview(raw)
    if len(view) < CRC_BYTES:
        raise ChunkProblem(f"{what}is {len(view)} bytes, too short to hold a checksum".lstrip())
    payload = view[:-CRC_BYTES]
    # google_crc32c's C extension takes bytes or numpy arrays, not memoryviews; frombuffer does not copy.
    crc = google_crc32c.value(np.frombuffer(payload, dtype=np.uint8))
    if np.uint32(crc).tobytes() != bytes(view[-CRC_BYTES:]):
        raise ChunkProblem(f"{what}fails its crc32c checksum (bytes changed after they were written)")
    return payload


@dataclass(frozen=True)
class ShardLayout:
    """The shard layout robocl writes for images: 1-row inner chunks of bytes + blosc (+ crc32c)."""

    rows_per_shard: int
    frame_shape: tuple[int, ...]
    dtype: np.dtype
    checksummed: bool  # format 2: every inner chunk and the index end with a crc32c
    fill_value: Any

    @classmethod
    def of(cls, array: zarr.Array) -> ShardLayout | None:
        """The layout of ``array``, or None when it is not one the direct decoder handles."""
        codecs = array.metadata.to_dict().get("codecs", [])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = [c["name"] for c in conf["codecs"]]
        index = [c["name"] for c in conf["index_codecs"]]
        if conf["chunk_shape"][0] != 1 or conf.get("index_location", "end") != "end":
            return None
        if inner not in (["bytes", "blosc"], ["bytes", "blosc", "crc32c"]) or index != ["bytes", "crc32c"]:
            return None
        return cls(
            rows_per_shard=int(array.shards[0]),
            frame_shape=tuple(array.shape[1:]),
            dtype=np.dtype(str(array.dtype)).newbyteorder("<"),
            checksummed=inner[-1] == "crc32c",
            fill_value=array.fill_value,
        )

    def decode(self, raw: bytes, n_rows: int) -> np.ndarray:
        """The first ``n_rows`` frames of a shard file; raises ChunkProblem naming the first bad part."""
        n = self.rows_per_shard
        index_nbytes = 16 * n + CRC_BYTES
        if len(raw) < index_nbytes:
            raise ChunkProblem(f"shard is {len(raw)} bytes, too short for its {index_nbytes}-byte index")
        index = np.frombuffer(
            strip_checksum(memoryview(raw)[-index_nbytes:], "the shard index "), dtype="<u8"
        ).reshape(n, 2)
        out = np.empty((n_rows, *self.frame_shape), dtype=self.dtype)
        codec = Blosc()
        for row in range(n_rows):
            offset, nbytes = index[row]
            if offset == EMPTY:
                if self.checksummed:  # format 2 writes every frame, black ones included
                    raise ChunkProblem(f"frame {row} of the shard is missing", (row, row + 1))
                out[row] = self.fill_value
                continue
            if offset + nbytes > len(raw) - index_nbytes:
                raise ChunkProblem(f"frame {row} lies past the end of the shard", (row, row + 1))
            chunk = memoryview(raw)[int(offset) : int(offset + nbytes)]
            try:
                payload = strip_checksum(chunk, f"frame {row} ") if self.checksummed else chunk
                frame = np.frombuffer(codec.decode(payload), dtype=self.dtype).reshape(self.frame_shape)
            except ChunkProblem as exc:
                raise ChunkProblem(exc.problem, (row, row + 1)) from None
            except (RuntimeError, ValueError) as exc:  # blosc's errors for bytes that are not its frames
                raise ChunkProblem(f"frame {row} cannot be decoded ({exc})", (row, row + 1)) from None
            out[row] = frame
        return out


def read_unit(array: zarr.Array, unit: Unit, raw: bytes | None, *, checksummed: bool) -> np.ndarray:
    """Rows [unit.lo, unit.hi) from one stored file's bytes ``raw`` (None: the file is absent)."""
    if raw is None:
        if checksummed:
            raise ChunkProblem("is missing")
        return array[unit.lo : unit.hi]  # format 1 skipped all-zero chunks: absent reads as fill value
    layout = ShardLayout.of(array) if array.shards else None
    if layout is not None:
        first = unit.lo % layout.rows_per_shard
        return layout.decode(raw, first + unit.hi - unit.lo)[first:]
    if checksummed:
        strip_checksum(raw)
    try:
        return array[unit.lo : unit.hi]
    except Exception as exc:  # codecs raise many types (blosc RuntimeError, ValueError, struct.error)
        raise ChunkProblem(f"cannot be decoded ({type(exc).__name__}: {exc})") from None


def describe_episodes(episodes: Iterable[int] | None) -> str:
    """'episodes 0-13, 20' (ranges compressed); 'episodes unknown' when None."""
    if episodes is None:
        return "episodes unknown"
    values = sorted(set(episodes))
    if not values:
        return "no episodes"
    parts, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return f"episode{'s' if len(values) > 1 else ''} {', '.join(parts)}"
