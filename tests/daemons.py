"""Real daemons for end-to-end tests: each a ``commonsyncd`` process with its own ``--home``,
driven with the real ``commonsync`` command, as a person would."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from commonsyncd.control import ControlClient, DaemonNotRunningError
from commonsyncd.demo import tree

__all__ = ["LOOPBACK", "Device", "pair_and_share", "tree", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
#: ``commonsync init`` options for a daemon reached only on loopback: an ephemeral port, no
#: LAN discovery (whose announcements would leave this machine).
LOOPBACK = ("--listen", "127.0.0.1:0", "--no-discovery")
#: Bound on any single step, so that a hang fails the test instead of eating the CI budget.
STEP = 60.0


def command(name: str) -> list[str]:
    """The installed executable if there is one (as a person runs it), else the module."""
    executable = BIN / name
    if executable.exists():
        return [str(executable)]
    module = "commonsyncd.cli" if name == "commonsync" else "commonsyncd"
    return [sys.executable, "-m", module]


def run_commonsync(
    home: Path, args: Sequence[str], *, on: str, prefix: Sequence[str] = (), check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``commonsync --home HOME ARGS`` as a person types it; with ``check``, a non-zero exit
    fails the test with the command's output (``on`` names who ran it)."""
    done = subprocess.run(
        [*prefix, *command("commonsync"), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=STEP,
        env=ENV,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"commonsync {' '.join(args)} on {on} exited {done.returncode}:\n"
            f"{done.stdout}{done.stderr}"
        )
    return done


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STEP) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.02)
    return time.monotonic() - started


class Device:
    """One device: a home directory, a daemon process (when started) and the CLI."""

    def __init__(self, base: Path, name: str, *, prefix: Sequence[str] = ()) -> None:
        self.name = name
        self.home = base / f"home-{name}"
        self.folder = base / f"{name}-files"
        self.log = base / f"{name}.log"
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", NS] to run inside a namespace
        self.process: subprocess.Popen[bytes] | None = None
        self.device_id = ""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_commonsync(self.home, args, on=self.name, prefix=self.prefix, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def init(self, *options: str) -> str:
        self.run("init", "--name", self.name, *options)
        self.device_id = self.json("id")["device_id"]
        return self.device_id

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.home / "control.sock")

    def status(self) -> dict[str, Any]:
        return self.client.request("GET", "/status")  # type: ignore[no-any-return]

    def start(self, *, nofile: int | None = None) -> None:
        """Start the daemon; ``nofile`` caps the file descriptors it may open (soft and hard
        limit, through util-linux's ``prlimit``), so that a test can exhaust them with a few
        hundred sockets."""
        limit = [] if nofile is None else ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, *limit, *command("commonsyncd"), "--home", str(self.home)],
                stdout=log,
                stderr=log,
                env=ENV,
            )
        wait_for(self._answers, f"the daemon of {self.name} to start")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon of {self.name} exited:\n{self.log.read_text()}")
        try:
            self.status()
        except DaemonNotRunningError:
            return False
        return True

    def stop(self) -> int:
        """SIGTERM, and the daemon's exit code (it must stop promptly)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def folder_state(self, label: str) -> dict[str, Any]:
        return next(f for f in self.status()["folders"] if f["label"] == label)

    def connected_to(self, other: Device) -> bool:
        return any(d["connected"] for d in self.status()["devices"] if d["id"] == other.device_id)


def pair_and_share(a: Device, b: Device, label: str = "shared") -> None:
    """a and b accept each other (b dials a), a adds its folder and offers it, b accepts."""
    a.run("device", "add", b.device_id, "--name", b.name)
    port = a.status()["port"]
    b.run("device", "add", a.device_id, "--name", a.name, "--address", f"127.0.0.1:{port}")
    wait_for(lambda: b.connected_to(a), f"{b.name} to connect to {a.name}")
    a.folder.mkdir(exist_ok=True)
    a.run("folder", "add", str(a.folder), "--label", label)
    a.run("share", label, b.device_id)
    wait_for(lambda: bool(b.status()["offered_folders"]), f"the offer to reach {b.name}")
    b.run("folder", "accept", label, str(b.folder))


def in_a_terminal(
    device: Device, *args: str, term: str = "xterm", columns: int = 200, timeout: float = STEP
) -> tuple[bytes, int]:
    """What ``commonsync ARGS`` writes to a terminal (a pty of ``columns`` columns, ``TERM``
    set to ``term``), and its exit code; a command still running after ``timeout`` fails the
    test."""
    main, child = pty.openpty()
    env = {**ENV, "TERM": term, "COLUMNS": str(columns), "LINES": "50"}
    argv = [*command("commonsync"), "--home", str(device.home), *args]
    process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            elif process.poll() is not None:
                break
        else:
            raise AssertionError(f"commonsync {' '.join(args)} did not finish in {timeout:g} s")
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
        code = process.wait(timeout=10)
    return bytes(out), code
