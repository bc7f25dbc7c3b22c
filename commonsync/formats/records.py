"""File records: one version of one path, signed by its author and sealed for the folder.

Three layers, each with its own byte format (SPEC.md, "Records"):

- the *record*: a canonical msgpack array of the version's fields;
- the *signed record*: ``[record_bytes, signature]``, where the Ed25519 signature by the
  author covers a context string, the folder ID and the record bytes, so a record cannot be
  replayed into another folder;
- the *sealed record*: the signed record, padded and encrypted under the folder's record key,
  so that a relay sees neither path nor size. The same sealed bytes go to a peer or a relay.

Every layer is decoded under a size limit and validated before anything uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, cast

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from ..errors import EncodingError, RecordError, RecordTamperedError, SignatureError
from . import encoding, paths
from .chunk_list import ChunkEntry as ChunkEntry  # where the rest of the library looks
from .chunk_list import ChunkList
from .device_id import DeviceId
from .hashing import blake2b
from .identity import DeviceIdentity, verify_signature
from .keys import FolderKey, FolderKeyring
from .padding import pad, padded_size, unpad
from .versionvector import VersionVector

RECORD_FORMAT = 1
SEALED_RECORD_VERSION = 1
#: Chunks one record may list: at least 100 GiB at the minimum chunk size, ~500 GiB on average.
MAX_CHUNKS = 400_000
#: The largest record encoding: a full chunk list plus generous room for the other fields.
MAX_RECORD_SIZE = MAX_CHUNKS * 40 + 64 * 1024
MAX_SIGNED_RECORD_SIZE = MAX_RECORD_SIZE + 128
RECORD_PAD_FLOOR = 512
_HEADER_SIZE = 5
_NONCE_SIZE = 24
_TAG_SIZE = 16
MAX_SEALED_RECORD_SIZE = (
    _HEADER_SIZE + _NONCE_SIZE + padded_size(MAX_SIGNED_RECORD_SIZE, RECORD_PAD_FLOOR) + _TAG_SIZE
)
_SIGNATURE_CONTEXT = b"commonsync record v1\x00"
_CONTENT_CONTEXT = b"commonsync content v1\x00"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class Kind(IntEnum):
    FILE = 0
    DIRECTORY = 1
    SYMLINK = 2


@dataclass(frozen=True)
class Record:
    """One version of one path in a folder.

    ``author`` is the Ed25519 public key of the device that made this version and signs it;
    ``sequence`` is that device's sequence number for it. ``previous`` is the content digest
    (:meth:`content_digest`) of the version this one replaced, or empty: a remote version whose
    predecessor is exactly what we hold is not a conflict even if the vectors look concurrent.
    """

    path: str
    kind: Kind
    size: int
    mtime_ns: int
    mode: int
    deleted: bool
    version: VersionVector
    #: Given as any sequence of entries; held as a :class:`ChunkList` (a record may list
    #: 400,000 chunks).
    chunks: Sequence[ChunkEntry]
    symlink_target: str
    author: bytes
    sequence: int
    previous: bytes = field(default=b"")

    def __post_init__(self) -> None:
        paths.validate(self.path)
        _check(isinstance(self.kind, Kind), "unknown kind")
        _check(0 <= self.size <= _I64_MAX, "size out of range")
        _check(_I64_MIN <= self.mtime_ns <= _I64_MAX, "mtime out of range")
        _check(0 <= self.mode <= 0o7777, "mode has bits beyond the permission bits")
        _check(len(self.author) == 32, "author is not a 32-byte public key")
        _check(1 <= self.sequence <= _I64_MAX, "sequence out of range")
        _check(len(self.previous) in (0, 32), "previous content digest is not 32 bytes")
        if not isinstance(self.chunks, ChunkList):
            object.__setattr__(self, "chunks", ChunkList(self.chunks))
        chunks = self.chunk_list
        _check(len(chunks) <= MAX_CHUNKS, f"more than {MAX_CHUNKS} chunks")
        _check(
            len(self.symlink_target.encode("utf-8", "surrogatepass")) <= paths.MAX_PATH_BYTES,
            "symlink target too long",
        )
        _check("\x00" not in self.symlink_target, "symlink target contains NUL")
        if self.deleted or self.kind is Kind.DIRECTORY:
            _check(
                self.size == 0 and not self.chunks and not self.symlink_target,
                "a deleted entry or a directory has no size, chunks or target",
            )
        elif self.kind is Kind.FILE:
            _check(chunks.total_size() == self.size, "chunk sizes do not add up")
            _check(not self.symlink_target, "a file has no symlink target")
        else:
            _check(self.size == 0 and not self.chunks, "a symlink has no size or chunks")
            _check(bool(self.symlink_target), "a symlink needs a target")

    @property
    def chunk_list(self) -> ChunkList:
        """:attr:`chunks` as held: packed, whatever sequence the record was made with."""
        return cast(ChunkList, self.chunks)

    @property
    def author_id(self) -> DeviceId:
        return DeviceId.from_public_key(self.author)

    def content_digest(self) -> bytes:
        """What this version holds, independent of when and where it was made."""
        # Kept once computed (the record is immutable): the engine asks for it many times
        # per record, and each time costs an encoding and a hash.
        cached: bytes | None = self.__dict__.get("_content_digest")
        if cached is None:
            content = [
                int(self.kind),
                self.deleted,
                self.symlink_target,
                self.chunk_list.to_wire(),
            ]
            cached = blake2b(_CONTENT_CONTEXT + encoding.pack(content))
            self.__dict__["_content_digest"] = cached
        return cached

    def encode(self) -> bytes:
        """The canonical encoding (SPEC.md, "Record encoding")."""
        return encoding.pack(
            [
                RECORD_FORMAT,
                self.path,
                int(self.kind),
                self.size,
                self.mtime_ns,
                self.mode,
                self.deleted,
                self.version.to_wire(),
                self.chunk_list.to_wire(),
                self.symlink_target,
                self.author,
                self.sequence,
                self.previous,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Record:
        # Read field by field: the chunk list is never held as small objects all at once.
        reader = encoding.Reader(data, max_size=MAX_RECORD_SIZE, what="record")
        _check(reader.array() == 13, "a record is an array of 13 fields")
        fmt, path, kind, size, mtime_ns, mode, deleted, version = (reader.item() for _ in range(8))
        _check(fmt == RECORD_FORMAT and type(fmt) is int, f"unknown record format {fmt!r}")
        _check(isinstance(path, str), "path and target are strings")
        for value in (kind, size, mtime_ns, mode):
            _check(type(value) is int, "integer field has another type")
        _check(type(deleted) is bool, "deleted flag is not a boolean")
        _check(kind in Kind._value2member_map_, f"unknown kind {kind}")
        count = reader.array()
        _check(count is not None, "chunk list is not a list")
        entries = ChunkList(reader.item() for _ in range(count or 0))
        target, author, sequence, previous = (reader.item() for _ in range(4))
        _check(isinstance(target, str), "path and target are strings")
        _check(type(sequence) is int, "integer field has another type")
        _check(isinstance(author, bytes) and isinstance(previous, bytes), "binary field expected")
        try:
            vector = VersionVector.from_wire(version)
        except EncodingError as exc:
            raise RecordError(f"malformed record: {exc}") from exc
        return cls(
            path,
            Kind(kind),
            size,
            mtime_ns,
            mode,
            deleted,
            vector,
            entries,
            target,
            author,
            sequence,
            previous,
        )


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise RecordError(f"malformed record: {problem}")


def sign_record(identity: DeviceIdentity, folder_id: bytes, record: Record) -> bytes:
    """The signed record bytes: ``[record_bytes, signature]``."""
    if record.author != identity.public_key:
        raise RecordError("a device can only sign records it authored")
    body = record.encode()
    signature = identity.sign(_SIGNATURE_CONTEXT + folder_id + body)
    return encoding.pack([body, signature])


def _split_signed(signed: bytes) -> tuple[bytes, bytes]:
    obj: Any = encoding.unpack(signed, max_size=MAX_SIGNED_RECORD_SIZE, what="signed record")
    if not (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], bytes)
        and isinstance(obj[1], bytes)
    ):
        raise RecordError("malformed signed record: expected [record, signature]")
    return obj[0], obj[1]


def verify_record(folder_id: bytes, signed: bytes) -> Record:
    """Decode a signed record and check its author's signature; returns the record."""
    body, signature = _split_signed(signed)
    record = Record.decode(body)
    try:
        verify_signature(record.author, _SIGNATURE_CONTEXT + folder_id + body, signature)
    except SignatureError as exc:
        raise SignatureError(
            f"record for {record.path!r} is not signed by the device it names as author"
        ) from exc
    return record


