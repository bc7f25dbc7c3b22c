"""A community relay's configuration: a TOML file its hoster may read and edit, no secret.

It lives beside the relay's key (``relay.toml`` and ``relay.key`` in the home, see
:mod:`commonsyncd.home`); ``commonsync relay allow ID`` adds a member. A running relay reads
the file again when it changes, so a member added while it runs is admitted at once::

    listen = "0.0.0.0:22071"
    open = false                     # true: any device may use this relay
    members = ["ZS5WX2N-43CA4PY-…"]  # device IDs admitted when it is not open
    delegates = ["QX7…"]             # members that vouch for more (their folders' members)

    [limits]
    max_control_connections = 1000   # devices connected at once
    max_sessions = 1000              # sessions (waiting or spliced) at once, in all
    max_sessions_per_device = 16     # sessions one device takes part in at once
    connects_per_minute = 60         # invitations a device's requests cause, on average ...
    connect_burst = 20               # ... and in a burst (refused requests do not count)
    join_timeout = 10.0              # seconds a token waits for the second device
    session_bytes_per_second = 0     # per direction of each session; 0: no limit

A *delegate* (``commonsync relay allow --delegate ID``) is a member whose device may tell the
relay which devices it vouches for (``Vouch``, SPEC.md §14.1): an association's admin device,
so that the members its folders admit can use the relay without the hoster adding each one.

The defaults are sized for a small association's server: a thousand members online at once
cost a file descriptor and a few kilobytes each; a session costs two descriptors and a 64 KiB
copy buffer per direction while bytes flow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from commonsync import DeviceId
from commonsync.errors import DeviceIdError
from commonsync.relay.wire import DEFAULT_RELAY_PORT

from ..config import (
    ConfigError,
    _describe,
    _number,
    _table,
    _typed,
    parse_address,
    private_file,
    read_toml,
)


@dataclass
class RelayLimits:
    max_control_connections: int = 1000
    max_sessions: int = 1000
    max_sessions_per_device: int = 16
    connects_per_minute: float = 60.0
    connect_burst: int = 20
    join_timeout: float = 10.0
    session_bytes_per_second: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RelayLimits:
        limits = cls()
        known = {f.name: f for f in fields(cls)}
        for name, value in raw.items():
            spec = known.get(name)
            if spec is None:
                raise ValueError(f"limits.{name} is not a known limit ({', '.join(known)})")
            number = _number(value, f"limits.{name}")
            if number < 0 or (number == 0 and name != "session_bytes_per_second"):
                raise ValueError(f"limits.{name} must be positive")
            setattr(limits, name, number if spec.type == "float" else int(number))
        return limits


@dataclass
class RelayServerConfig:
    listen: str = f"0.0.0.0:{DEFAULT_RELAY_PORT}"
    open: bool = False
    members: list[DeviceId] = field(default_factory=list)
    delegates: list[DeviceId] = field(default_factory=list)
    limits: RelayLimits = field(default_factory=RelayLimits)

    def admits(self, device: DeviceId) -> bool:
        """Admitted by the file itself: open, a member or a delegate (devices vouched for
        are the server's to add)."""
        return self.open or device in self.members or device in self.delegates

    @classmethod
    def load(cls, path: Path) -> RelayServerConfig:
        raw = read_toml(path, missing="run `commonsync relay id` first")
        try:
            config = cls(
                listen=_typed(raw.get("listen", cls.listen), str, "listen"),
                open=_typed(raw.get("open", False), bool, "open"),
                members=[
                    DeviceId.parse(_typed(m, str, "members"))
                    for m in _typed(raw.get("members", []), list, "members")
                ],
                delegates=[
                    DeviceId.parse(_typed(m, str, "delegates"))
                    for m in _typed(raw.get("delegates", []), list, "delegates")
                ],
                limits=RelayLimits.from_dict(_table(raw.get("limits", {}), "limits")),
            )
            parse_address(config.listen, default_port=DEFAULT_RELAY_PORT)
        except (TypeError, ValueError, DeviceIdError, ConfigError) as exc:
            raise ConfigError(f"{path}: {_describe(exc)}") from None
        return config

    def save(self, path: Path) -> None:
        """Write the whole file anew, then rename it into place (never half a config)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_suffix(".tmp")
        with private_file(temp) as stream:
            tomli_w.dump(
                {
                    "listen": self.listen,
                    "open": self.open,
                    "members": [str(m) for m in self.members],
                    "delegates": [str(d) for d in self.delegates],
                    "limits": {f.name: getattr(self.limits, f.name) for f in fields(RelayLimits)},
                },
                stream,
            )
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
