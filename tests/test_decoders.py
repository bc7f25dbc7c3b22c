"""Every decoder: size limits, canonical form, and random or mutated input raising only
commonsync's own errors (never a crash, never another exception type)."""

from __future__ import annotations

import base64
import contextlib
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commonsync.errors import CommonsyncError, EncodingError, FolderKeyError
from commonsync.formats import encoding, messages, padding
from commonsync.formats.chunks import open_chunk, seal_chunk
from commonsync.formats.device_id import DeviceId
from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.keys import FolderKey, FolderKeyring, Purpose
from commonsync.formats.records import Kind, Record, open_and_verify, seal, verify_record
from commonsync.formats.versionvector import VersionVector
from commonsync.membership.entries import decode_entry
from commonsync.membership.links import JoinLink
from commonsync.relay import wire as relaywire

from .fuzzing import fuzz

KEY = FolderKey.generate()
RING = FolderKeyring([KEY])
AUTHOR = DeviceIdentity.generate()
RECORD = Record(
    "a/b.txt",
    Kind.FILE,
    0,
    0,
    0o644,
    False,
    VersionVector.from_mapping({1: 1}),
    (),
    "",
    AUTHOR.public_key,
    1,
)
SEALED_RECORD = seal(AUTHOR, KEY, RECORD)
CHUNK_ID, SEALED_CHUNK = seal_chunk(KEY, os.urandom(2000))

DECODERS = {
    "record": lambda b: Record.decode(b),
    "signed record": lambda b: verify_record(KEY.folder_id, b),
    "sealed record": lambda b: open_and_verify(RING, b),
    "sealed chunk": lambda b: open_chunk(RING, CHUNK_ID, b),
    "folder key": lambda b: FolderKey.from_bytes(b),
    "version vector": lambda b: VersionVector.from_wire(encoding.unpack(b, max_size=1 << 16)),
    "padding": lambda b: padding.unpad(b, 16),
    "wire message": lambda b: messages.decode(b),
    "relay message": lambda b: relaywire.decode(b),
    "relay preamble": lambda b: relaywire.parse_preamble(b),
    "device ID": lambda b: DeviceId.parse(b.decode("utf-8", "replace")),
    "membership entry": lambda b: decode_entry(b),
    "invitation link": lambda b: JoinLink.parse(b.decode("utf-8", "replace")),
    "invitation link payload": lambda b: JoinLink.parse(
        "commonsync://join/" + base64.b32encode(b).decode() + "#" + "a" * 26
    ),
}


@pytest.mark.fuzz
@pytest.mark.parametrize("name", DECODERS)
@fuzz(300)
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_only_library_errors(name: str, data: bytes) -> None:
    with contextlib.suppress(CommonsyncError):
        DECODERS[name](data)


def _mutate(data: bytes, draw: st.DataObject) -> bytes:
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "cut", "insert"]))
        position = draw.draw(st.integers(0, max(0, len(mutated) - 1)))
        if op == "flip" and mutated:
            mutated[position] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "cut":
            del mutated[position : position + draw.draw(st.integers(1, 8))]
        else:
            mutated[position:position] = draw.draw(st.binary(min_size=1, max_size=8))
    return bytes(mutated)


@pytest.mark.fuzz
@fuzz(300)
@given(st.data())
def test_mutated_valid_inputs_are_refused_cleanly(data: st.DataObject) -> None:
    """Authenticated formats refuse every real change; the others may decode a mutation
    (a changed secret byte is still a well-formed key) but raise nothing but our errors."""
    for name, valid, authenticated in [
        ("sealed record", SEALED_RECORD, True),
        ("sealed chunk", SEALED_CHUNK, True),
        ("record", RECORD.encode(), False),
        ("folder key", KEY.to_bytes(), False),
    ]:
        mutated = _mutate(valid, data)
        try:
            DECODERS[name](mutated)
        except CommonsyncError:
            continue
        if authenticated:
            assert mutated == valid, f"a changed {name} was accepted"


@pytest.mark.parametrize(
    ("value", "problem"),
    [({"a": 1}, "map"), ([1.5], "float"), ([[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]], "nested")],
)
def test_structures_outside_the_canonical_subset_are_refused(value: object, problem: str) -> None:
    with pytest.raises(EncodingError, match=problem):
        encoding.unpack(encoding.pack(value), max_size=1024)


