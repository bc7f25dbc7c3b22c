"""Content-defined chunking: stability under edits, the spec's algorithm, bounded memory."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from commonsync.formats.chunking import (
    _CHUNKER,
    CHUNK_AVG,
    CHUNK_MAX,
    CHUNK_MIN,
    ChunkHasher,
    iter_chunks,
)
from commonsync.formats.chunks import chunk_id
from commonsync.formats.keys import FolderKey

from .vectors import PROTOCOL, load, seed

GEAR_FILE = json.loads((PROTOCOL / "fastcdc-gear.json").read_text())
GEAR = [int(x, 16) for x in GEAR_FILE["gear"]]
U64 = 2**64 - 1


def spec_cut(buf: bytes, lo: int, avg: int, hi: int, mask_s: int, mask_l: int) -> int:
    """The cut-point rule exactly as SPEC.md words it, one byte at a time."""
    n = len(buf)
    if n <= lo:
        return n
    end = min(n, hi)
    center = min(avg, end)
    h = 0
    i = lo - lo % 2
    while i < center - center % 2:
        h = ((h << 1) + GEAR[buf[i]]) & U64
        if h & mask_s == 0:
            return i
        i += 1
    while i < end - end % 2:
        h = ((h << 1) + GEAR[buf[i]]) & U64
        if h & mask_l == 0:
            return i
        i += 1
    return end


def spec_chunks(data: bytes, lo: int, avg: int, hi: int, mask_s: int, mask_l: int) -> list[int]:
    sizes = []
    offset = 0
    while offset < len(data):
        size = spec_cut(data[offset : offset + hi], lo, avg, hi, mask_s, mask_l)
        sizes.append(size)
        offset += size
    return sizes


def test_spec_algorithm_matches_the_chunker_on_small_parameters() -> None:
    # Small sizes make the pure-Python rule fast; the same masks table rule applies:
    # bits = round(log2(avg)), mask_s = MASKS[bits + 1], mask_l = MASKS[bits - 1].
    from pyfastcdc.py.constants import MASKS

    data = seed("small chunking", 300_000)
    chunker = FastCDC(1024, min_size=256, max_size=4096, normalized_chunking=1)
    expected = [c.length for c in chunker.cut_buf(data)]
    assert len(expected) > 100
    assert spec_chunks(data, 256, 1024, 4096, MASKS[11], MASKS[9]) == expected


@pytest.mark.slow
def test_spec_algorithm_reproduces_the_chunking_vector() -> None:
    vectors = load("chunking.json")
    data = seed(vectors["data_label"], vectors["data_size"])
    sizes = spec_chunks(
        data,
        CHUNK_MIN,
        1 << 20,
        CHUNK_MAX,
        int(GEAR_FILE["mask_s"], 16),
        int(GEAR_FILE["mask_l"], 16),
    )
    assert sizes == [c["size"] for c in vectors["chunks"]]


def _ids(data: bytes) -> list[bytes]:
    return [chunk_id(b"k" * 32, d) for _, d in iter_chunks(io.BytesIO(data))]


@pytest.fixture(scope="module")
def big() -> bytes:
    return os.urandom(64 * 1024 * 1024)


@pytest.mark.parametrize(
    ("where", "edit"),
    [(0.5, b"x"), (0.5, b"hello world"), (0.31, b"\x00" * 7), (0.77, b"")],
    ids=["insert-1", "insert-11", "insert-7", "delete-5"],
)
def test_a_small_edit_in_the_middle_changes_at_most_three_chunks(
    big: bytes, where: float, edit: bytes
) -> None:
    at = int(len(big) * where)
    edited = big[:at] + edit + big[at + (5 if not edit else 0) :]
    before, after = _ids(big), _ids(edited)
    changed = len(set(after) - set(before))
    assert 1 <= changed <= 3, changed
    assert len(before) > 40


class _Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@settings(max_examples=15, deadline=None)
@given(size=st.integers(0, 9 * 1024 * 1024), step=st.sampled_from([1 << 12, 65521, 1 << 20]))
def test_boundaries_do_not_depend_on_read_sizes(size: int, step: int) -> None:
    data = seed(f"read sizes {size}", size)
    whole = [(o, len(d)) for o, d in iter_chunks(io.BytesIO(data))]
    trickled = [(o, len(d)) for o, d in iter_chunks(_Trickle(data, step))]  # type: ignore[arg-type]
    assert whole == trickled
    assert sum(n for _, n in whole) == size
    assert all(CHUNK_MIN <= n <= CHUNK_MAX for _, n in whole[:-1])


def test_cutting_a_stream_in_buffers_gives_the_cuts_of_the_whole() -> None:
    """A stream several read buffers long is cut exactly where FastCDC cuts the whole of it
    at once, whatever the reads return."""
    data = seed("buffers", 45 * 1024 * 1024 + 17)
    whole = [(c.offset, c.length) for c in _CHUNKER.cut_buf(data)]
    assert [(o, len(d)) for o, d in iter_chunks(io.BytesIO(data))] == whole
    trickled = iter_chunks(_Trickle(data, 3 * 1024 * 1024 + 5))  # type: ignore[arg-type]
    assert [(o, len(d)) for o, d in trickled] == whole
    assert b"".join(d for _, d in iter_chunks(io.BytesIO(data))) == data


def test_hasher_gives_the_ids_of_the_plain_chunks_in_order() -> None:
    key = FolderKey.generate()
    data = seed("hasher", 20 * 1024 * 1024 + 3)
    seen: list[int] = []
    with ChunkHasher(key.chunk_id_key, workers=3) as hasher:
        refs = list(hasher.hash_stream(io.BytesIO(data), progress=seen.append))
    expected = [
        (o, len(d), chunk_id(key.chunk_id_key, d)) for o, d in iter_chunks(io.BytesIO(data))
    ]
    assert [(r.offset, r.size, r.id) for r in refs] == expected
    assert sum(seen) == len(data)


@pytest.mark.slow
def test_memory_stays_bounded_while_hashing_a_large_file(tmp_path: object) -> None:
    """Scanning 1 GiB keeps the process far below the size of the file."""
    path = os.path.join(str(tmp_path), "big.bin")
    with open(path, "wb") as f:
        for _ in range(128):
            f.write(os.urandom(8 * 1024 * 1024))
    program = textwrap.dedent(f"""
        from commonsync.formats.chunking import ChunkHasher
        with ChunkHasher(b"k" * 32, workers=2) as h, open({path!r}, "rb", buffering=0) as f:
            total = sum(r.size for r in h.hash_stream(f))
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
        status = open("/proc/self/status").read()
        print(total, next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM")))
    """)
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout.split()
    total, peak_kib = int(out[0]), int(out[1])
    assert total == 1 << 30
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib // 1024} MiB while hashing 1 GiB"


class _Unseekable(io.RawIOBase):
    """A pipe-like stream: readable, not seekable, short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._data), 100_000)
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("size", [0, 1, 4096, CHUNK_MIN, CHUNK_MIN + 1, 3 * 1024 * 1024 + 7])
def test_small_streams_and_unseekable_streams_chunk_like_the_buffer_chunker(size: int) -> None:
    data = random.Random(size).randbytes(size)
    expected = [(c.offset, bytes(c.data)) for c in FastCDC(
        CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX, normalized_chunking=1
    ).cut_buf(data)]  # fmt: skip
    assert list(iter_chunks(io.BytesIO(data))) == expected
    assert list(iter_chunks(io.BufferedReader(_Unseekable(data)))) == expected
