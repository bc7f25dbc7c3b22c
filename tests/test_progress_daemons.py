"""Honest progress and status (issue 16), with real daemons as separate processes driven by
the ``commonsync`` command: the bytes left move during one large file over a slow link; the
sender sees its peer behind until it has the file, and ``status --wait`` on the sender
returns only then; ``--wait`` on one device that is not connected times out with exit
code 1; and each problem that stops a folder from finishing, made real (a device that
refuses this one, a relay that refuses it, a directory the daemon cannot read, a full disk),
is one sentence with a hint in ``status``, which exits with 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemons import (
    ENV,
    LOOPBACK,
    ROOT,
    Device,
    command,
    in_a_terminal,
    pair_and_share,
    tree,
    wait_for,
)
from tests.relays import RelayProcess
from tests.tmpfs import mounted_or_skip

pytestmark = pytest.mark.slow

#: The slow link's pace (bytes per second each way), and the large file: a few seconds of
#: transfer, so that status is read many times while it travels.
RATE = 1_000_000
LARGE = 6 * 1024 * 1024


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[tuple[Device, Device]]:
    a, b = Device(tmp_path, "alice"), Device(tmp_path, "bob")
    try:
        yield a, b
    finally:
        for device in (a, b):
            device.kill()


@pytest.fixture
def slow_link() -> Iterator[Callable[[int], int]]:
    """Starts a slow proxy (``tests/slowlink.py``, a process of its own) to a port; the
    proxy's port."""
    processes: list[subprocess.Popen[str]] = []

    def start(port: int) -> int:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.slowlink", str(port), str(RATE)],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        processes.append(process)
        assert process.stdout is not None
        return int(process.stdout.readline())

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


def _pair_through(a: Device, b: Device, port: int, label: str = "shared") -> None:
    """As :func:`pair_and_share`, but bob reaches alice at ``port`` (the slow link)."""
    a.run("device", "add", b.device_id, "--name", b.name)
    b.run("device", "add", a.device_id, "--name", a.name, "--address", f"127.0.0.1:{port}")
    wait_for(lambda: b.connected_to(a), "bob to connect to alice", timeout=120)
    a.folder.mkdir(exist_ok=True)
    a.run("folder", "add", str(a.folder), "--label", label)
    a.run("share", label, b.device_id)
    wait_for(lambda: bool(b.status()["offered_folders"]), "the offer to reach bob", timeout=120)
    b.run("folder", "accept", label, str(b.folder))


