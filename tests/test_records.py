"""Records: canonical round trip, signatures, sealing, and every kind of forgery refused."""

from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from commonsync.errors import (
    EncodingError,
    InvalidPathError,
    RecordError,
    RecordTamperedError,
    SignatureError,
    UnknownEpochError,
)
from commonsync.formats import encoding
from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.keys import FolderKey, FolderKeyring
from commonsync.formats.records import (
    MAX_SEALED_RECORD_SIZE,
    ChunkEntry,
    Kind,
    Record,
    open_and_verify,
    open_record,
    seal,
    seal_record,
    sign_record,
    verify_record,
)
from commonsync.formats.versionvector import VersionVector

AUTHOR = DeviceIdentity.generate()
KEY = FolderKey.generate()
RING = FolderKeyring([KEY])


def make(path: str = "docs/report.odt", size: int = 3000, **changes: object) -> Record:
    fields: dict[str, object] = {
        "path": path,
        "kind": Kind.FILE,
        "size": size,
        "mtime_ns": 1_700_000_000_000_000_000,
        "mode": 0o644,
        "deleted": False,
        "version": VersionVector.from_mapping({AUTHOR.device_id.short: 5}),
        "chunks": (ChunkEntry(os.urandom(32), size),) if size else (),
        "symlink_target": "",
        "author": AUTHOR.public_key,
        "sequence": 5,
    }
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]


names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


def chunk_list(size: int) -> tuple[ChunkEntry, ...]:
    full, rest = divmod(size, 4 * 1024 * 1024)
    sizes = [4 * 1024 * 1024] * full + ([rest] if rest else [])
    return tuple(ChunkEntry(os.urandom(32), n) for n in sizes)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(names, min_size=1, max_size=4),
    st.integers(0, 10**10),
    st.integers(-(2**63), 2**63 - 1),
)
def test_round_trip_through_every_layer(parts: list[str], size: int, mtime: int) -> None:
    path = unicodedata.normalize("NFC", "/".join(parts))
    assume(all(p not in (".", "..") for p in path.split("/")))
    assume(len(path.encode()) <= 4096)
    record = make(path, size=size, mtime_ns=mtime, chunks=chunk_list(size))
    assert Record.decode(record.encode()) == record
    sealed = seal(AUTHOR, KEY, record)
    assert open_and_verify(RING, sealed) == record


def test_sealed_record_hides_path_and_size() -> None:
    record = make("très/secret/plan.txt", size=123_456)
    sealed = seal(AUTHOR, KEY, record)
    assert b"secret" not in sealed
    assert "très".encode() not in sealed
    assert (123_456).to_bytes(4, "big")[1:] not in sealed
    short = seal(AUTHOR, KEY, make("a", size=1))
    assert len(short) == len(sealed), "small records all fall in the floor bucket"


def test_each_kind_round_trips() -> None:
    version = VersionVector.from_mapping({1: 1})
    for record in [
        Record("d", Kind.DIRECTORY, 0, 0, 0o755, False, version, (), "", AUTHOR.public_key, 1),
        Record("l", Kind.SYMLINK, 0, 0, 0o777, False, version, (), "d/x", AUTHOR.public_key, 2),
        Record("f", Kind.FILE, 0, 0, 0o600, True, version, (), "", AUTHOR.public_key, 3),
    ]:
        assert verify_record(KEY.folder_id, sign_record(AUTHOR, KEY.folder_id, record)) == record


@pytest.mark.parametrize(
    "path",
    [
        "../outside",
        "/etc/passwd",
        "a/../../b",
        "a//b",
        "",
        "a/",
        "./a",
        "a\x00b",
        "cafe\u0301",
        "x" * 256,
    ],
)
def test_hostile_paths_are_refused_on_decode(path: str) -> None:
    good = make("placeholder").encode()
    hostile = encoding.pack(
        [path if i == 1 else v for i, v in enumerate(encoding.unpack(good, max_size=1 << 20))]
    )
    with pytest.raises(InvalidPathError):
        Record.decode(hostile)
    with pytest.raises(InvalidPathError):
        make(path)