def test_non_canonical_and_oversized_encodings_are_refused() -> None:
    with pytest.raises(EncodingError, match="canonical"):
        encoding.unpack(b"\xcd\x00\x05", max_size=16)  # uint16 holding 5
    with pytest.raises(EncodingError, match="over the limit"):
        encoding.unpack(encoding.pack(b"x" * 100), max_size=64)
    with pytest.raises(EncodingError, match="not valid msgpack"):
        encoding.unpack(b"\x91\x01\xc0", max_size=16)  # trailing bytes
    with pytest.raises(EncodingError, match="extension"):
        encoding.unpack(b"\xd4\x01\x00", max_size=16)
    with pytest.raises(EncodingError):
        encoding.pack(object())


# Every kind of value a commonsync structure holds, at every size boundary of its encoding.
_SIZES = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000]
_INTS = [0, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33,
         -128, -129, -(2**15), -(2**15) - 1, -(2**31), -(2**31) - 1, -(2**63)]  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_INTS) | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from(_SIZES).map(lambda n: b"b" * n) | st.binary(max_size=300),
    st.sampled_from(_SIZES).map(lambda n: "é" * (n // 2) + "s" * (n % 2)) | st.text(max_size=40),
)
_STRUCTURES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=20)
        | st.sampled_from([16, 17]).flatmap(lambda n: st.lists(inner, min_size=n, max_size=n))
    ),
    max_leaves=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_STRUCTURES)
def test_canonical_form_is_msgpacks_own_and_round_trips(value: object) -> None:
    """``pack`` gives msgpack's bytes (also when it joins large items in itself), and
    ``unpack``'s size check accepts exactly those."""
    reference = msgpack.packb(value, use_bin_type=True)
    assert encoding.pack(value) == reference
    assert encoding.unpack(reference, max_size=1 << 24) == value


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xcc\x05",  # uint8 holding 5
        b"\xd0\x05",  # int8 holding 5
        b"\xd1\xff\x80",  # int16 holding -128
        b"\xd9\x01a",  # str8 holding one letter
        b"\xc5\x00\x01a",  # bin16 holding one byte
        b"\xdc\x00\x01\x01",  # array16 holding one item
        b"\x92\x01\xcd\x00\x05",  # canonical but for its last item
        # Signed forms of positive integers, as long as the unsigned ones: a size check
        # alone lets them through.
        b"\xd1\x10\x92",  # int16 holding 4242
        b"\xd2\x00\x01\x00\x00",  # int32 holding 65536
        b"\xd3\x00\x00\x00\x01\x00\x00\x00\x00",  # int64 holding 2**32
        b"\x92\x24\xd1\x10\x92",  # a relay Ping whose nonce is such an int16
    ],
)
def test_every_longer_form_is_refused(encoded: bytes) -> None:
    with pytest.raises(EncodingError, match="canonical"):
        encoding.unpack(encoded, max_size=64)


@given(st.binary(max_size=5000), st.sampled_from([0, 512, 1024]))
def test_padding_round_trip_and_bucket(data: bytes, floor: int) -> None:
    padded = padding.pad(data, floor)
    assert len(padded) == padding.padded_size(len(data), floor) >= floor
    assert len(padded) <= max(floor, (len(data) + 4) * 1.13 + 2)
    assert padding.unpad(padded, floor) == data


def test_padding_with_non_zero_bytes_is_refused() -> None:
    padded = bytearray(padding.pad(b"abc", 64))
    padded[-1] = 1
    with pytest.raises(EncodingError, match="not zero"):
        padding.unpad(bytes(padded), 64)


def test_subkeys_are_distinct_and_bound_to_folder_and_epoch() -> None:
    keys = {KEY.subkey(p) for p in Purpose}
    assert len(keys) == len(Purpose)
    same_secret_other_folder = FolderKey(os.urandom(32), KEY.epoch, KEY.secret)
    same_secret_other_epoch = FolderKey(KEY.folder_id, KEY.epoch + 1, KEY.secret)
    for other in (same_secret_other_folder, same_secret_other_epoch):
        assert not keys & {other.subkey(p) for p in Purpose}


def test_folder_key_validation() -> None:
    with pytest.raises(FolderKeyError):
        FolderKey(b"short", 0, os.urandom(32))
    with pytest.raises(FolderKeyError):
        FolderKey(os.urandom(32), 2**32, os.urandom(32))
    with pytest.raises(FolderKeyError):
        FolderKeyring([])
    with pytest.raises(FolderKeyError):
        FolderKeyring([KEY, FolderKey.generate()])
    assert FolderKey.from_bytes(KEY.to_bytes()) == KEY
    assert "secret" not in repr(KEY) or KEY.secret.hex() not in repr(KEY)