def test_bytes_left_move_within_one_large_file_and_the_sender_waits_for_its_peer(
    devices: tuple[Device, Device], slow_link: Callable[[int], int]
) -> None:
    """Over a slow link: bob's bytes left go down several times during one file, with a rate
    and a time left; alice sees bob behind by so many MB; alice's `status --wait`, started
    while bob is behind, returns (with 0) only once bob has the file."""
    a, b = devices
    for device in devices:
        device.init(*LOOPBACK)
        device.start()
    _pair_through(a, b, slow_link(a.status()["port"]))
    wait_for(lambda: b.folder_state("shared")["state"] == "up to date", "bob's first sync", 120)
    wait_for(
        lambda: [p["state"] for p in a.folder_state("shared")["peers"]] == ["up to date"],
        "alice to see bob up to date",
    )
    events = subprocess.Popen(
        [*command("commonsync"), "--home", str(b.home), "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    (a.folder / "large.bin").write_bytes(os.urandom(LARGE))

    def bob_behind() -> bool:
        (peer,) = a.folder_state("shared")["peers"]
        return not peer["caught_up"]

    wait_for(bob_behind, "alice to see bob behind", timeout=60)
    waiting = subprocess.Popen(
        [*command("commonsync"), "--home", str(a.home), "status", "--wait", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    lefts: list[int] = []
    seen: dict[str, object] = {}
    behind: list[str] = []
    try:

        def watch() -> bool:
            folder = b.folder_state("shared")
            if folder["files_left"] == 1:
                if not lefts or lefts[-1] != folder["bytes_left"]:
                    lefts.append(folder["bytes_left"])
                if folder["rate"] > 0 and folder["eta"] is not None:
                    seen["rate"], seen["summary"] = folder["rate"], folder["summary"]
            (peer,) = a.folder_state("shared")["peers"]
            if "behind this device" in peer["state"]:
                behind.append(peer["state"])
            if waiting.poll() is not None:
                # Alice's wait is over: bob has the whole file on disk by now.
                seen["file"] = (b.folder / "large.bin").exists() and (
                    b.folder / "large.bin"
                ).stat().st_size == LARGE
                return True
            return False

        wait_for(watch, "alice's status --wait to return", timeout=150)
        stdout, stderr = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
        waiting.wait(timeout=10)
        events.send_signal(signal.SIGINT)
        try:
            events_out, _ = events.communicate(timeout=20)
        finally:
            events.kill()
    # `commonsync events` said how many bytes were left on the way, and the file's size.
    progress = [line for line in events_out.splitlines() if "  progress  " in line]
    assert any("1 file, " in line and "MB left" in line for line in progress), events_out
    assert any("applied  large.bin  6.3 MB" in line for line in events_out.splitlines()), events_out
    assert waiting.returncode == 0, stdout + stderr
    assert seen["file"], "alice's status --wait returned before bob had the file"
    assert "waiting: shared: bob syncing" in stdout, stdout  # plain lines while waiting
    # One file, and what is left of it went down several times on its way (never up).
    assert len(lefts) >= 3, lefts
    assert lefts == sorted(lefts, reverse=True), lefts
    assert lefts[-1] < LARGE, lefts
    assert "MB/s, about" in str(seen.get("summary")), seen
    # Alice saw bob behind, by how much, while it caught up.
    assert any(" MB behind this device" in s for s in behind), behind
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the same files")
    # Within a report or two, nothing left either way.
    wait_for(
        lambda: [p["state"] for p in a.folder_state("shared")["peers"]] == ["up to date"],
        "alice to see bob up to date",
    )
    assert "up to date" in a.run("status").stdout


def test_wait_for_one_device_that_is_not_connected_times_out(
    devices: tuple[Device, Device],
) -> None:
    a, b = devices
    for device in devices:
        device.init(*LOOPBACK)
        device.start()
    pair_and_share(a, b)
    wait_for(lambda: b.folder_state("shared")["state"] == "up to date", "bob's first sync")
    assert a.run("status", "--wait", "--device", "bob", "--timeout", "30").returncode == 0
    assert b.stop() == 0
    wait_for(lambda: not a.connected_to(b), "alice to see bob gone")
    started = time.monotonic()
    done = a.run("status", "--wait", "--device", "bob", "--timeout", "2", check=False)
    assert done.returncode == 1
    assert "not in sync after 2 s: shared: bob is not connected" in done.stderr
    assert time.monotonic() - started >= 2
    # Plain lines while it waits (not a terminal).
    assert "waiting: shared: bob is not connected" in done.stdout
    # On a terminal, the progress is shown live while it waits (then the status, as usual).
    shown, code = _in_a_terminal(a, "status", "--wait", "--device", "bob", "--timeout", "3")
    assert code == 1
    assert "Waiting for" in shown, shown
    assert "shared: bob is not connected" in shown, shown
    assert "giving up in" in shown, shown
    # One folder: the same; an unknown folder or device is a usage error.
    done = a.run("status", "--wait", "--folder", "shared", "--timeout", "1", check=False)
    assert done.returncode == 1
    assert a.run("status", "--device", "carol", check=False).returncode == 2
    assert a.run("status", "--folder", "nothing", check=False).returncode == 2


def _in_a_terminal(device: Device, *args: str) -> tuple[str, int]:
    shown, code = in_a_terminal(device, *args)
    return shown.decode(errors="replace"), code


def test_a_device_that_refuses_this_one_is_a_problem(devices: tuple[Device, Device]) -> None:
    a, b = devices
    for device in devices:
        device.init(*LOOPBACK)
        device.start()
    # Alice adds bob; bob never adds alice: he refuses her.
    port = b.status()["port"]
    a.run("device", "add", b.device_id, "--name", "bob", "--address", f"127.0.0.1:{port}")
    wait_for(lambda: bool(a.status()["problems"]), "alice to see bob refuse her")
    done = a.run("status", check=False)
    assert done.returncode == 1
    short = b.device_id[:7]
    assert f"bob (device {short}) refuses this device" in done.stdout, done.stdout
    assert f"`commonsync device add {a.device_id}`" in done.stdout
    # Once bob accepts her, the problem is gone.
    b.run("device", "add", a.device_id)
    wait_for(lambda: a.connected_to(b), "alice to connect to bob", timeout=90)
    wait_for(lambda: not a.status()["problems"], "the problem to go")
    assert a.run("status").returncode == 0


def test_a_relay_that_refuses_this_device_is_a_problem(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    a = Device(tmp_path, "alice")
    try:
        relay.init()  # no members: it refuses alice
        relay.start()
        a.init(*LOOPBACK)
        a.start()
        a.run("relay", "add", relay.address)
        wait_for(lambda: bool(a.status()["problems"]), "alice to see the relay refuse her")
        done = a.run("status", check=False)
        assert done.returncode == 1
        assert f"relay {relay.relay_id[:7]}" in done.stdout
        assert "refuses this device: it is not one of its members" in done.stdout
        assert f"`commonsync relay allow {a.device_id}`" in done.stdout
    finally:
        a.kill()
        relay.kill()


#: Run as root without the capabilities that let root read anything: then ``chmod 000``
#: keeps the daemon out, as it keeps any other user out.
NO_READ_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_a_directory_the_daemon_cannot_read_is_a_problem(tmp_path: Path) -> None:
    probe = subprocess.run([*NO_READ_OVERRIDE, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr!r}")
    a = Device(tmp_path, "alice", prefix=NO_READ_OVERRIDE)
    secret = a.folder / "private"
    try:
        a.init(*LOOPBACK)
        a.start()
        secret.mkdir(parents=True)
        (secret / "diary.txt").write_text("mine\n")
        secret.chmod(0)
        a.run("folder", "add", str(a.folder), "--label", "docs")
        wait_for(lambda: bool(a.folder_state("docs")["problems"]), "alice to see the problem")
        done = a.run("status", check=False)
        assert done.returncode == 1
        assert "docs: 1 entry cannot be read in docs and is not synced, for example" in (
            done.stdout
        ), done.stdout
        assert "private (unreadable: Permission denied)" in done.stdout
        assert "give the daemon's user read access" in done.stdout
        # Readable again: the next scan syncs it, and the problem is gone.
        secret.chmod(0o755)
        a.run("folder", "rescan", "docs")
        wait_for(lambda: not a.folder_state("docs")["problems"], "the problem to go")
        assert a.run("status").returncode == 0
    finally:
        if secret.exists():
            secret.chmod(0o755)
        a.kill()


def test_a_full_disk_is_a_problem(tmp_path: Path, devices: tuple[Device, Device]) -> None:
    a, b = devices
    with mounted_or_skip(tmp_path / "disk", "8m") as disk:
        b.folder = disk / "bob-files"
        for device in devices:
            device.init(*LOOPBACK)
            device.start()
        pair_and_share(a, b)
        wait_for(lambda: b.folder_state("shared")["state"] == "up to date", "bob's first sync")
        (a.folder / "too-large.bin").write_bytes(os.urandom(12 * 1024 * 1024))
        wait_for(
            lambda: "space" in b.folder_state("shared")["summary"], "bob to say there is no space"
        )
        done = b.run("status", check=False)
        assert done.returncode == 1
        assert "error: " in done.stdout, done.stdout
        assert "by itself" in done.stdout, done.stdout
        b.kill()
