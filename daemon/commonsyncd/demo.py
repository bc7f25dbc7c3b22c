"""``commonsync demo``: two devices on this machine, paired, syncing a folder.

It does what two people would do on two machines, with the real daemon and the real control
API: set up two devices (each with its own home: identity, configuration, index), start a
daemon for each (separate processes, listening on 127.0.0.1, LAN discovery off so that
nothing is announced beyond this machine), pair them, add a folder on the first and offer it
to the second, accept it there, then write, edit and delete files on either side and show
each change arriving on the other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .control import ControlClient, DaemonNotRunningError
from .home import Home
from .logs import as_text

#: How long the demo waits for one step before saying it failed.
STEP_TIMEOUT = 60.0


class DemoError(Exception):
    pass


class Device:
    """One demo device: its home, folder, daemon process and control client."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.home = Home.at(base / f"home-{name}")
        self.folder = base / f"{name}-files"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = base / f"{name}.log"
        self.device_id = ""

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "commonsyncd.cli", "--home", str(self.home.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(
                f"`commonsync {' '.join(args)}` on {self.name} failed: {done.stderr.strip()}"
            )
        return done.stdout.strip()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "commonsyncd", "--home", str(self.home.config_dir)],
                stdout=log,
                stderr=log,
            )
        self.client = ControlClient(self.home.socket_path)
        wait_for(lambda: self._answers(), f"the daemon of {self.name} to start")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"the daemon of {self.name} exited (its log follows)")
        try:
            self.client.request("GET", "/status")
        except DaemonNotRunningError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        return self.client.request("GET", "/status")  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise DemoError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


@contextlib.contextmanager
def demo_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.absolute()
        return
    with tempfile.TemporaryDirectory(prefix="commonsync-demo-") as temp:
        yield Path(temp)


def run_demo(keep: Path | None, console: Console) -> int:
    with demo_directory(keep) as base:
        alice, bob = Device("alice", base), Device("bob", base)
        failure: DemoError | None = None
        try:
            _run(alice, bob, base, console)
        except DemoError as exc:
            failure = exc
        finally:
            for device in (alice, bob):
                device.stop()
        if failure is not None:
            console.print(f"[red]demo failed:[/red] {escape(str(failure))}")
        if keep is not None:
            console.print(
                f"Everything is kept in {base}; the daemons' logs: {alice.log}, {bob.log}"
            )
        elif failure is not None:
            # The logs go with the temporary directory: show their ends while they exist.
            for device in (alice, bob):
                _show_log_end(device, console)
            console.print("(`commonsync demo --dir DIR` keeps the homes, folders and logs)")
        else:
            console.print(
                "(everything, the daemons' logs included, was in a temporary directory, now "
                "removed; `commonsync demo --dir DIR` keeps it)"
            )
    return 1 if failure is not None else 0


def _show_log_end(device: Device, console: Console, lines: int = 15) -> None:
    try:
        tail = device.log.read_text("utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return
    if tail:
        console.print(f"The end of {device.name}'s daemon log:", markup=False)
        for line in tail:
            console.print(as_text(line), markup=False, highlight=False)


def _run(alice: Device, bob: Device, base: Path, console: Console) -> None:
    step = console.rule
    step("1. Two devices, each with its own identity and home")
    for device in (alice, bob):
        device.cli("init", "--name", device.name, "--listen", "127.0.0.1:0", "--no-discovery")
        device.device_id = device.cli("id")
        console.print(
            f"{device.name}: device ID {device.device_id}  (home {device.home.config_dir})"
        )

    step("2. Start both daemons")
    for device in (alice, bob):
        device.start()
        console.print(
            f"{device.name}: daemon running, pid {device.process.pid if device.process else '?'}, "
            f"port {device.status()['port']}"
        )

    step("3. Pair them: each accepts the other's ID")
    alice_port = alice.status()["port"]
    alice.cli("device", "add", bob.device_id, "--name", "bob")
    bob.cli(
        "device", "add", alice.device_id, "--name", "alice", "--address", f"127.0.0.1:{alice_port}"
    )
    console.print(f"bob dials alice at 127.0.0.1:{alice_port} (on a LAN, discovery finds it)")
    seconds = wait_for(
        lambda: any(d["connected"] for d in bob.status()["devices"]), "bob to connect to alice"
    )
    console.print(
        f"connected in {seconds:.2f} s, through a Noise XX channel where each proved its device key"
    )

    step("4. Alice shares a folder; bob accepts it")
    alice.folder.mkdir()
    (alice.folder / "agenda.txt").write_text("Rehearsal: Thursday 19:00\n")
    (alice.folder / "scores").mkdir()
    (alice.folder / "scores" / "requiem.pdf").write_bytes(os.urandom(8 * 1024 * 1024))
    console.print(alice.cli("folder", "add", str(alice.folder), "--label", "choir"))
    console.print(alice.cli("share", "choir", bob.device_id))
    wait_for(lambda: bool(bob.status()["offered_folders"]), "the offer to reach bob")
    console.print(bob.cli("folder", "accept", "choir", str(bob.folder)))
    seconds = wait_for(lambda: _same(alice.folder, bob.folder), "bob to receive the folder")
    console.print(f"bob has alice's 2 files and 1 directory, {seconds:.2f} s after accepting")

    step("5. Changes on either side arrive on the other")
    changes: list[tuple[str, Device, Device, Callable[[], object]]] = [
        (
            "alice writes minutes.txt",
            alice,
            bob,
            lambda: (alice.folder / "minutes.txt").write_text("We sang well.\n"),
        ),
        (
            "bob edits agenda.txt",
            bob,
            alice,
            lambda: (bob.folder / "agenda.txt").write_text("Rehearsal: Friday 18:30\n"),
        ),
        (
            "alice deletes scores/requiem.pdf",
            alice,
            bob,
            lambda: (alice.folder / "scores" / "requiem.pdf").unlink(),
        ),
    ]
    for what, _source, _target, change in changes:
        started = time.monotonic()
        change()
        wait_for(lambda: _same(alice.folder, bob.folder), what)
        console.print(f"{what}: the other side has it {time.monotonic() - started:.2f} s later")
    deleted = list((alice.folder.parent / "bob-files" / ".commonsync" / "versions").rglob("*.pdf"))
    if deleted:
        console.print("bob keeps the deleted file in bob-files/.commonsync/versions/")

    step("6. Status")
    # Where the logs are is said once, at the end (they go with a temporary directory).
    status = bob.cli("status").splitlines()
    console.print("\n".join(line for line in status if not line.startswith("log: ")), markup=False)
    console.print("To do the same on two machines, see the README.")


def _same(a: Path, b: Path) -> bool:
    return tree(a) == tree(b)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root`` but the engine's own: file bytes, or None for others."""
    found: dict[str, bytes | None] = {}
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(".commonsync"):
            continue
        try:
            found[relative] = path.read_bytes() if path.is_file() else None
        except OSError:
            found[relative] = b"?"
    return found
