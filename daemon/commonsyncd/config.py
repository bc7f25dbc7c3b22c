"""The daemon's configuration: a TOML file that people may read and edit, holding no secret.

Devices are named by their device IDs, folders by their IDs (hex) and labels; the keys of
the device and of its folders live beside the state (:mod:`commonsyncd.home`), never here.
The running daemon applies a change made to the file by hand at once (:mod:`commonsyncd.reload`).

    name = "laptop"
    listen = "0.0.0.0:22070"
    rescan_interval = 3600        # seconds between full rescans (changes are watched anyway)
    max_deleted_share = 0.5       # a scan that finds more of a folder gone asks first
    min_free = "1%"               # free disk space kept; a remote file that would eat into it waits
    max_send_rate = "2 MiB/s"     # bandwidth for all sessions together ("none": no limit)
    max_receive_rate = "none"
    relays = ["K7GQ2ZC-…@relay.example.org:22071"]   # community relays: RELAYID@HOST:PORT

    [discovery]
    enabled = true
    interfaces = []               # IP addresses to announce on; empty: all of this machine's

    [[devices]]
    id = "ZS5WX2N-43CA4PY-…"
    name = "desktop"              # the name given here (`device add --name`)
    reported_name = "ada-desktop" # the name the device gives itself, learnt from it
    addresses = ["192.168.1.20:22070"]
    paused = true                 # optional: `device pause` (no connection until resumed)
    max_send_rate = "500 KiB/s"   # bandwidth for this device's sessions (optional)

    [[folders]]
    id = "5f0c…"
    label = "choir"
    path = "/home/ada/Choir"
    devices = ["ZS5WX2N-43CA4PY-…"]
    paused = true                 # optional: `folder pause` (not scanned or synced)

    [folders.versions]            # optional: how its .commonsync/versions/ is pruned
    keep = "staggered"            # all for an hour, hourly for a day, daily for 30 days,
                                  # then weekly; or "all": no thinning
    max_age = "365d"              # older versions go ("0": no age limit)
    max_size = "10%"              # of the folder's size (at least 100 MB), or "5 GB", or "none"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import tomli_w

from commonsync import DeviceId
from commonsync.errors import DeviceIdError, InvalidRequestError
from commonsync.node.config import (
    DEFAULT_PORT,
    ConfigError,
    DeviceConfig,
    FolderConfig,
    NodeConfig,
    RelayConfig,
    format_address,
    parse_address,
    remote_address,
)
from commonsync.node.limits import format_rate, parse_rate
from commonsync.sync.retention import (
    DAY,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_SIZE,
    RetentionPolicy,
    parse_age,
)
from commonsync.sync.space import MinFree

__all__ = [
    "DEFAULT_PORT",
    "MAX_CONFIG_BYTES",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "FolderConfig",
    "RelayConfig",
    "format_address",
    "parse_address",
    "private_file",
    "read_toml",
    "remote_address",
]

#: The largest configuration file read (a TOML bomb is not a configuration).
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass
class Config(NodeConfig):
    """The library's :class:`~commonsync.node.config.NodeConfig`, read from and written to
    the daemon's TOML file."""

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
            tomli_w.dump(_with_paused(self, self._to_dict()), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> Config:
        discovery = _table(raw.get("discovery", {}), "discovery")
        config = cls(
            name=_typed(raw.get("name", ""), str, "name"),
            listen=_typed(raw.get("listen", f"0.0.0.0:{DEFAULT_PORT}"), str, "listen"),
            rescan_interval=_number(raw.get("rescan_interval", 3600), "rescan_interval"),
            max_deleted_share=_number(raw.get("max_deleted_share", 0.5), "max_deleted_share"),
            min_free=str(_typed(raw.get("min_free", "1%"), (str, int, float), "min_free")),
            discovery_enabled=_typed(discovery.get("enabled", True), bool, "discovery.enabled"),
            discovery_interfaces=[
                _typed(i, str, "discovery.interfaces")
                for i in _typed(discovery.get("interfaces", []), list, "discovery.interfaces")
            ],
        )
        config.max_send_rate = _rate(raw, "max_send_rate", "")
        config.max_receive_rate = _rate(raw, "max_receive_rate", "")
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
                    reported_name=_typed(
                        entry.get("reported_name", ""), str, "devices.reported_name"
                    ),
                    max_send_rate=_rate(entry, "max_send_rate", "devices."),
                    max_receive_rate=_rate(entry, "max_receive_rate", "devices."),
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
                    _retention(_table(entry.get("versions", {}), "folders.versions")),
                )
            )
        _read_paused(raw, config)
        return config

    def _to_dict(self) -> dict[str, Any]:
        rates = {
            k: format_rate(v)
            for k, v in (
                ("max_send_rate", self.max_send_rate),
                ("max_receive_rate", self.max_receive_rate),
            )
            if v
        }
        return {
            "name": self.name,
            **rates,
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
                {
                    "id": str(d.device_id),
                    "name": d.name,
                    "addresses": d.addresses,
                    **({"reported_name": d.reported_name} if d.reported_name else {}),
                    **({"max_send_rate": format_rate(d.max_send_rate)} if d.max_send_rate else {}),
                    **(
                        {"max_receive_rate": format_rate(d.max_receive_rate)}
                        if d.max_receive_rate
                        else {}
                    ),
                }
                for d in self.devices
            ],
            "folders": [
                {
                    "id": f.folder_id.hex(),
                    "label": f.label,
                    "path": str(f.path),
                    "devices": [str(d) for d in f.devices],
                    **_retention_table(f.versions),
                }
                for f in self.folders
            ],
        }


