"""A file version's chunk list, packed: every chunk ID in one bytes object, sizes in an array.

A record may list 400,000 chunks (:data:`commonsync.formats.records.MAX_CHUNKS`). Held as
one :class:`ChunkEntry` per chunk, with its own ``bytes`` ID and ``int`` size, that is some
150 bytes per chunk in small objects: 60 MB for one record, and small objects spread over
the allocator's arenas, which a process cannot give back while any of them lives. Packed,
a chunk costs 40 bytes in two large buffers, freed whole. Each :class:`ChunkEntry` is made
only when asked for.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast, overload

from ..errors import RecordError
from .chunks import CHUNK_ID_SIZE, MAX_CHUNK_SIZE

__all__ = ["ChunkEntry", "ChunkList"]


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One chunk of a file version: its ID and plaintext size (offsets follow from order)."""

    id: bytes
    size: int


class ChunkList(Sequence[ChunkEntry]):
    """An immutable sequence of :class:`ChunkEntry`, equal to any sequence of the same
    entries (a tuple of them included), checked as it is built: every ID is
    :data:`CHUNK_ID_SIZE` bytes and every size within ``1..MAX_CHUNK_SIZE``."""

    __slots__ = ("_ids", "_sizes")

    _ids: bytes
    _sizes: array[int]

    def __init__(self, entries: Iterable[ChunkEntry | Sequence[object]] = ()) -> None:
        """``entries`` are :class:`ChunkEntry` or ``[id, size]`` pairs as decoded from a
        record's wire form; anything else is a :class:`RecordError`."""
        ids = bytearray()
        sizes = array("Q")
        for entry in entries:
            if not isinstance(entry, ChunkEntry):
                _require(
                    isinstance(entry, list | tuple)
                    and len(entry) == 2
                    and isinstance(entry[0], bytes)
                    and type(entry[1]) is int,
                    "chunk entry is not [id, size]",
                )
                entry = ChunkEntry(cast(bytes, entry[0]), cast(int, entry[1]))
            _require(len(entry.id) == CHUNK_ID_SIZE, "chunk ID is not 32 bytes")
            _require(1 <= entry.size <= MAX_CHUNK_SIZE, "chunk size out of range")
            ids += entry.id
            sizes.append(entry.size)
        self._ids = bytes(ids)
        self._sizes = sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @overload
    def __getitem__(self, index: int) -> ChunkEntry: ...

    @overload
    def __getitem__(self, index: slice) -> ChunkList: ...

    def __getitem__(self, index: int | slice) -> ChunkEntry | ChunkList:
        if isinstance(index, slice):
            part = ChunkList()
            start, stop, step = index.indices(len(self))
            if step == 1:
                part._ids = self._ids[start * CHUNK_ID_SIZE : max(start, stop) * CHUNK_ID_SIZE]
                part._sizes = self._sizes[start:stop]
            else:
                part._ids = b"".join(self._id(n) for n in range(start, stop, step))
                part._sizes = self._sizes[index]
            return part
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("chunk index out of range")
        return ChunkEntry(self._id(index), self._sizes[index])

    def __iter__(self) -> Iterator[ChunkEntry]:
        ids = self._ids
        for n, size in enumerate(self._sizes):
            yield ChunkEntry(ids[n * CHUNK_ID_SIZE : (n + 1) * CHUNK_ID_SIZE], size)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkList):
            return self._sizes == other._sizes and self._ids == other._ids
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._ids, self._sizes.tobytes()))

    def __repr__(self) -> str:
        return f"ChunkList({len(self)} chunks, {self.total_size()} bytes)"

    def __reduce__(self) -> tuple[object, ...]:
        return (ChunkList, (list(self),))

    def total_size(self) -> int:
        """The plaintext bytes of all the chunks."""
        return sum(self._sizes)

    def to_wire(self) -> list[list[bytes | int]]:
        """The ``[[id, size], ...]`` array of a record's encoding."""
        return [[chunk.id, chunk.size] for chunk in self]

    def _id(self, index: int) -> bytes:
        return self._ids[index * CHUNK_ID_SIZE : (index + 1) * CHUNK_ID_SIZE]


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise RecordError(f"malformed record: {problem}")
