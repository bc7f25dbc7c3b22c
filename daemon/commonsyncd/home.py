"""Where a device keeps its configuration, secrets and state.

By default the platform's places (on Linux the XDG directories, through platformdirs):
configuration in ``~/.config/commonsync``, identity, folder keys and the index in
``~/.local/share/commonsync``, the control socket in the runtime directory. ``--home DIR``
(or ``COMMONSYNC_HOME``) puts everything in ``DIR`` instead, so that several daemons can run
side by side on one machine.

A community relay run on the same machine (``commonsync relay serve``) keeps its own
identity and configuration in the same places under other names (``relay.key``,
``relay.toml``): it is another identity, not this device's.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from commonsync import CommonsyncError, DeviceIdentity, FolderKey
from commonsync.errors import InsecureKeyFileError

APP = "commonsync"
#: Linux refuses Unix socket paths longer than this (sun_path holds 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
#: A folder key file is a few dozen bytes; more is not one.
_MAX_KEY_FILE = 4096


class HomeError(CommonsyncError):
    """The home directory is missing, not initialised, or cannot be used."""


@dataclass(frozen=True)
class Home:
    config_dir: Path
    data_dir: Path
    runtime_dir: Path

    @classmethod
    def at(cls, root: Path) -> Home:
        root = Path(root).expanduser().absolute()
        return cls(root, root, root)

    @classmethod
    def default(cls) -> Home:
        data = Path(platformdirs.user_data_dir(APP))
        # The runtime directory is per login session and private (XDG_RUNTIME_DIR). Where
        # there is none (a server without a login session), the private data directory
        # serves: a shared fallback such as /tmp is what a control socket must avoid.
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        return cls(
            Path(platformdirs.user_config_dir(APP)),
            data,
            Path(runtime) / APP if runtime else data,
        )

    @classmethod
    def resolve(cls, home: Path | None) -> Home:
        """``--home`` if given, else ``COMMONSYNC_HOME``, else the platform's places."""
        if home is None and os.environ.get("COMMONSYNC_HOME"):
            home = Path(os.environ["COMMONSYNC_HOME"])
        return cls.at(home) if home is not None else cls.default()

    # -- what lives where ---------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def identity_file(self) -> Path:
        return self.data_dir / "device.key"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "folder-keys"

    @property
    def relay_config_file(self) -> Path:
        return self.config_dir / "relay.toml"

    @property
    def relay_identity_file(self) -> Path:
        return self.data_dir / "relay.key"

    @property
    def socket_path(self) -> Path:
        path = self.runtime_dir / "control.sock"
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise HomeError(
                f"the control socket path {path} is longer than the system allows "
                f"({MAX_SOCKET_PATH} bytes); use a shorter --home"
            )
        return path

    @property
    def initialised(self) -> bool:
        return self.identity_file.exists() and self.config_file.exists()

    def require_initialised(self) -> None:
        if not self.initialised:
            raise HomeError(
                f"this device is not set up in {self.config_dir}; run `commonsync init` first"
            )

    # -- secrets ------------------------------------------------------------------------------

    def make_dirs(self) -> None:
        for directory in {self.config_dir, self.data_dir, self.runtime_dir}:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_identity(self) -> DeviceIdentity:
        self.require_initialised()
        return DeviceIdentity.load(self.identity_file)

    def save_folder_key(self, key: FolderKey) -> None:
        """Keep a folder's key with the device key (0600, written whole, never in config)."""
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.folder_key_file(key.folder_id)
        temp = path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key.to_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)

    def load_folder_key(self, folder_id: bytes) -> FolderKey:
        """A folder's key, checked as the device key is: a regular file (never through a
        symlink, never a FIFO to block on) that no other user can read or write."""
        path = self.folder_key_file(folder_id)
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
        if key.folder_id != folder_id:
            raise HomeError(f"{path} holds the key of another folder")
        return key

    def folder_key_file(self, folder_id: bytes) -> Path:
        return self.keys_dir / f"{folder_id.hex()}.key"
