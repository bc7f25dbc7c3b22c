"""What a :class:`~commonsync.node.node.Node` is told: its devices, folders, relays and
settings, as plain data.

The library never reads a configuration file: a tool builds a :class:`NodeConfig` (the daemon
reads its TOML into one, :mod:`commonsyncd.config`) and hands it over. The Node changes it in
place when asked to (a folder added, a device accepted) and says so through its
``on_config_change`` callback, so the tool can keep its file in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from ..errors import CommonsyncError, DeviceIdError
from ..formats.device_id import DeviceId
from ..relay.wire import DEFAULT_RELAY_PORT
from ..sync.retention import RetentionPolicy

DEFAULT_PORT = 22070


class ConfigError(CommonsyncError):
    """A configuration value is malformed; the message names the field (and the file, when
    it was read from one)."""


def parse_address(text: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host:port``, ``host``, ``[v6]:port`` → (host, port), with a clear error."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"{text!r} is not an address; write it as HOST:PORT")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{text!r} has no valid port; write it as HOST:PORT (0 to 65535)")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets: what :func:`parse_address` reads."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remote_address(stream: anyio.abc.SocketStream) -> str:
    """Who is at the other end of an accepted connection, as ``host:port`` (for logs)."""
    try:
        remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "?"
    if isinstance(remote, str):  # a Unix socket
        return remote
    return format_address(remote[0], remote[1])


@dataclass
class DeviceConfig:
    """A device this one syncs with: its ID, a name for people, and where to dial it (LAN
    discovery and relays find it too)."""

    device_id: DeviceId
    name: str = ""
    addresses: list[str] = field(default_factory=list)
    #: Paused by a person (`commonsync device pause`): not dialled, its connections refused
    #: (it is not listed as waiting either), until resumed; kept across restarts.
    paused: bool = field(default=False, kw_only=True)
    #: The name the device gives itself (its Hello), learnt at each session: what people see
    #: when they gave it none here (:attr:`display_name`); never replaces :attr:`name`.
    reported_name: str = ""
    #: Bandwidth limits for this device's sessions, bytes per second (0: none).
    max_send_rate: int = 0
    max_receive_rate: int = 0

    @property
    def display_name(self) -> str:
        """The name a person chose for it here, else the one it gives itself ("" if none)."""
        return self.name or self.reported_name


@dataclass
class FolderConfig:
    """A synced folder: its ID (its key is kept with the device's secrets, never here), its
    label, where it is on this device, and the devices it is shared with."""

    folder_id: bytes
    label: str
    path: Path
    devices: list[DeviceId] = field(default_factory=list)
    #: How its versions folder is pruned (commonsync.sync.retention; the daemon applies it).
    versions: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: Paused by a person (`commonsync folder pause`): not scanned, not exchanged, until
    #: resumed; kept across restarts.
    paused: bool = field(default=False, kw_only=True)


@dataclass
class RelayConfig:
    """A community relay this device keeps a control connection to: its ID, which the
    connection pins (SPEC.md §14), and its address."""

    relay_id: DeviceId
    address: str

    @classmethod
    def parse(cls, text: str) -> RelayConfig:
        """``RELAYID@HOST:PORT``, as ``commonsync relay add`` takes it (the port defaults
        to a relay's, 22071)."""
        relay_text, at, address = text.strip().rpartition("@")
        if not at or not relay_text.strip() or not address:
            raise ConfigError(f"{text!r} does not name a relay; write it as RELAYID@HOST:PORT")
        try:
            relay_id = DeviceId.parse(relay_text)
        except DeviceIdError as exc:
            raise ConfigError(f"{relay_text!r} is not a valid relay ID: {exc}") from None
        host, port = parse_address(address, default_port=DEFAULT_RELAY_PORT)
        return cls(relay_id, format_address(host, port))

    def __str__(self) -> str:
        return f"{self.relay_id}@{self.address}"


@dataclass
class NodeConfig:
    """Everything a Node is configured with. The defaults are a daemon's: listening on every
    interface at :data:`DEFAULT_PORT`, LAN discovery on; a tool embedding a Node in a test
    or on one machine passes ``listen="127.0.0.1:0"`` and its own discovery interfaces."""

    name: str = ""
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    rescan_interval: float = 3600.0
    max_deleted_share: float = 0.5
    #: Free space kept on each folder's disk: "1%", "10 GB", or bytes (commonsync.sync.space).
    min_free: str = "1%"
    discovery_enabled: bool = True
    #: IP addresses to announce on and browse from; empty: every IPv4 address of the machine.
    discovery_interfaces: list[str] = field(default_factory=list)
    devices: list[DeviceConfig] = field(default_factory=list)
    folders: list[FolderConfig] = field(default_factory=list)
    relays: list[RelayConfig] = field(default_factory=list)
    #: Bandwidth limits for all sessions together, bytes per second (0: none).
    max_send_rate: int = 0
    max_receive_rate: int = 0

    def relay(self, relay_id: DeviceId) -> RelayConfig | None:
        return next((r for r in self.relays if r.relay_id == relay_id), None)

    def device(self, device_id: DeviceId) -> DeviceConfig | None:
        return next((d for d in self.devices if d.device_id == device_id), None)

    def folder(self, folder_id: bytes) -> FolderConfig | None:
        return next((f for f in self.folders if f.folder_id == folder_id), None)

    def find_folder(self, reference: str) -> FolderConfig:
        """A folder by label, ID, or unambiguous ID prefix (as people type them)."""
        by_label = [f for f in self.folders if f.label == reference]
        if len(by_label) == 1:
            return by_label[0]
        prefix = reference.lower()
        by_id = [f for f in self.folders if f.folder_id.hex().startswith(prefix)] if prefix else []
        if len(by_id) == 1:
            return by_id[0]
        if len(by_label) + len(by_id) > 1:
            raise ConfigError(f"{reference!r} names several folders; use more of its ID")
        raise ConfigError(f"no folder is called {reference!r}; `commonsync folder list` shows them")

    def folders_shared_with(self, device_id: DeviceId) -> list[FolderConfig]:
        return [f for f in self.folders if device_id in f.devices]
