"""Device identities: the key file's round trip and protections, and detached signatures."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync.errors import IdentityError, InsecureKeyFileError, SignatureError
from commonsync.formats.identity import DeviceIdentity, verify_signature

MAGIC = b"commonsync-identity-v1\n"
IDENTITY = DeviceIdentity.generate()
OTHER = DeviceIdentity.generate()


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with umask 0, so that only the mode ``save`` asks for restricts the file."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def write_raw(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def load_error(path: Path) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        DeviceIdentity.load(path)
    return info.value


# -- key file ---------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    IDENTITY.save(path)
    loaded = DeviceIdentity.load(path)
    assert loaded.seed == IDENTITY.seed
    assert loaded.public_key == IDENTITY.public_key
    assert loaded.device_id == IDENTITY.device_id
    # The loaded key signs exactly like the original (Ed25519 is deterministic).
    assert loaded.sign(b"hello") == IDENTITY.sign(b"hello")
    assert path.read_bytes() == MAGIC + IDENTITY.seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.key"], "temp file left over"


def test_save_replaces_an_existing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    IDENTITY.save(path)
    OTHER.save(path)
    assert DeviceIdentity.load(path).device_id == OTHER.device_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.key"]


@pytest.mark.usefixtures("umask_zero")
def test_key_file_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    IDENTITY.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.usefixtures("umask_zero")
def test_save_over_an_open_file_tightens_its_mode(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "device.key", b"old", 0o644)
    IDENTITY.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeviceIdentity.load(path).device_id == IDENTITY.device_id


def test_save_into_a_missing_directory_is_an_identity_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot create"):
        IDENTITY.save(tmp_path / "missing" / "device.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o666, 0o700 | 0o044])
def test_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "device.key"
    IDENTITY.save(path)
    path.chmod(mode)
    with pytest.raises(InsecureKeyFileError) as info:
        DeviceIdentity.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "chmod 600" in message
    assert f"{mode:04o}" in message


def test_read_only_key_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    IDENTITY.save(path)
    path.chmod(0o400)
    assert DeviceIdentity.load(path).device_id == IDENTITY.device_id


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.key"
    error = load_error(path)
    assert type(error) is IdentityError
    assert str(path) in str(error)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(MAGIC, id="magic-only"),
        pytest.param(MAGIC + bytes(31), id="one-byte-short"),
        pytest.param((MAGIC + bytes(32))[:10], id="cut-in-magic"),
        pytest.param(MAGIC + bytes(33), id="one-byte-long"),
        pytest.param(b"commonsync-identity-v2\n" + bytes(32), id="other-version"),
        pytest.param(b"X" * len(MAGIC) + bytes(32), id="wrong-magic"),
        pytest.param(bytes(32) + MAGIC, id="seed-first"),
    ],
)
def test_malformed_key_file(tmp_path: Path, data: bytes) -> None:
    path = write_raw(tmp_path / "device.key", data)
    error = load_error(path)
    assert type(error) is IdentityError
    assert "not a commonsync device key" in str(error)


def test_symlink_to_a_key_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    IDENTITY.save(target)
    assert DeviceIdentity.load(target).device_id == IDENTITY.device_id
    link = tmp_path / "device.key"
    link.symlink_to(target)
    error = load_error(link)
    assert type(error) is IdentityError
    assert str(link) in str(error)


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "device.key"
    directory.mkdir(mode=0o700)
    error = load_error(directory)
    assert type(error) is IdentityError
    assert "not a regular file" in str(error)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "device.key"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException | DeviceIdentity] = []

    def load() -> None:
        try:
            outcome.append(DeviceIdentity.load(fifo))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=1.0)
    blocked = thread.is_alive()
    if blocked:
        # Release the reader: opening the write end and closing it gives it end-of-file.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5.0)
    assert not blocked, "DeviceIdentity.load blocked on a FIFO"
    assert len(outcome) == 1
    assert type(outcome[0]) is IdentityError


def test_seed_must_be_32_bytes() -> None:
    for size in (0, 31, 33, 64):
        with pytest.raises(IdentityError):
            DeviceIdentity.from_seed(bytes(size))
    assert DeviceIdentity.from_seed(IDENTITY.seed).device_id == IDENTITY.device_id


# -- signatures -------------------------------------------------------------------------------


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=300))
def test_signatures_verify(message: bytes) -> None:
    signature = IDENTITY.sign(message)
    assert len(signature) == 64
    assert verify_signature(IDENTITY.public_key, message, signature) is None


@settings(max_examples=50, deadline=None)
@given(message=st.binary(min_size=1, max_size=300), data=st.data())
def test_flipped_bit_in_message_is_rejected(message: bytes, data: st.DataObject) -> None:
    signature = IDENTITY.sign(message)
    bit = data.draw(st.integers(0, len(message) * 8 - 1), label="bit")
    with pytest.raises(SignatureError):
        verify_signature(IDENTITY.public_key, flip(message, bit), signature)


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=300), bit=st.integers(0, 64 * 8 - 1))
def test_flipped_bit_in_signature_is_rejected(message: bytes, bit: int) -> None:
    signature = IDENTITY.sign(message)
    with pytest.raises(SignatureError):
        verify_signature(IDENTITY.public_key, message, flip(signature, bit))


@settings(max_examples=20, deadline=None)
@given(message=st.binary(max_size=300))
def test_signature_by_another_key_is_rejected(message: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_signature(OTHER.public_key, message, IDENTITY.sign(message))
    with pytest.raises(SignatureError):
        verify_signature(IDENTITY.public_key, message, OTHER.sign(message))


@pytest.mark.parametrize(
    ("key_size", "signature_size"), [(31, 64), (33, 64), (0, 64), (32, 63), (32, 65), (32, 0)]
)
def test_malformed_key_or_signature_is_a_signature_error(
    key_size: int, signature_size: int
) -> None:
    signature = IDENTITY.sign(b"m")
    key = (IDENTITY.public_key * 2)[:key_size]
    sig = (signature * 2)[:signature_size]
    with pytest.raises(SignatureError):
        verify_signature(key, b"m", sig)


def test_invalid_curve_point_is_a_signature_error() -> None:
    # Not every 32-byte string is an Ed25519 point; such a key must fail like a wrong one.
    bad_key = bytes([0xFF] * 31 + [0x7F])
    with pytest.raises(SignatureError):
        verify_signature(bad_key, b"m", IDENTITY.sign(b"m"))
