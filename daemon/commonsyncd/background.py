"""Getting a device ready for ``commonsync join`` in one command: set it up if it is not, and
start the daemon in the background if none runs (a person joining a folder should not need
to know that a daemon exists, let alone start one in another terminal first)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from commonsync import CommonsyncError, DeviceIdentity

from .config import Config
from .control import ControlClient, DaemonNotRunningError
from .home import Home
from .output import Output

#: How long the daemon may take to answer on its socket once started.
START_TIMEOUT = 30.0


class DaemonStartError(CommonsyncError):
    """The daemon started in the background stopped, or did not answer in time."""


def set_up(
    home: Home,
    *,
    name: str = "",
    listen: str = "0.0.0.0:22070",
    discovery: bool = True,
    interfaces: list[str] | None = None,
) -> DeviceIdentity:
    """Create this device's identity and configuration in ``home`` (not set up yet)."""
    home.make_dirs()
    identity = DeviceIdentity.generate()
    identity.save(home.identity_file)
    config = Config(
        name=name or socket.gethostname(),
        listen=listen,
        discovery_enabled=discovery,
        discovery_interfaces=interfaces or [],
    )
    config.save(home.config_file)
    return identity


def log_file(home: Home) -> Path:
    """Where a daemon started in the background writes its log."""
    return home.data_dir / "daemon.log"


def ensure_running(home: Home, home_argument: Path | None, out: Output) -> None:
    """Set the device up if it is not, and start its daemon if none answers; say what was
    done, so that the person knows a daemon now runs and where its log is."""
    if not home.initialised:
        identity = set_up(home)
        out.line(f"set up this device in {home.config_dir} (its ID: {identity.device_id})")
    client = ControlClient(home.socket_path, timeout=5)
    try:
        client.request("GET", "/status")
        return
    except DaemonNotRunningError:
        pass
    log = log_file(home)
    argv = [sys.executable, "-m", "commonsyncd"]
    if home_argument is not None:
        argv += ["--home", str(home_argument)]
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,  # it outlives this command and the terminal's Ctrl-C
            env=os.environ.copy(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DaemonStartError(
                f"the daemon stopped as it started (exit code {process.returncode}); "
                f"its log is {log}"
            )
        try:
            client.request("GET", "/status")
        except DaemonNotRunningError:
            time.sleep(0.1)
            continue
        out.line(
            f"started the sync daemon in the background (process {process.pid}, log {log}); "
            "it keeps the folder in sync until it is stopped"
        )
        return
    process.terminate()
    raise DaemonStartError(f"the daemon did not answer within {START_TIMEOUT:g} s; see {log}")
