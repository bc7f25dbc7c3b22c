"""Sealed chunks: round trip, deduplication, size hiding, and rejection of any tampering."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync.errors import ChunkError, ChunkTamperedError, UnknownEpochError
from commonsync.formats.chunks import (
    CHUNK_PAD_FLOOR,
    MAX_CHUNK_SIZE,
    open_chunk,
    seal_chunk,
    verify_chunk,
)
from commonsync.formats.keys import FolderKey, FolderKeyring

KEY = FolderKey.generate(epoch=3)
RING = FolderKeyring([KEY])


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=9000))
def test_round_trip(data: bytes) -> None:
    cid, sealed = seal_chunk(KEY, data)
    assert open_chunk(RING, cid, sealed) == data
    if len(data) >= 16:  # shorter strings turn up in random bytes by chance
        assert data not in sealed


def test_equal_chunks_seal_equally_in_one_folder_and_differently_elsewhere() -> None:
    data = os.urandom(5000)
    assert seal_chunk(KEY, data) == seal_chunk(KEY, data)
    other = FolderKey.generate()
    assert seal_chunk(other, data)[1] != seal_chunk(KEY, data)[1]
    assert seal_chunk(other, data)[0] != seal_chunk(KEY, data)[0]
    rotated = FolderKey(KEY.folder_id, KEY.epoch + 1, os.urandom(32))
    assert seal_chunk(rotated, data)[1] != seal_chunk(KEY, data)[1]


def test_sealed_sizes_fall_into_buckets() -> None:
    small = {len(seal_chunk(KEY, os.urandom(n))[1]) for n in (1, 10, 500, CHUNK_PAD_FLOOR - 4)}
    assert len(small) == 1
    big = {len(seal_chunk(KEY, os.urandom(n))[1]) for n in range(1_000_000, 1_000_000 + 4000, 97)}
    assert len(big) == 1
    assert len(seal_chunk(KEY, os.urandom(1_000_000))[1]) < 1_000_000 * 1.13


def test_every_flipped_bit_region_is_detected() -> None:
    data = os.urandom(3000)
    cid, sealed = seal_chunk(KEY, data)
    for position in [0, 1, 4, 5, 6, len(sealed) // 2, len(sealed) - 17, len(sealed) - 1]:
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises((ChunkTamperedError, UnknownEpochError)):
            open_chunk(RING, cid, bytes(tampered))


def test_truncation_extension_and_wrong_id_are_detected() -> None:
    cid, sealed = seal_chunk(KEY, os.urandom(3000))
    other_id = seal_chunk(KEY, os.urandom(3000))[0]
    for bad in (sealed[:-1], sealed + b"\x00", sealed[:5], b""):
        with pytest.raises(ChunkTamperedError):
            open_chunk(RING, cid, bad)
    with pytest.raises(ChunkTamperedError):
        open_chunk(RING, other_id, sealed)
    with pytest.raises(ChunkError):
        open_chunk(RING, cid[:31], sealed)


def test_a_chunk_sealed_under_another_key_is_refused() -> None:
    foreign = FolderKey(KEY.folder_id, KEY.epoch, os.urandom(32))
    cid, sealed = seal_chunk(foreign, b"secret")
    with pytest.raises(ChunkTamperedError):
        open_chunk(RING, cid, sealed)


def test_unknown_epoch_is_reported_as_such() -> None:
    newer = FolderKey(KEY.folder_id, KEY.epoch + 1, os.urandom(32))
    cid, sealed = seal_chunk(newer, b"data")
    with pytest.raises(UnknownEpochError, match="epoch 4"):
        open_chunk(RING, cid, sealed)
    assert open_chunk(FolderKeyring([KEY, newer]), cid, sealed) == b"data"


def test_oversized_chunks_are_refused() -> None:
    with pytest.raises(ChunkError):
        seal_chunk(KEY, bytes(MAX_CHUNK_SIZE + 1))
    cid, sealed = seal_chunk(KEY, b"x")
    with pytest.raises(ChunkTamperedError, match="over the limit"):
        open_chunk(RING, cid, sealed + bytes(MAX_CHUNK_SIZE * 2))


def test_verify_chunk_checks_content_against_id() -> None:
    cid, _ = seal_chunk(KEY, b"plain bytes")
    verify_chunk(KEY, cid, b"plain bytes")
    with pytest.raises(ChunkTamperedError, match="does not match"):
        verify_chunk(KEY, cid, b"plain bytez")
