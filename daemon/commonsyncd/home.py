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
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from commonsync import DeviceIdentity, FolderKey
from commonsync.node.home import HomeError, NodeHome

__all__ = ["Home", "HomeError"]

APP = "commonsync"
#: Linux refuses Unix socket paths longer than this (sun_path holds 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


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
        return self.node_home.identity_file

    @property
    def state_file(self) -> Path:
        return self.node_home.state_file

    @property
    def keys_dir(self) -> Path:
        return self.node_home.keys_dir

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

    @property
    def node_home(self) -> NodeHome:
        """Where the library's Node keeps this device's secrets and index."""
        return NodeHome(self.data_dir)

    def save_folder_key(self, key: FolderKey) -> None:
        self.node_home.save_folder_key(key)

    def load_folder_key(self, folder_id: bytes) -> FolderKey:
        return self.node_home.load_folder_key(folder_id)

    def folder_key_file(self, folder_id: bytes) -> Path:
        return self.node_home.folder_key_file(folder_id)
