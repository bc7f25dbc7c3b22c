"""Folder keys: one random secret per folder and key epoch, and the subkeys derived from it.

A folder is named by a random, permanent 32-byte folder ID. Its content is protected by a
256-bit secret that belongs to one *epoch*; removing a member starts a new epoch with a fresh
secret, so everything the removed member knew stops working for new data. Each purpose gets its
own subkey, derived with keyed BLAKE2b under a distinct context that also binds the folder ID
and the epoch (SPEC.md, "Folder keys"), so no key is ever used for two jobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property

from ..errors import FolderKeyError, UnknownEpochError
from . import encoding
from .hashing import derive_key

_FORMAT = 1
MAX_EPOCH = 2**32 - 1
_MAX_ENCODED = 128


class Purpose(Enum):
    """What a subkey is for; the value is its derivation context."""

    CHUNK_ID = b"commonsync/v1 chunk-id"
    CHUNK_NONCE = b"commonsync/v1 chunk-nonce"
    CHUNK_SEAL = b"commonsync/v1 chunk-seal"
    RECORD_SEAL = b"commonsync/v1 record-seal"
    MEMBERSHIP_PROOF = b"commonsync/v1 membership-proof"
    MAILBOX_ID = b"commonsync/v1 mailbox-id"


@dataclass(frozen=True)
class FolderKey:
    """The secret of one folder at one epoch."""

    folder_id: bytes
    epoch: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.folder_id) != 32:
            raise FolderKeyError("a folder ID is 32 bytes")
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise FolderKeyError(f"a key epoch is between 0 and {MAX_EPOCH}")
        if len(self.secret) != 32:
            raise FolderKeyError("a folder secret is 32 bytes")

    @classmethod
    def generate(cls, folder_id: bytes | None = None, epoch: int = 0) -> FolderKey:
        """A new folder (or, given its ID and the next epoch, a rotated key)."""
        return cls(folder_id or os.urandom(32), epoch, os.urandom(32))

    def subkey(self, purpose: Purpose) -> bytes:
        """The 32-byte key for ``purpose`` (see SPEC.md for the exact derivation)."""
        context = purpose.value + b"\x00" + self.folder_id + self.epoch.to_bytes(4, "big")
        return derive_key(self.secret, context)

    @cached_property
    def chunk_id_key(self) -> bytes:
        return self.subkey(Purpose.CHUNK_ID)

    @cached_property
    def chunk_nonce_key(self) -> bytes:
        return self.subkey(Purpose.CHUNK_NONCE)

    @cached_property
    def chunk_seal_key(self) -> bytes:
        return self.subkey(Purpose.CHUNK_SEAL)

    @cached_property
    def record_seal_key(self) -> bytes:
        return self.subkey(Purpose.RECORD_SEAL)

    def to_bytes(self) -> bytes:
        """Canonical encoding, for storage and (wrapped) for sharing with members."""
        return encoding.pack([_FORMAT, self.folder_id, self.epoch, self.secret])

    @classmethod
    def from_bytes(cls, data: bytes) -> FolderKey:
        obj = encoding.unpack(data, max_size=_MAX_ENCODED, what="folder key")
        if (
            not isinstance(obj, list)
            or len(obj) != 4
            or obj[0] != _FORMAT
            or not isinstance(obj[1], bytes)
            or type(obj[2]) is not int
            or not isinstance(obj[3], bytes)
        ):
            raise FolderKeyError("folder key encoding is malformed or of an unknown version")
        return cls(obj[1], obj[2], obj[3])


class FolderKeyring:
    """Every epoch of one folder's key that this device holds; the newest seals new data."""

    def __init__(self, keys: list[FolderKey]) -> None:
        if not keys:
            raise FolderKeyError("a keyring needs at least one key")
        folder_ids = {k.folder_id for k in keys}
        if len(folder_ids) != 1:
            raise FolderKeyError("all keys of a keyring belong to the same folder")
        self.folder_id = keys[0].folder_id
        self._by_epoch = {k.epoch: k for k in keys}

    @property
    def current(self) -> FolderKey:
        return self._by_epoch[max(self._by_epoch)]

    def epoch(self, epoch: int) -> FolderKey:
        try:
            return self._by_epoch[epoch]
        except KeyError:
            raise UnknownEpochError(
                f"data is sealed under key epoch {epoch}, which this device does not hold; "
                "it may have been removed from the folder or not yet received the new key"
            ) from None

    def holds(self, epoch: int) -> bool:
        return epoch in self._by_epoch

    def oldest_first(self) -> list[FolderKey]:
        """Every key held, oldest epoch first."""
        return [self._by_epoch[e] for e in sorted(self._by_epoch)]

    def add(self, key: FolderKey) -> None:
        if key.folder_id != self.folder_id:
            raise FolderKeyError("that key belongs to another folder")
        self._by_epoch[key.epoch] = key

    def discard(self, epoch: int) -> None:
        """Stop using a later epoch's key (one a merge of the membership log voided): the
        key the folder was shared with, epoch 0's, always stays."""
        if epoch != 0:
            self._by_epoch.pop(epoch, None)
