"""Content-defined chunking, and hashing the chunks of a file the way the scanner does.

Boundaries come from FastCDC 2020 (Xia et al.; the byte-exact algorithm is in SPEC.md) through
the compiled ``pyfastcdc`` package: an edit in the middle of a large file moves only the
boundaries next to it, so only the chunks around the edit change.

Chunk IDs are keyed BLAKE2b (:func:`commonsync.formats.chunks.chunk_id`). Chunking runs in
the calling thread while up to ``workers`` threads hash the chunks already cut (libsodium
releases the GIL), which on two cores roughly doubles the scan rate. Memory stays bounded
whatever the file size: the chunker keeps at most two maximum-size chunks of the file, and at
most ``2 * workers`` chunk copies wait for a hashing thread.
"""

from __future__ import annotations

import collections
import io
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from pyfastcdc import FastCDC

from .chunks import chunk_id

CHUNK_MIN = 256 * 1024
CHUNK_AVG = 1024 * 1024
CHUNK_MAX = 4 * 1024 * 1024
#: FastCDC's normalisation level: the masks used before and after the average size.
NORMALIZATION: Final = 1

_CHUNKER = FastCDC(
    CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX, normalized_chunking=NORMALIZATION
)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where one chunk of a file lies, and its ID."""

    id: bytes
    offset: int
    size: int


def iter_chunks(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, data)`` for each chunk of ``stream``, read to its end.

    A stream of at most ``CHUNK_MIN`` bytes is one chunk by FastCDC's definition; it is
    answered without the stream chunker, which sets up a buffer of several MiB per stream
    (1.5 ms each: most of the cost of scanning a folder of small files).
    """
    head = _read_up_to(stream, CHUNK_MIN + 1)
    if len(head) <= CHUNK_MIN:
        if head:
            yield 0, head
        return
    source: BinaryIO | _Prefixed
    if stream.seekable():  # a file: read it again from the start, without a copy
        stream.seek(-len(head), io.SEEK_CUR)
        source = stream
    else:
        source = _Prefixed(head, stream)
    for chunk in _CHUNKER.cut_stream(source):
        # The chunker reuses its buffer for the next chunk, so each chunk is copied out.
        yield chunk.offset, bytes(chunk.data)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class _Prefixed(io.RawIOBase):
    """``head`` (already read from ``rest``), then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(target), len(self._head))
            target[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(target))
        target[: len(data)] = data
        return len(data)


class ChunkHasher:
    """Chunks files and hashes their chunks on a small pool of threads.

    One hasher serves any number of files in turn; close it (or use it as a context manager)
    to stop its threads.
    """

    def __init__(self, chunk_id_key: bytes, *, workers: int = 2) -> None:
        self._key = chunk_id_key
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="chunk-hash")

    def __enter__(self) -> ChunkHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def hash_stream(
        self, stream: BinaryIO, *, progress: Callable[[int], None] | None = None
    ) -> Iterator[ChunkRef]:
        """The chunks of ``stream`` in file order; ``progress`` gets each chunk's size."""
        chunks = iter_chunks(stream)
        head = list(itertools.islice(chunks, 2))
        if len(head) == 1:
            # A file of one chunk (most files): hashing it here costs less than a thread hop.
            offset, data = head[0]
            if progress is not None:
                progress(len(data))
            yield ChunkRef(chunk_id(self._key, data), offset, len(data))
            return
        pending: collections.deque[tuple[int, int, Future[bytes]]] = collections.deque()
        window = 2 * self._workers
        for offset, data in itertools.chain(head, chunks):
            pending.append((offset, len(data), self._pool.submit(chunk_id, self._key, data)))
            if len(pending) > window:
                yield self._finish(pending, progress)
        while pending:
            yield self._finish(pending, progress)

    @staticmethod
    def _finish(
        pending: collections.deque[tuple[int, int, Future[bytes]]],
        progress: Callable[[int], None] | None,
    ) -> ChunkRef:
        offset, size, future = pending.popleft()
        ref = ChunkRef(future.result(), offset, size)
        if progress is not None:
            progress(size)
        return ref
