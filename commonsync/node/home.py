"""Where a Node keeps what is not configuration: its identity, its folders' keys and its
index, in one directory the tool names.

    device.key          the device's private key (0600)
    folder-keys/*.key   one key per folder (0600; a key is what lets a device read a folder)
    state.db            the index (SQLite)

Secrets are checked as they are read: a regular file, never through a symlink, that no other
user can read or write.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommonsyncError, InsecureKeyFileError
from ..formats.identity import DeviceIdentity
from ..formats.keys import MAX_EPOCH, FolderKey
from ..formats.whole_files import write_whole

#: A folder key file is a few dozen bytes; more is not one.
_MAX_KEY_FILE = 4096


class HomeError(CommonsyncError):
    """The home directory is missing, not initialised, or cannot be used."""


@dataclass(frozen=True)
class NodeHome:
    """The directory of one device's secrets and index."""

    directory: Path

    @property
    def identity_file(self) -> Path:
        return self.directory / "device.key"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.db"

    @property
    def keys_dir(self) -> Path:
        return self.directory / "folder-keys"

    def make_dirs(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_identity(self) -> DeviceIdentity:
        return DeviceIdentity.load(self.identity_file)

    def load_or_create_identity(self) -> DeviceIdentity:
        """The device's identity, made (and kept) on first use: what a tool embedding a Node
        wants; the daemon asks for ``commonsync init`` instead."""
        self.make_dirs()
        if not self.identity_file.exists():
            DeviceIdentity.generate().save(self.identity_file)
        return self.load_identity()

    def save_folder_key(self, key: FolderKey, *, later_epoch: bool = False) -> None:
        """Keep a folder's key with the device key (0600, written whole, never in config):
        the key it was made or shared with in one file, each ``later_epoch``'s in its own."""
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.folder_key_file(key.folder_id, key.epoch if later_epoch else None)
        write_whole(path, key.to_bytes())

    def load_folder_keys(self, folder_id: bytes) -> list[FolderKey]:
        """The key a folder was shared with, then those of the later epochs this device
        received (a removal starts one), oldest first."""
        first = self.load_folder_key(folder_id)
        prefix = f"{folder_id.hex()}."
        later = []
        for path in self.keys_dir.glob(f"{prefix}*.key"):
            epoch = path.name[len(prefix) : -len(".key")]
            if epoch.isdigit() and 0 < int(epoch) <= MAX_EPOCH:
                later.append(self.load_folder_key(folder_id, int(epoch)))
        return [first, *sorted(later, key=lambda k: k.epoch)]

    def load_folder_key(self, folder_id: bytes, epoch: int | None = None) -> FolderKey:
        """A folder's key (the one it was shared with, or that of a later ``epoch``), checked
        as the device key is: a regular file (never through a symlink, never a FIFO to
        block on) that no other user can read or write."""
        path = self.folder_key_file(folder_id, epoch)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HomeError(
                f"the key of folder {folder_id.hex()} is missing from {self.keys_dir}; "
                "remove the folder and accept it again from a device that has it"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise HomeError(f"the folder key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise InsecureKeyFileError(
                    f"the folder key file {path} is accessible to other users "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); the folder's key may have "
                    f"leaked. If you trust this machine's other users, run `chmod 600 {path}`"
                )
            data = os.read(fd, _MAX_KEY_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_KEY_FILE:
            raise HomeError(f"{path} is not a folder key (too large)")
        key = FolderKey.from_bytes(data)
        if key.folder_id != folder_id or (epoch is not None and key.epoch != epoch):
            raise HomeError(f"{path} holds the key of another folder or epoch")
        return key

    def folder_key_file(self, folder_id: bytes, epoch: int | None = None) -> Path:
        suffix = "" if epoch is None else f".{epoch}"
        return self.keys_dir / f"{folder_id.hex()}{suffix}.key"

    def remove_folder_keys(self, folder_id: bytes) -> None:
        """Delete every key of a folder (the one it was shared with and its later epochs'):
        the folder was removed from this device, which then reads none of it any more."""
        for path in self.keys_dir.glob(f"{folder_id.hex()}*.key"):
            if path.name.split(".")[0] == folder_id.hex():
                path.unlink(missing_ok=True)
