"""The daemon's configuration: a TOML file that people may read and edit, holding no secret.

Devices are named by their device IDs, folders by their IDs (hex) and labels; the keys of
the device and of its folders live beside the state (:mod:`commonsyncd.home`), never here.

    name = "laptop"
    listen = "0.0.0.0:22070"
    rescan_interval = 3600        # seconds between full rescans (changes are watched anyway)
    max_deleted_share = 0.5       # a scan that finds more of a folder gone asks first
    min_free = "1%"               # free disk space kept; a remote file that would eat into it waits
    relays = ["K7GQ2ZC-…@relay.example.org:22071"]   # community relays: RELAYID@HOST:PORT

    [discovery]
    enabled = true
    interfaces = []               # IP addresses to announce on; empty: all of this machine's

    [[devices]]
    id = "ZS5WX2N-43CA4PY-…"
    name = "desktop"
    addresses = ["192.168.1.20:22070"]

    [[folders]]
    id = "5f0c…"
    label = "choir"
    path = "/home/ada/Choir"
    devices = ["ZS5WX2N-43CA4PY-…"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.abc
import tomli_w

from commonsync import CommonsyncError, DeviceId
from commonsync.errors import DeviceIdError
from commonsync.relay.wire import DEFAULT_RELAY_PORT
from commonsync.sync.space import MinFree

DEFAULT_PORT = 22070
#: The largest configuration file read (a TOML bomb is not a configuration).
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(CommonsyncError):
    """The configuration file is malformed; the message names the file and the field."""


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
    device_id: DeviceId
    name: str = ""
    addresses: list[str] = field(default_factory=list)


@dataclass
class FolderConfig:
    folder_id: bytes
    label: str
    path: Path
    devices: list[DeviceId] = field(default_factory=list)


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
class Config:
    name: str = ""
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    rescan_interval: float = 3600.0
    max_deleted_share: float = 0.5
    #: Free space kept on each folder's disk: "1%", "10 GB", or bytes (commonsync.sync.space).
    min_free: str = "1%"
    discovery_enabled: bool = True
    discovery_interfaces: list[str] = field(default_factory=list)
    devices: list[DeviceConfig] = field(default_factory=list)
    folders: list[FolderConfig] = field(default_factory=list)
    relays: list[RelayConfig] = field(default_factory=list)

    # -- lookups ------------------------------------------------------------------------------

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

    # -- the file -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Config:
        raw = read_toml(path, missing="run `commonsync init` first")
        try:
            return cls._from_dict(raw)
        except (KeyError, TypeError, ValueError, DeviceIdError) as exc:
            raise ConfigError(f"{path}: {_describe(exc)}") from None

    def save(self, path: Path) -> None:
        """Write the whole file anew, then rename it into place (never half a config)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_suffix(".tmp")
        with private_file(temp) as stream:
            tomli_w.dump(self._to_dict(), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> Config:
        discovery = _table(raw.get("discovery", {}), "discovery")
        config = cls(
            name=_typed(raw.get("name", ""), str, "name"),
            listen=_typed(raw.get("listen", cls.listen), str, "listen"),
            rescan_interval=_number(raw.get("rescan_interval", 3600), "rescan_interval"),
            max_deleted_share=_number(raw.get("max_deleted_share", 0.5), "max_deleted_share"),
            min_free=str(_typed(raw.get("min_free", "1%"), (str, int, float), "min_free")),
            discovery_enabled=_typed(discovery.get("enabled", True), bool, "discovery.enabled"),
            discovery_interfaces=[
                _typed(i, str, "discovery.interfaces")
                for i in _typed(discovery.get("interfaces", []), list, "discovery.interfaces")
            ],
        )
        parse_address(config.listen)
        if not 0 <= config.max_deleted_share <= 1:
            raise ValueError("max_deleted_share must be between 0 and 1")
        if config.rescan_interval < 1:
            raise ValueError("rescan_interval must be at least 1 second")
        MinFree.parse(config.min_free)  # a ValueError that says what is wrong
        for text in _typed(raw.get("relays", []), list, "relays"):
            try:
                config.relays.append(RelayConfig.parse(_typed(text, str, "relays")))
            except ConfigError as exc:
                raise ValueError(f"relays: {exc}") from None
        for entry in _typed(raw.get("devices", []), list, "devices"):
            entry = _table(entry, "devices")
            addresses = [_typed(a, str, "devices.addresses") for a in entry.get("addresses", [])]
            for address in addresses:
                parse_address(address)
            config.devices.append(
                DeviceConfig(
                    DeviceId.parse(_typed(entry["id"], str, "devices.id")),
                    _typed(entry.get("name", ""), str, "devices.name"),
                    addresses,
                )
            )
        for entry in _typed(raw.get("folders", []), list, "folders"):
            entry = _table(entry, "folders")
            folder_id = bytes.fromhex(_typed(entry["id"], str, "folders.id"))
            if len(folder_id) != 32:
                raise ValueError(f"folder ID {entry['id']!r} is not 64 hex digits")
            config.folders.append(
                FolderConfig(
                    folder_id,
                    _typed(entry.get("label", ""), str, "folders.label"),
                    Path(_typed(entry["path"], str, "folders.path")),
                    [
                        DeviceId.parse(_typed(d, str, "folders.devices"))
                        for d in _typed(entry.get("devices", []), list, "folders.devices")
                    ],
                )
            )
        return config

    def _to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "rescan_interval": self.rescan_interval,
            "max_deleted_share": self.max_deleted_share,
            "min_free": self.min_free,
            "relays": [str(r) for r in self.relays],
            "discovery": {
                "enabled": self.discovery_enabled,
                "interfaces": self.discovery_interfaces,
            },
            "devices": [
                {"id": str(d.device_id), "name": d.name, "addresses": d.addresses}
                for d in self.devices
            ],
            "folders": [
                {
                    "id": f.folder_id.hex(),
                    "label": f.label,
                    "path": str(f.path),
                    "devices": [str(d) for d in f.devices],
                }
                for f in self.folders
            ],
        }


def _typed(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if isinstance(value, bool) and kind in ((int, float), int, float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not isinstance(value, kind):
        raise TypeError(f"{name} has the wrong type ({type(value).__name__})")
    return value


def _number(value: Any, name: str) -> float:
    return float(_typed(value, (int, float), name))


def _table(value: Any, name: str) -> dict[str, Any]:
    return _typed(value, dict, name)  # type: ignore[no-any-return]


def private_file(path: Path) -> BinaryIO:
    """``path`` opened for writing, created or truncated, readable by its owner only (a
    configuration names devices, folders and addresses), whatever the umask. A leftover of
    an interrupted write gets its mode fixed too; a symlink there is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def read_toml(path: Path, *, missing: str) -> dict[str, Any]:
    """A configuration file's table, at most :data:`MAX_CONFIG_BYTES`; ``missing`` is the
    hint given when the file does not exist."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; {missing}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"a required field is missing: {exc.args[0]}"
    return str(exc)