def _read_paused(raw: dict[str, Any], config: NodeConfig) -> None:
    """``paused = true`` in a ``[[devices]]`` or ``[[folders]]`` table (`device pause`,
    `folder pause`), read after the tables themselves (same order, same count)."""
    for kind, items in _pausable(config):  # same order and count as the tables read
        for entry, item in zip(raw.get(kind, []), items, strict=True):
            item.paused = _typed(entry.get("paused", False), bool, f"{kind}.paused")


def _pausable(config: NodeConfig) -> list[tuple[str, Sequence[DeviceConfig | FolderConfig]]]:
    return [("devices", config.devices), ("folders", config.folders)]


def _with_paused(config: NodeConfig, table: dict[str, Any]) -> dict[str, Any]:
    """``table`` (what :meth:`Config._to_dict` made) with ``paused = true`` in the tables
    of paused devices and folders; nothing for the others (the file stays short)."""
    for kind, items in _pausable(config):
        for entry, item in zip(table[kind], items, strict=True):
            if item.paused:
                entry["paused"] = True
    return table


def _retention(table: dict[str, Any]) -> RetentionPolicy:
    """A folder's ``[folders.versions]`` table (every key optional)."""
    unknown = set(table) - {"keep", "max_age", "max_size"}
    if unknown:
        raise ValueError(f"folders.versions has no {', '.join(sorted(unknown))} setting")
    keep = _typed(table.get("keep", "staggered"), str, "folders.versions.keep")
    if keep not in ("staggered", "all"):
        raise ValueError(f'folders.versions.keep is "staggered" or "all", not {keep!r}')
    max_age = parse_age(
        _typed(table.get("max_age", DEFAULT_MAX_AGE), (str, int, float), "folders.versions.max_age")
    )
    max_size = str(
        _typed(table.get("max_size", DEFAULT_MAX_SIZE), (str, int), "folders.versions.max_size")
    )
    return RetentionPolicy(staggered=keep == "staggered", max_age=max_age, max_size=max_size)


def _retention_table(policy: RetentionPolicy) -> dict[str, Any]:
    """``{"versions": {...}}`` for a policy other than the default, else nothing (the file
    stays as short as the defaults allow)."""
    if policy == RetentionPolicy():
        return {}
    age = f"{policy.max_age // DAY}d" if policy.max_age % DAY == 0 else policy.max_age
    return {
        "versions": {
            "keep": "staggered" if policy.staggered else "all",
            "max_age": age,
            "max_size": policy.max_size,
        }
    }


def _rate(table: dict[str, Any], key: str, prefix: str) -> int:
    """A bandwidth limit (``"500 KiB/s"``, bytes per second, or ``"none"``), 0 if absent."""
    value = _typed(table.get(key, 0), (str, int), prefix + key)
    try:
        return parse_rate(value)
    except InvalidRequestError as exc:
        raise ValueError(f"{prefix}{key}: {exc}") from None


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
