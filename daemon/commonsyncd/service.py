"""``commonsync service install``: the daemon (or a relay) as a systemd service.

The units ship inside the package (``commonsyncd/systemd/``), so that an installed commonsync
has them without a clone. Installing one writes it where systemd looks, with ``ExecStart``
set to the programs this very installation runs (a virtual environment's ``bin/`` included):
a unit that names a ``commonsyncd`` which is not there is the usual way such a service fails.
Nothing here runs ``systemctl``: the command prints what to run, so that enabling a service
stays the person's decision (and the tests can check the file without a systemd).

Three units:

- ``user``: ``commonsyncd`` as a user service (``~/.config/systemd/user/commonsyncd.service``),
  started at login; the default.
- ``system``: ``commonsyncd`` as a system service running as one user with an explicit
  ``--home``, for a machine that syncs with nobody logged in.
- ``relay``: a community relay (``commonsync relay serve``) as a system service.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from commonsync import CommonsyncError

#: The shipped unit of each kind: (its file in the package, the name it is installed under).
UNITS = {
    "user": ("user/commonsyncd.service", "commonsyncd.service"),
    "system": ("system/commonsyncd.service", "commonsyncd.service"),
    "relay": ("system/commonsync-relay.service", "commonsync-relay.service"),
}
#: The relay unit's user and home (its comments say how to create them).
RELAY_USER = "commonsync-relay"
RELAY_HOME = "/var/lib/commonsync-relay"


class ServiceError(CommonsyncError):
    """The unit cannot be written as asked; the message says why, the hint what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Installed:
    path: Path
    exec_start: str
    #: "written", "replaced" or "unchanged".
    outcome: str
    #: What to run next, one command a line.
    commands: list[str]


def shipped_unit(kind: str) -> str:
    """The text of the shipped unit of ``kind`` (a key of :data:`UNITS`)."""
    return resources.files("commonsyncd").joinpath("systemd", UNITS[kind][0]).read_text("utf-8")


def unit_directory(kind: str) -> Path:
    """Where systemd reads units of ``kind`` from (the user's, or the system's own)."""
    if kind == "user":
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "systemd" / "user"
    return Path("/etc/systemd/system")


def program(name: str) -> list[str]:
    """How to run ``name`` (``commonsyncd``, ``commonsync``) of this installation: the script
    beside the running Python (a virtual environment's or the system's ``bin/``), else the
    module through this Python."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    module = "commonsyncd" if name == "commonsyncd" else "commonsyncd.cli"
    return [str(Path(sys.executable).absolute()), "-m", module]


def quote(argument: str) -> str:
    """``argument`` as one word of a systemd command line: ``%`` and ``$`` would be expanded
    by systemd, spaces would split it, so they are escaped and the word quoted if needed."""
    text = argument.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text) or not text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render(kind: str, *, home: Path | None = None, user: str = "") -> tuple[str, str]:
    """The unit of ``kind`` for this installation, and its ExecStart command line.

    ``home`` is the daemon's ``--home`` (required for ``system``); ``user`` the account a
    ``system`` unit runs as."""
    if kind == "relay":
        argv = [*program("commonsync"), "--home", RELAY_HOME, "relay", "serve"]
    else:
        argv = program("commonsyncd")
        if home is not None:
            argv += ["--home", str(home.expanduser().absolute())]
    exec_start = " ".join(quote(a) for a in argv)
    text = _set(shipped_unit(kind), "ExecStart", exec_start)
    if kind == "system":
        text = _set(text, "User", user)
    return text, exec_start


def _set(unit: str, key: str, value: str) -> str:
    """``unit`` with its one ``key=`` line (outside comments) set to ``value``."""
    pattern = re.compile(rf"^{key}=.*$", re.MULTILINE)
    assert len(pattern.findall(unit)) == 1, f"the shipped unit has one {key}= line"
    return pattern.sub(lambda _m: f"{key}={value}", unit)


def install(
    kind: str,
    *,
    directory: Path | None = None,
    home: Path | None = None,
    user: str = "",
    force: bool = False,
) -> Installed:
    """Write the unit of ``kind`` into ``directory`` (default: :func:`unit_directory`).

    An existing unit with other contents (an older path, the person's own edits) is kept
    unless ``force``: :class:`ServiceError` says so."""
    if kind == "system":
        if home is None:
            raise ServiceError(
                "a system service needs the daemon's home given with --home",
                "e.g. `commonsync service install --system --user NAME --home "
                "/var/lib/commonsync`: without a login session the daemon and your commands "
                "must be told where the control socket is",
            )
        if not user:
            raise ServiceError(
                "a system service needs the user it runs as",
                "give --user NAME (the account that owns the folders and the home)",
            )
    text, exec_start = render(kind, home=home, user=user)
    target = (directory or unit_directory(kind)) / UNITS[kind][1]
    outcome = "written"
    if target.exists():
        try:
            current = target.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ServiceError(f"cannot read {target}: {exc}") from None
        if current == text:
            outcome = "unchanged"
        elif not force:
            raise ServiceError(
                f"{target} exists with other contents (an older installation, or edits of yours)",
                "compare it with `commonsync service show`, then run again with --force to "
                "replace it",
            )
        else:
            outcome = "replaced"
    if outcome != "unchanged":
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_text(text, "utf-8")
            temporary.chmod(0o644)
            temporary.replace(target)
        except PermissionError:
            raise ServiceError(
                f"no permission to write {target}",
                "a system unit is installed as root: run the same command with sudo"
                if kind != "user"
                else "check the permissions of that directory",
            ) from None
        except OSError as exc:
            raise ServiceError(f"cannot write {target}: {exc.strerror or exc}") from None
    return Installed(target, exec_start, outcome, next_commands(kind, outcome))


def next_commands(kind: str, outcome: str = "written") -> list[str]:
    """What to run after installing a unit of ``kind``."""
    name = UNITS[kind][1].removesuffix(".service")
    systemctl = "systemctl --user" if kind == "user" else "systemctl"
    if outcome == "unchanged":
        return [f"{systemctl} enable --now {name}"]
    restart = [f"{systemctl} restart {name}"] if outcome == "replaced" else []
    return [f"{systemctl} daemon-reload", f"{systemctl} enable --now {name}", *restart]