def test_flipping_any_bit_of_a_signed_record_is_detected() -> None:
    signed = sign_record(AUTHOR, KEY.folder_id, make())
    for position in range(0, len(signed), 7):
        tampered = bytearray(signed)
        tampered[position] ^= 0x10
        with pytest.raises((RecordError, EncodingError)):
            verify_record(KEY.folder_id, bytes(tampered))


def test_flipped_signature_bit_is_a_signature_error() -> None:
    signed = sign_record(AUTHOR, KEY.folder_id, make())
    tampered = bytearray(signed)
    tampered[-1] ^= 0x01  # the signature is the last field
    with pytest.raises(SignatureError):
        verify_record(KEY.folder_id, bytes(tampered))


def test_a_record_naming_another_author_is_a_forgery() -> None:
    mallory = DeviceIdentity.generate()
    victim_record = make()  # authored by AUTHOR
    with pytest.raises(RecordError):
        sign_record(mallory, KEY.folder_id, victim_record)
    body = victim_record.encode()
    forged = encoding.pack([body, mallory.sign(b"commonsync record v1\x00" + KEY.folder_id + body)])
    with pytest.raises(SignatureError, match="not signed by the device it names"):
        verify_record(KEY.folder_id, forged)


def test_a_record_cannot_be_replayed_into_another_folder() -> None:
    signed = sign_record(AUTHOR, KEY.folder_id, make())
    with pytest.raises(SignatureError):
        verify_record(os.urandom(32), signed)


def test_flipping_any_bit_of_a_sealed_record_is_detected() -> None:
    sealed = seal(AUTHOR, KEY, make())
    for position in [*range(40), len(sealed) // 2, len(sealed) - 1]:
        tampered = bytearray(sealed)
        tampered[position] ^= 0x04
        with pytest.raises((RecordTamperedError, UnknownEpochError)):
            open_and_verify(RING, bytes(tampered))


def test_sealed_records_from_another_folder_or_key_are_refused() -> None:
    other = FolderKey(os.urandom(32), KEY.epoch, KEY.secret)  # same secret, other folder
    with pytest.raises(RecordTamperedError):
        open_record(RING, seal(AUTHOR, other, make()))
    with pytest.raises(RecordTamperedError):
        open_record(RING, seal(AUTHOR, FolderKey(KEY.folder_id, 0, os.urandom(32)), make()))


def test_size_limits_apply_before_decryption() -> None:
    with pytest.raises(RecordTamperedError, match="over the limit"):
        open_record(RING, bytes(MAX_SEALED_RECORD_SIZE + 1))
    with pytest.raises(RecordTamperedError, match="truncated"):
        open_record(RING, seal_record(KEY, b"x")[:100])
    with pytest.raises(EncodingError, match="over the limit"):
        Record.decode(bytes(64 * 1024 * 1024))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"size": 5, "chunks": (ChunkEntry(b"\x01" * 32, 4),)}, "do not add up"),
        ({"mode": 0o170000}, "mode"),
        ({"sequence": 0}, "sequence"),
        ({"kind": Kind.DIRECTORY}, "directory"),
        ({"symlink_target": "x"}, "target"),
        ({"deleted": True}, "deleted"),
        ({"previous": b"\x01"}, "previous"),
        ({"author": b"\x00" * 31}, "author"),
    ],
)
def test_inconsistent_records_are_refused(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(RecordError, match=problem):
        make(**changes)


def test_content_digest_ignores_time_and_author_but_not_content() -> None:
    a = make(size=10)
    b = make(
        size=10,
        chunks=a.chunks,
        mtime_ns=5,
        sequence=99,
        version=VersionVector.from_mapping({7: 7}),
    )
    assert a.content_digest() == b.content_digest()
    assert make(size=10).content_digest() != a.content_digest()
