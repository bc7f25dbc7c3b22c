"""The packed chunk list and the record read field by field: same values, same refusals."""

from __future__ import annotations

import os
import pickle
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync.errors import RecordError
from commonsync.formats import encoding
from commonsync.formats.chunk_list import ChunkEntry, ChunkList
from commonsync.formats.chunks import MAX_CHUNK_SIZE
from commonsync.formats.records import Kind, Record
from commonsync.formats.versionvector import VersionVector

entries = st.lists(
    st.builds(ChunkEntry, st.binary(min_size=32, max_size=32), st.integers(1, MAX_CHUNK_SIZE)),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(entries, st.integers(-45, 45), st.integers(-45, 45), st.sampled_from([None, 1, 2, -1, 3]))
def test_a_packed_list_behaves_as_the_tuple_of_its_entries(
    chunks: list[ChunkEntry], start: int, stop: int, step: int | None
) -> None:
    packed = ChunkList(chunks)
    assert packed == tuple(chunks)
    assert tuple(chunks) == packed
    assert packed == ChunkList(chunks)
    assert hash(packed) == hash(ChunkList(chunks))
    assert list(packed) == chunks
    assert len(packed) == len(chunks)
    assert packed.total_size() == sum(c.size for c in chunks)
    assert [packed[n] for n in range(-len(chunks), len(chunks))] == chunks * 2
    assert list(packed[start:stop:step]) == chunks[start:stop:step]
    assert pickle.loads(pickle.dumps(packed)) == packed
    with pytest.raises(IndexError):
        packed[len(chunks)]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ([b"\x01" * 31, 10], "chunk ID is not 32 bytes"),
        ([b"\x01" * 32, 0], "chunk size out of range"),
        ([b"\x01" * 32, MAX_CHUNK_SIZE + 1], "chunk size out of range"),
        ([b"\x01" * 32, True], r"chunk entry is not \[id, size\]"),
        ([b"\x01" * 32], r"chunk entry is not \[id, size\]"),
        (["x" * 32, 10], r"chunk entry is not \[id, size\]"),
        (7, r"chunk entry is not \[id, size\]"),
        (ChunkEntry(b"\x01" * 33, 10), "chunk ID is not 32 bytes"),
    ],
)
def test_a_bad_chunk_entry_is_a_malformed_record(entry: object, problem: str) -> None:
    with pytest.raises(RecordError, match=problem):
        ChunkList([entry])  # type: ignore[list-item]


def fields(chunks: object) -> list[object]:
    return [1, "big.bin", 0, 1000, 0, 0o644, False, [], chunks, "", bytes(32), 1, b""]


def test_a_record_whose_chunk_list_is_no_array_is_refused() -> None:
    with pytest.raises(RecordError, match="chunk list is not a list"):
        Record.decode(encoding.pack(fields(b"\x01" * 36)))
    with pytest.raises(RecordError, match="a record is an array of 13 fields"):
        Record.decode(encoding.pack(fields([[b"\x01" * 32, 1000]])[:12]))
    with pytest.raises(RecordError, match="chunk size out of range"):
        Record.decode(encoding.pack(fields([[b"\x01" * 32, 0]])))


def test_a_long_chunk_list_is_decoded_without_its_entries_in_memory() -> None:
    """200,000 entries as ``[bytes, int]`` pairs are ~35 MB of small objects; read one at a
    time and packed, the decoded record holds 7.2 MB and never much more."""
    count = 200_000
    chunks = tuple(ChunkEntry(os.urandom(32), 1000) for _ in range(count))
    record = Record("big.bin", Kind.FILE, 1000 * count, 0, 0o644, False,
                    VersionVector.from_mapping({}), chunks, "", bytes(32), 1)  # fmt: skip
    data = record.encode()
    del chunks
    tracemalloc.start()
    try:
        decoded = Record.decode(data)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == record
    assert held < 9_000_000, f"the decoded record holds {held:,} bytes"
    assert peak < 20_000_000, f"decoding it took {peak:,} bytes at its peak"