def decode_verified(signed: bytes) -> Record:
    """Decode a signed record that was verified when it entered the local store.

    Skips the signature check (the store only holds verified records) but not validation.
    """
    return Record.decode(_split_signed(signed)[0])


def seal_record(key: FolderKey, signed: bytes, *, nonce: bytes | None = None) -> bytes:
    """Encrypt a signed record under the folder's record key.

    The nonce is random; passing one is only for reproducible test vectors.
    """
    header = bytes([SEALED_RECORD_VERSION]) + key.epoch.to_bytes(4, "big")
    nonce = os.urandom(_NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != _NONCE_SIZE:
        raise RecordError("a record nonce is 24 bytes")
    ciphertext = crypto_aead_xchacha20poly1305_ietf_encrypt(
        pad(signed, RECORD_PAD_FLOOR), header + key.folder_id, nonce, key.record_seal_key
    )
    return header + nonce + ciphertext


def open_record(keyring: FolderKeyring, sealed: bytes) -> bytes:
    """Decrypt a sealed record to its signed bytes (not yet verified: see open_and_verify)."""
    if len(sealed) > MAX_SEALED_RECORD_SIZE:
        raise RecordTamperedError(f"sealed record is {len(sealed)} bytes, over the limit")
    if (
        len(sealed) < _HEADER_SIZE + _NONCE_SIZE + RECORD_PAD_FLOOR + _TAG_SIZE
        or sealed[0] != SEALED_RECORD_VERSION
    ):
        raise RecordTamperedError("sealed record is truncated or of an unknown version")
    header = sealed[:_HEADER_SIZE]
    nonce = sealed[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
    key = keyring.epoch(int.from_bytes(header[1:], "big"))
    try:
        padded = crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[_HEADER_SIZE + _NONCE_SIZE :],
            header + key.folder_id,
            nonce,
            key.record_seal_key,
        )
    except CryptoError as exc:
        raise RecordTamperedError("sealed record failed authentication") from exc
    try:
        return unpad(padded, RECORD_PAD_FLOOR)
    except EncodingError as exc:
        raise RecordTamperedError(f"sealed record is malformed: {exc}") from exc


def seal(identity: DeviceIdentity, key: FolderKey, record: Record) -> bytes:
    """Sign and seal in one step."""
    return seal_record(key, sign_record(identity, key.folder_id, record))


def open_and_verify(keyring: FolderKeyring, sealed: bytes) -> Record:
    """Decrypt, decode and verify a sealed record; any failure raises a RecordError."""
    return verify_record(keyring.folder_id, open_record(keyring, sealed))
