"""Real daemons for the reliability scenarios: two or three ``commonsyncd`` processes sharing a
folder, with the faults a machine inflicts on them (kill -9, SIGTERM, restart) and a bounded
wait for convergence.

Built on ``tests.daemons`` (each device its own ``--home``, driven with the real ``commonsync``
command). Each daemon listens on 127.0.0.1 only, LAN discovery off, on a port picked free at
``init`` rather than ``127.0.0.1:0``: a daemon killed and started again must be reachable at
the address its peers know, and every device knows every other's address, so either side of a
pair can be the one that restarts.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from commonsync import CommonsyncError

from .audit import contents, listing

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the daemons harness lives with the tests
    sys.path.insert(0, str(ROOT))

from tests.daemons import Device, wait_for  # noqa: E402

__all__ = ["LABEL", "Cluster", "DaemonFailure", "Device", "free_port", "wait_for"]

LABEL = "shared"
#: Longest a SIGTERM'd daemon may take to exit before it is killed (and that is reported).
STOP_TIMEOUT = 20.0


class DaemonFailure(Exception):
    """A daemon exited, would not start or would not stop: the message says which and how."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the daemon binds it with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Convergence:
    """The outcome of :meth:`Cluster.converge`: seconds taken, or why not."""

    seconds: float | None
    reason: str = ""


class Cluster:
    """Devices named ``names`` under ``base``, initialised and started; :meth:`share` pairs
    them all and shares one folder from the first. :meth:`close` kills whatever still runs."""

    def __init__(self, base: Path, names: Sequence[str] = ("a", "b")) -> None:
        self.base = base
        self.devices = [Device(base, name) for name in names]
        self.ports: dict[str, int] = {}
        self.faults = 0

    def __getitem__(self, name: str) -> Device:
        return next(d for d in self.devices if d.name == name)

    def init(self) -> None:
        for device in self.devices:
            port = free_port()
            self.ports[device.name] = port
            device.init("--listen", f"127.0.0.1:{port}", "--no-discovery")

    def start(self) -> None:
        for device in self.devices:
            self.start_one(device)

    def start_one(self, device: Device) -> None:
        try:
            device.start()
        except AssertionError as exc:  # the harness's bounded wait, or the daemon exited
            raise DaemonFailure(f"{device.name} did not start: {_tail(exc)}") from None

    def share(self, label: str = LABEL, *, via: dict[str, int | None] | None = None) -> None:
        """Every device adds every other with its address (``via`` overrides the port peers
        dial a device at, e.g. a proxy's, or with None gives them no address for it); the
        first adds its folder and shares it; the others accept."""
        first, *others = self.devices
        routes = via or {}
        for device in self.devices:
            for other in self.devices:
                if other is device:
                    continue
                port = routes.get(other.name, self.ports[other.name])
                address = [] if port is None else ["--address", f"127.0.0.1:{port}"]
                device.run("device", "add", other.device_id, "--name", other.name, *address)
        for other in others:
            wait_for(partial(other.connected_to, first), f"{other.name} to connect")
        first.folder.mkdir(parents=True, exist_ok=True)
        first.run("folder", "add", str(first.folder), "--label", label)
        for other in others:
            first.run("share", label, other.device_id)
        for other in others:
            wait_for(partial(_offered, other), f"the offer to reach {other.name}")
            other.run("folder", "accept", label, str(other.folder))

    # -- faults -------------------------------------------------------------------------------

    def alive(self, device: Device) -> bool:
        return device.process is not None and device.process.poll() is None

    def kill9(self, device: Device) -> None:
        """SIGKILL, as a crash or a power cut of the process (the page cache survives)."""
        self.faults += 1
        device.kill()

    def terminate(self, device: Device, *, fault: bool = True) -> None:
        """SIGTERM, waiting for the daemon to exit; one that does not within
        :data:`STOP_TIMEOUT` is killed and reported. ``fault``: count it as one."""
        self.faults += fault
        assert device.process is not None
        device.process.send_signal(signal.SIGTERM)
        try:
            device.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            device.kill()
            raise DaemonFailure(
                f"{device.name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM"
            ) from None

    def exited(self) -> list[str]:
        """Daemons that exited by themselves (not stopped by a scenario), with their codes."""
        return [
            f"{d.name} exited with code {d.process.returncode}"
            for d in self.devices
            if d.process is not None and d.process.poll() is not None
        ]

    def close(self) -> None:
        for device in self.devices:
            with contextlib.suppress(Exception):
                device.kill()

    # -- convergence --------------------------------------------------------------------------

    def state(self, device: Device, label: str = LABEL) -> tuple[str, str]:
        """The folder's state ("up to date", "syncing", ...) and its summary in words."""
        try:
            folder = device.folder_state(label)
        except (CommonsyncError, OSError, StopIteration, KeyError, ValueError) as exc:
            return "no answer", f"no answer ({type(exc).__name__})"
        return str(folder["state"]), str(folder["summary"])

    def converge(
        self,
        timeout: float,
        label: str = LABEL,
        *,
        running: Callable[[], bool] | None = None,
    ) -> Convergence:
        """Wait (at most ``timeout`` s) until every device's folder holds the same files with
        the same contents (outside ``.commonsync/``, temporary files aside) and every daemon
        says "up to date". Stops early if a daemon exits."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            gone = self.exited()
            if gone or (running is not None and not running()):
                return Convergence(None, "; ".join(gone) or "stopped")
            views = [listing(d.folder) for d in self.devices]
            states = [self.state(d, label) for d in self.devices]
            if all(v == views[0] for v in views) and all(s[0] == "up to date" for s in states):
                exact = [contents(d.folder) for d in self.devices]
                if all(e == exact[0] for e in exact):
                    return Convergence(time.monotonic() - started)
            if time.monotonic() > deadline:
                return Convergence(None, self._difference(views, states, timeout))
            time.sleep(0.25)

    def _difference(
        self, views: list[dict[str, int]], states: list[tuple[str, str]], timeout: float
    ) -> str:
        said = ", ".join(f"{d.name}: {s[1]}" for d, s in zip(self.devices, states, strict=True))
        first = views[0]
        differing = sorted(
            {p for v in views[1:] for p in set(first) ^ set(v)}
            | {p for v in views[1:] for p in set(first) & set(v) if first[p] != v[p]}
        )
        detail = f"; differing: {', '.join(differing[:5])}" if differing else ""
        return f"not converged after {timeout:.0f} s ({said}){detail}"


def _offered(device: Device) -> bool:
    return bool(device.status()["offered_folders"])


def _tail(exc: BaseException, lines: int = 6) -> str:
    text = str(exc).strip().splitlines()
    return " | ".join(text[:1] + text[-lines:]) if len(text) > lines else " | ".join(text)
