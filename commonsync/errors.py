"""The exceptions the library raises.

Every error the library raises on purpose is a subclass of :class:`CommonsyncError`, so a tool
can catch the library's failures in one place and still tell them apart. Messages are written
for the person who will read them: they say what was wrong and, where possible, what to do.

This module is the library's floor: it imports nothing of commonsync, so every layer can raise
these. An error that must carry a higher layer's value is defined in that layer
(:class:`commonsync.wire.handshake.PeerRefusedError` carries a device ID).
"""

from __future__ import annotations

import errno


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


class VersionVectorError(RecordError):
    """A version vector cannot be taken or grown: a counter too large to bump, or a counter
    of this device's own that it never issued (SPEC.md §6)."""


class SignatureError(RecordError):
    """A record's signature does not verify against its author's key."""


class RecordTamperedError(RecordError):
    """A sealed record failed authentication: it was modified or sealed under another key."""


class StoreError(CommonsyncError):
    """The index store cannot be opened or used."""


class IndexFullError(StoreError):
    """The index cannot be written: the disk (or file system) holding it is full.

    Nothing of the refused transaction was written. It is a passing state, not damage: the
    same write succeeds once space is freed (:meth:`commonsync.sync.store.IndexStore.check_writable`
    says when), so a caller waits and retries rather than giving up.
    """


class HandshakeError(CommonsyncError):
    """A Noise handshake failed: bad message, wrong key, or protocol misuse."""


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


class PeerStalledError(CommonsyncError):
    """A peer owes us requested data and sent nothing at all for the session's stall timeout,
    so a request waiting on it was given up (the session itself goes on)."""


class IndexChangedError(StoreError):
    """A conditional write found that the index changed since its caller read it.

    Raised by :meth:`commonsync.sync.store.IndexStore.put` with ``expected`` local sequences, before
    anything is written; ``paths`` are the paths whose record is no longer the expected one.
    The scanner drops those paths and lets its next pass look at them again, so that it never
    overwrites a version it has not seen.
    """

    def __init__(self, message: str, paths: tuple[str, ...]) -> None:
        super().__init__(message)
        self.paths = paths


class FolderError(CommonsyncError):
    """A folder's root cannot be used: it cannot be created, read or marked."""


class FolderMissingError(FolderError):
    """A folder's root or its marker file is missing, so it cannot be scanned.

    A disk that is not mounted looks like an empty folder; without the marker, a scan would
    read every file as deleted and propagate that to every device.
    """


class MassDeletionError(FolderError):
    """A scan found that a large share of a folder's files vanished at once: an unmounted or
    wiped disk, a mistaken command, ransomware. Their deletion was not published; the person
    confirms it (or restores the files) before anything propagates."""

    def __init__(self, vanished: int, indexed: int) -> None:
        super().__init__(
            f"{vanished} of {indexed} files vanished at once; their deletion was not sent to "
            "other devices. Restore them, or confirm the deletion to propagate it"
        )
        self.vanished = vanished
        self.indexed = indexed


class IgnoreFileError(CommonsyncError):
    """A ``.csignore`` file cannot be read or holds a pattern that is not valid."""


class ApplyError(CommonsyncError):
    """A remote version cannot be made real on the local disk (:mod:`commonsync.sync.apply`)."""


class LocalChangedError(ApplyError):
    """The local entry is not what the scan saw: applying now could lose a local change.

    Nothing was replaced. The engine rescans ``path`` and decides again (a conflict if both
    sides changed).
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class UnsafePathError(ApplyError):
    """Reaching a path would go through a symlink or a non-directory, so possibly outside the
    folder; nothing is written there."""


class InternalPathError(UnsafePathError):
    """A record names one of commonsync's own paths (``.commonsync/``, a temporary file)."""


class UnrepresentableNameError(ApplyError):
    """The local file system cannot hold a name (too long, invalid characters or encoding).

    Reported, never mangled: renaming on this device would sync the new name everywhere.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class DirectoryNotEmptyError(ApplyError):
    """A directory to remove still holds entries the index does not know about (yet)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class ConflictCopyExistsError(ApplyError):
    """Something already exists where a conflict copy would go; nothing was moved."""


class VersionsUnavailableError(ApplyError):
    """A replaced file cannot be kept in the versions folder (it is on another file system)."""


class RecordKindError(ApplyError):
    """A record was handed to the apply function for another kind of entry (a bug)."""


class LocalFileError(ApplyError):
    """The local file system refused an operation (disk full, permission denied, ...).

    ``errno`` is the operating system's error number, so the engine can tell a full disk
    from a permission problem; the partial file is kept for a later retry.
    """

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


class InsufficientSpaceError(LocalFileError):
    """Writing a version would leave less free space than the folder's reserve (or the file
    system said it is full): nothing more is written, and it is tried again once space
    returns. ``needed`` and ``free`` are in bytes (``free`` beyond the reserve)."""

    def __init__(self, message: str, *, needed: int, free: int) -> None:
        super().__init__(message, errno.ENOSPC)
        self.needed = needed
        self.free = free


class MissingChunkError(ChunkError):
    """No source holds a chunk of the version being assembled yet.

    Raised by the engine's chunk reader; the partial file is kept and resumes later.
    """


class RelayError(CommonsyncError):
    """Something about a community relay failed: it cannot be reached, it is not the relay
    the configuration names, it refused a request, or a session through it did not start."""


class RelayRefusedError(RelayError):
    """The relay refused: this device is not a member, the target is not connected, a limit
    was reached. ``reason`` is the relay protocol's code (SPEC.md §14), 0 when the relay
    refused the control channel itself in the handshake."""

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason


class RelayJoinError(RelayError):
    """A session connection to a relay was not spliced: the token was unknown, expired or
    already used, or the other device did not join in time."""


class RelayProtocolError(RelayError, ProtocolError):
    """A relay message or a session preamble breaks the relay protocol (unknown type, bad
    field, oversized, a message sent in the wrong direction)."""


class RequestError(CommonsyncError):
    """A request to a :class:`~commonsync.node.node.Node` (add a folder, accept a device, ...)
    that cannot be done as asked: the message says why, ``hint`` what to do instead. Nothing
    was changed. A subclass says which way it failed (the daemon's API answers each with its
    own HTTP status)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class InvalidRequestError(RequestError):
    """The request is malformed: a device ID that is not one, a missing label."""


class NotFoundError(RequestError):
    """The request names a folder, device or offer this device does not know."""


class RequestConflictError(RequestError):
    """The request clashes with what is there: a folder already added or overlapping
    another, a device already known, this device's own ID."""


class UnavailableError(RequestError):
    """The request cannot be done now (a folder whose disk is away): it may work later."""


class MembershipError(CommonsyncError):
    """A folder's membership log, or an entry of it, cannot be used."""


class EntryMalformedError(MembershipError):
    """An entry of a membership log does not decode, or its fields are out of range, or its
    signature does not verify."""


class EntryRefusedError(MembershipError):
    """A well-formed, signed membership entry breaks the rules: its author may not do what it
    says (a writer adding a member, an admin removing an owner), or it refers to something
    that is not there. The message says which rule; every device refuses it the same way."""


class RollbackError(MembershipError):
    """A peer's membership log does not contain the head this device has already seen: it is
    an old log, or a different one."""
