"""The exceptions the library raises.

Every error the library raises on purpose is a subclass of :class:`CommonsyncError`, so a tool
can catch the library's failures in one place and still tell them apart. Messages are written
for the person who will read them: they say what was wrong and, where possible, what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .device_id import DeviceId


class CommonsyncError(Exception):
    """Base class of every error raised by commonsync on purpose."""


class EncodingError(CommonsyncError):
    """Bytes do not decode to a well-formed, canonical, size-limited structure."""


class IdentityError(CommonsyncError):
    """A device identity or key file cannot be created, loaded or used."""


class InsecureKeyFileError(IdentityError):
    """A key file is readable or writable by other users, so its secret may be exposed."""


class DeviceIdError(CommonsyncError):
    """A device ID string is malformed."""


class MistypedDeviceIdError(DeviceIdError):
    """A device ID string has the right shape but a check character does not match."""


class FolderKeyError(CommonsyncError):
    """Folder key material is malformed or the needed key epoch is not known."""


class UnknownEpochError(FolderKeyError):
    """Data was sealed under a key epoch this device does not hold."""


class ChunkError(CommonsyncError):
    """A chunk cannot be sealed, opened or verified."""


class ChunkTamperedError(ChunkError):
    """A sealed chunk failed authentication or its plaintext does not hash to its ID."""


class RecordError(CommonsyncError):
    """A file record is malformed, forged or tampered with."""


class InvalidPathError(RecordError):
    """A path is not an acceptable folder-relative path (absolute, ``..``, NUL, not NFC, ...)."""


class SignatureError(RecordError):
    """A record's signature does not verify against its author's key."""


class RecordTamperedError(RecordError):
    """A sealed record failed authentication: it was modified or sealed under another key."""


class StoreError(CommonsyncError):
    """The index store cannot be opened or used."""


class HandshakeError(CommonsyncError):
    """A Noise handshake failed: bad message, wrong key, or protocol misuse."""


class PeerRefusedError(HandshakeError):
    """We refused the peer: its device ID is not one we accept."""

    def __init__(self, message: str, device_id: DeviceId) -> None:
        super().__init__(message)
        self.device_id = device_id


class RefusedByPeerError(HandshakeError):
    """The peer refused us: it does not accept our device ID (or refused the channel)."""


class UnsupportedVersionError(HandshakeError):
    """The two sides share no channel protocol version."""


class HandshakeTimeoutError(HandshakeError):
    """The peer did not complete the handshake in time."""


class DecryptError(CommonsyncError):
    """An AEAD ciphertext failed authentication."""


class ChannelError(CommonsyncError):
    """The secure channel broke: the peer sent something it must not, or vanished."""


class FrameTooLargeError(ChannelError):
    """A frame announced a size above the protocol's limit."""


class TamperedFrameError(ChannelError):
    """A frame failed authentication: modified, reordered, replayed or from another stream."""


class TruncatedStreamError(ChannelError):
    """The stream ended without the peer's authenticated end-of-stream frame."""


class ProtocolError(ChannelError):
    """A peer sent a message that breaks the wire protocol (unknown type, bad field, ...)."""


class PeerOverloadError(ProtocolError):
    """The peer requested more chunk data than the flow-control budget allows."""
