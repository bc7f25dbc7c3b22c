"""End to end: real ``commonsync`` and ``commonsyncd`` executables, separate homes, loopback.

Every daemon here listens on 127.0.0.1 with LAN discovery off (discovery has its own tests,
in network namespaces); each step is bounded so that a hang fails instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.daemons import ENV, LOOPBACK, Device, command, pair_and_share, tree, wait_for
from tests.netns import Lan, lan

__all__ = ["lan"]  # a fixture, used by name


@pytest.mark.slow
def test_pair_share_sync_then_catch_up_after_a_restart(two: tuple[Device, Device]) -> None:
    a, b = two
    (a.folder / "docs").mkdir(parents=True)
    (a.folder / "docs" / "hello.txt").write_text("hello, choir\n")
    (a.folder / "empty").mkdir()
    pair_and_share(a, b, "choir")
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the first sync")

    # A large file: bob's status says "syncing" while it travels, then "up to date".
    (a.folder / "big.bin").write_bytes(os.urandom(160 * 1024 * 1024))
    seen: list[str] = []

    def settled() -> bool:
        folder = b.folder_state("choir")
        if not seen or seen[-1] != folder["summary"]:
            seen.append(folder["summary"])
        return folder["state"] == "up to date" and (b.folder / "big.bin").exists()

    wait_for(settled, "the large file to arrive", timeout=120)
    assert any(s.startswith("syncing 1 file,") and "MB left" in s for s in seen), seen
    assert seen[-1] == "up to date"
    assert tree(a.folder) == tree(b.folder)
    status = b.run("status")
    assert "up to date" in status.stdout

    # Bob stops (cleanly, promptly); alice keeps changing things; bob catches up on restart.
    assert b.stop() == 0
    (a.folder / "docs" / "hello.txt").write_text("hello again\n")
    (a.folder / "while-away.txt").write_text("written while bob was off\n")
    (a.folder / "big.bin").unlink()
    time.sleep(0.05)  # a later mtime than alice's: bob's edit wins the conflict below
    (b.folder / "docs" / "hello.txt").write_text("bob edited this while stopped\n")
    b.start()
    done = b.run("status", "--wait", "--timeout", "60")
    assert "up to date" in done.stdout
    wait_for(lambda: tree(a.folder) == tree(b.folder), "bob to catch up")
    # Both edits of hello.txt survive: the later one in place, the other as a conflict copy.
    assert (a.folder / "docs" / "hello.txt").read_text() == "bob edited this while stopped\n"
    conflicts = a.json("conflicts")["folders"][0]["conflicts"]
    assert len(conflicts) == 1
    assert conflicts[0].startswith("docs/hello.sync-conflict-")
    assert (a.folder / conflicts[0]).read_text() == "hello again\n"
    assert "hello.sync-conflict-" in b.run("conflicts").stdout
    # And changes flow the other way too.
    (b.folder / "from-bob.txt").write_text("bob was here\n")
    wait_for(lambda: (a.folder / "from-bob.txt").exists(), "bob's file to reach alice")
    assert a.stop() == 0


@pytest.mark.slow
def test_time_from_a_write_to_its_arrival(
    two: tuple[Device, Device], capsys: pytest.CaptureFixture[str]
) -> None:
    """Reported, not asserted: how long a saved file takes to reach the other device."""
    a, b = two
    pair_and_share(a, b)
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the first sync")
    delays = []
    for n in range(20):
        name = f"note-{n}.txt"
        content = f"note {n}\n".encode()
        started = time.monotonic()
        (a.folder / name).write_bytes(content)
        target = b.folder / name
        wait_for(lambda: target.exists() and target.read_bytes() == content, name, timeout=30)  # noqa: B023
        delays.append(time.monotonic() - started)
    # The event stream shows the same arrivals as they happen.
    events = subprocess.Popen(
        [*b.prefix, *command("commonsync"), "--home", str(b.home), "events", "--json", "--replay"],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    output = events.stdout
    assert output is not None

    def read() -> None:
        for line in output:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        (a.folder / "watched.txt").write_text("seen\n")
        deadline = time.monotonic() + 30
        while True:
            event = json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            if event["kind"] == "applied" and event.get("path") == "watched.txt":
                break
    finally:
        events.kill()
        events.wait(timeout=10)
    with capsys.disabled():
        median, low, high = (1000 * f(delays) for f in (statistics.median, min, max))
        print(
            f"\nwrite-to-arrival over loopback, 20 files: median {median:.0f} ms, "
            f"min {low:.0f} ms, max {high:.0f} ms"
        )


@pytest.mark.slow
def test_mass_deletion_waits_for_confirmation(two: tuple[Device, Device]) -> None:
    a, b = two
    a.folder.mkdir()
    for n in range(20):
        (a.folder / f"photo-{n:02}.jpg").write_bytes(os.urandom(1000))
    pair_and_share(a, b, "photos")
    wait_for(lambda: tree(a.folder) == tree(b.folder), "the first sync")
    for n in range(15):
        (a.folder / f"photo-{n:02}.jpg").unlink()
    wait_for(lambda: a.folder_state("photos")["state"] == "needs confirmation", "the guard")
    status = a.run("status", check=False)
    assert status.returncode == 1
    assert "15 of 20 files vanished" in status.stdout
    time.sleep(1)
    assert len(list(b.folder.glob("photo-*.jpg"))) == 20  # nothing was deleted on bob
    a.run("folder", "confirm-deletions", "photos")
    wait_for(lambda: len(list(b.folder.glob("photo-*.jpg"))) == 5, "the confirmed deletions")


def test_user_errors_are_one_sentence_and_a_hint(
    two: tuple[Device, Device], tmp_path: Path
) -> None:
    a, b = two
    unknown = Device(tmp_path, "carol")
    unknown.init(*LOOPBACK)
    a.folder.mkdir()
    a.run("folder", "add", str(a.folder), "--label", "docs")

    cases = [
        (("share", "docs", unknown.device_id), 2, "is not known to this device"),
        (
            ("device", "add", b.device_id[:-1] + ("A" if b.device_id[-1] != "A" else "B")),
            2,
            "is not a valid device ID",
        ),
        (("device", "add", "hello"), 2, "is not a valid device ID"),
        (("device", "add", a.device_id), 2, "this device's own ID"),
        (("share", "nope", b.device_id), 2, "no folder is called 'nope'"),
        (("folder", "add", str(tmp_path / "missing")), 2, "is not a directory"),
        (("folder", "add", str(a.folder), "--label", "again"), 2, "overlaps folder docs"),
        (("folder", "accept", "nothing", str(tmp_path / "x")), 2, "no folder 'nothing' is offered"),
    ]
    for args, code, message in cases:
        done = a.run(*args, check=False)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "hint:" in done.stderr or code != 2 or "valid device ID" in done.stderr
        assert "Traceback" not in done.stdout + done.stderr

    a.run("device", "add", b.device_id)
    a.run("share", "docs", b.device_id)
    again = a.run("share", "docs", b.device_id, check=False)
    assert again.returncode == 2
    assert "already shared" in again.stderr

    # A second daemon on the same home refuses to start, in one sentence.
    second = subprocess.run(
        [*command("commonsyncd"), "--home", str(a.home)],
        capture_output=True, text=True, timeout=60, env=ENV, check=False,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert "already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert a.status()["device_id"] == a.device_id

    # Without a daemon: a clear word and its own exit code.
    not_running = unknown.run("status", check=False)
    assert not_running.returncode == 3
    assert "commonsync daemon" in not_running.stderr
    assert "Traceback" not in not_running.stderr
    # Not set up at all.
    fresh = Device(tmp_path, "nobody").run("status", check=False)
    assert fresh.returncode == 2
    assert "commonsync init" in fresh.stderr


def test_control_socket_is_private_and_survives_garbage(two: tuple[Device, Device]) -> None:
    a, _b = two
    path = a.home / "control.sock"
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    for garbage in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ):
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(10)
            raw.connect(str(path))
            raw.sendall(garbage)
            answer = raw.recv(65536)
        assert answer.startswith(b"HTTP/1.1 4"), answer
    bad_json = a.client.request  # a body that is JSON but not what the route wants
    with pytest.raises(Exception, match="needs a 'path'"):
        bad_json("POST", "/folders", {"label": 3})
    assert a.status()["device_id"] == a.device_id  # still running


def test_a_stranger_is_listed_as_pending_and_can_be_accepted(two: tuple[Device, Device]) -> None:
    a, b = two
    port = a.status()["port"]
    b.run("device", "add", a.device_id, "--address", f"127.0.0.1:{port}")
    wait_for(lambda: bool(a.status()["pending_devices"]), "alice to list bob as pending")
    listing = a.json("device", "list")
    assert listing["pending"][0]["id"] == b.device_id
    a.run("device", "add", b.device_id)
    wait_for(lambda: a.connected_to(b) and b.connected_to(a), "the pairing")
    assert not a.status()["pending_devices"]


@pytest.mark.slow
def test_daemons_on_two_hosts_find_each_other_on_the_lan(tmp_path: Path, lan: Lan) -> None:
    """Two network namespaces joined by a veth pair are two hosts on one LAN. Each daemon
    announces itself there only (discovery pinned to its own address); no address is
    configured anywhere, yet they connect and sync."""
    a = Device(tmp_path, "alice", prefix=lan.prefix(lan.ns_a))
    b = Device(tmp_path, "bob", prefix=lan.prefix(lan.ns_b))
    a.init("--listen", f"{lan.addr_a}:22070", "--discovery-interface", lan.addr_a)
    b.init("--listen", f"{lan.addr_b}:22070", "--discovery-interface", lan.addr_b)
    try:
        a.start()
        b.start()
        # Before pairing, each sees the other as a device waiting to be accepted.
        wait_for(lambda: any(p["id"] == b.device_id for p in a.status()["pending_devices"]),
                 "alice to discover bob")  # fmt: skip
        a.run("device", "add", b.device_id)
        b.run("device", "add", a.device_id)
        wait_for(lambda: a.connected_to(b) and b.connected_to(a), "the connection")
        seen = next(d for d in b.status()["devices"] if d["id"] == a.device_id)
        assert seen["addresses"] == []
        assert f"{lan.addr_a}:22070" in seen["discovered"]

        a.folder.mkdir()
        (a.folder / "over-the-lan.txt").write_text("found you\n")
        a.run("folder", "add", str(a.folder), "--label", "lan")
        a.run("share", "lan", b.device_id)
        wait_for(lambda: bool(b.status()["offered_folders"]), "the offer")
        b.run("folder", "accept", "lan", str(b.folder))
        wait_for(lambda: tree(a.folder) == tree(b.folder), "the folder to arrive")
        assert a.stop() == 0
        assert b.stop() == 0
    finally:
        a.kill()
        b.kill()
