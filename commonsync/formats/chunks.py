"""Chunk IDs and sealed chunks.

A chunk's ID is a keyed hash of its plaintext, so only folder members can tell whether a known
piece of data is in the folder. Toward a relay, chunks travel *sealed*: XChaCha20-Poly1305 with
a nonce derived from the chunk ID (equal chunks seal to equal bytes inside one folder and
epoch, so a relay can deduplicate them, and nowhere else), padded into Padmé buckets so that the
sealed size does not reveal the exact chunk size. Between two members the channel already
encrypts; there chunks travel plain and are checked against their ID (:func:`verify_chunk`).

Sealed chunk layout (SPEC.md, "Sealed chunks")::

    version (1 byte, 0x01) || epoch (u32 big-endian) || ciphertext of pad(plaintext)
"""

from __future__ import annotations

import hmac

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from ..errors import ChunkError, ChunkTamperedError, EncodingError
from .hashing import blake2b
from .keys import FolderKey, FolderKeyring
from .padding import pad, padded_size, unpad

SEALED_CHUNK_VERSION = 1
CHUNK_ID_SIZE = 32
#: The largest chunk plaintext any implementation produces or accepts (FastCDC's max size).
MAX_CHUNK_SIZE = 4 * 1024 * 1024
#: Sealed chunks are never smaller than this, so small files all look alike.
CHUNK_PAD_FLOOR = 1024
_HEADER_SIZE = 5
_TAG_SIZE = 16
MAX_SEALED_CHUNK_SIZE = _HEADER_SIZE + padded_size(MAX_CHUNK_SIZE, CHUNK_PAD_FLOOR) + _TAG_SIZE


def chunk_id(chunk_id_key: bytes, data: bytes) -> bytes:
    """The 32-byte ID of a chunk: keyed BLAKE2b-256 of its plaintext."""
    return blake2b(data, key=chunk_id_key)


def verify_chunk(key: FolderKey, expected_id: bytes, data: bytes) -> None:
    """Check that ``data`` is the chunk named ``expected_id``; raise if it is not."""
    if len(data) > MAX_CHUNK_SIZE:
        raise ChunkTamperedError(f"chunk is {len(data)} bytes, over the {MAX_CHUNK_SIZE} limit")
    if not hmac.compare_digest(chunk_id(key.chunk_id_key, data), expected_id):
        raise ChunkTamperedError("chunk content does not match its ID")


def _nonce(key: FolderKey, cid: bytes) -> bytes:
    return blake2b(cid, key=key.chunk_nonce_key, size=24)


def _header(epoch: int) -> bytes:
    return bytes([SEALED_CHUNK_VERSION]) + epoch.to_bytes(4, "big")


def seal_chunk(key: FolderKey, data: bytes) -> tuple[bytes, bytes]:
    """Seal a chunk for a relay; returns ``(chunk_id, sealed_bytes)``."""
    if len(data) > MAX_CHUNK_SIZE:
        raise ChunkError(f"chunk is {len(data)} bytes, over the {MAX_CHUNK_SIZE} limit")
    cid = chunk_id(key.chunk_id_key, data)
    header = _header(key.epoch)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        pad(data, CHUNK_PAD_FLOOR), header + cid, _nonce(key, cid), key.chunk_seal_key
    )
    return cid, header + sealed


def open_chunk(keyring: FolderKeyring, cid: bytes, sealed: bytes) -> bytes:
    """Open a sealed chunk expected to be ``cid``; any tampering raises ChunkTamperedError."""
    if len(cid) != CHUNK_ID_SIZE:
        raise ChunkError("a chunk ID is 32 bytes")
    if len(sealed) > MAX_SEALED_CHUNK_SIZE:
        raise ChunkTamperedError(f"sealed chunk is {len(sealed)} bytes, over the limit")
    if (
        len(sealed) < _HEADER_SIZE + CHUNK_PAD_FLOOR + _TAG_SIZE
        or sealed[0] != SEALED_CHUNK_VERSION
    ):
        raise ChunkTamperedError("sealed chunk is truncated or of an unknown version")
    header = sealed[:_HEADER_SIZE]
    key = keyring.epoch(int.from_bytes(header[1:], "big"))
    try:
        padded = crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[_HEADER_SIZE:], header + cid, _nonce(key, cid), key.chunk_seal_key
        )
    except CryptoError as exc:
        raise ChunkTamperedError("sealed chunk failed authentication") from exc
    try:
        data = unpad(padded, CHUNK_PAD_FLOOR)
    except EncodingError as exc:
        raise ChunkTamperedError(f"sealed chunk is malformed: {exc}") from exc
    verify_chunk(key, cid, data)
    return data
