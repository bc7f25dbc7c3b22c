"""Issue 16 against real daemons (separate ``commonsyncd`` processes on loopback, driven by the
``commonsync`` command): ignore rules for the whole folder and for one device, bandwidth limits
set live, and devices named by what they call themselves, by short ID or prefix.

Every wait is bounded (``wait_for``); a "not sent" is checked after a later change from the
same device has arrived (a barrier), so that it cannot pass by being checked too early."""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import pytest

from tests.daemons import Device, pair_and_share, tree, wait_for

pytestmark = pytest.mark.slow


def _barrier(sender: Device, receiver: Device, name: str) -> None:
    """A new file from ``sender`` reached ``receiver``: what was written before it and is
    not there was not sent."""
    (sender.folder / name).write_text(f"barrier {name}\n")
    wait_for(lambda: (receiver.folder / name).exists(), f"{name} to reach {receiver.name}")


def _up_to_date(device: Device, label: str = "shared") -> bool:
    return bool(device.folder_state(label)["state"] == "up to date")


def test_this_device_ignores_a_directory_and_the_other_sees_no_deletion(
    two: tuple[Device, Device],
) -> None:
    alice, bob = two
    (alice.folder / "videos").mkdir(parents=True)
    (alice.folder / "videos" / "a.mp4").write_bytes(b"first cut\n")
    (alice.folder / "notes.txt").write_text("agenda\n")
    pair_and_share(alice, bob)
    wait_for(lambda: tree(alice.folder) == tree(bob.folder), "the first sync")

    # Bob's phone keeps no videos: a rule for this device only.
    added = bob.json("ignore", "add", "shared", "videos/", "--this-device")
    assert added["this_device"] == ["videos/"]
    assert added["applied"]
    assert not (bob.folder / ".csignore").exists()  # nothing shared changed

    # New and changed videos are not written on bob, other files still are.
    (alice.folder / "videos" / "b.mp4").write_bytes(b"second film\n")
    (alice.folder / "videos" / "a.mp4").write_bytes(b"final cut\n")
    _barrier(alice, bob, "after-videos.txt")
    assert not (bob.folder / "videos" / "b.mp4").exists()
    assert (bob.folder / "videos" / "a.mp4").read_bytes() == b"first cut\n"

    # Bob removes his copy to make room: alice sees no deletion.
    (bob.folder / "videos" / "a.mp4").unlink()
    bob.run("folder", "rescan", "shared")
    _barrier(bob, alice, "from-bob.txt")
    assert (alice.folder / "videos" / "a.mp4").read_bytes() == b"final cut\n"
    # Versions held back for the rule do not count as "left to sync".
    wait_for(lambda: _up_to_date(bob), "bob up to date with videos ignored")
    assert "ignored by .csignore and this device's rules" in bob.folder_state("shared")["summary"]

    listed = bob.run("ignore", "list", "shared").stdout
    assert "videos/" in listed
    assert "this device only" in listed

    # The rule goes: the videos come back, as alice has them now.
    bob.run("ignore", "remove", "shared", "videos/", "--this-device")
    wait_for(
        lambda: (
            (bob.folder / "videos" / "b.mp4").exists()
            and (bob.folder / "videos" / "a.mp4").exists()
            and (bob.folder / "videos" / "a.mp4").read_bytes() == b"final cut\n"
        ),
        "the videos back on bob",
    )
    wait_for(lambda: tree(alice.folder) == tree(bob.folder), "both the same again")

    # A rule for the whole folder travels in .csignore: bob's PDFs stop reaching alice.
    alice.run("ignore", "add", "shared", "*.pdf")
    wait_for(lambda: (bob.folder / ".csignore").exists(), ".csignore to reach bob")
    assert (bob.folder / ".csignore").read_text() == "*.pdf\n"
    (bob.folder / "minutes.pdf").write_bytes(b"%PDF-1.4\n")
    bob.run("folder", "rescan", "shared")
    _barrier(bob, alice, "after-pdf.txt")
    assert not (alice.folder / "minutes.pdf").exists()
    folder_rules = bob.json("ignore", "list", "shared")
    assert folder_rules["folder_rules"] == ["*.pdf"]
    assert folder_rules["this_device"] == []

    # This device's rule file edited by hand applies at once too (it is watched).
    (bob.folder / ".commonsync" / "ignore-local").write_text("*.tmp\n")
    wait_for(
        lambda: "this device's rules" in bob.folder_state("shared")["summary"],
        "bob's rules edited by hand to apply",
    )
    (alice.folder / "scratch.tmp").write_text("alice's scratch\n")
    _barrier(alice, bob, "after-tmp.txt")
    assert not (bob.folder / "scratch.tmp").exists()

    # A rule removed while the daemon was stopped lets go of what it held back.
    bob.run("ignore", "add", "shared", "videos/", "--this-device")
    (alice.folder / "videos" / "c.mp4").write_bytes(b"third film\n")
    _barrier(alice, bob, "after-c.txt")
    assert not (bob.folder / "videos" / "c.mp4").exists()
    assert bob.stop() == 0
    (bob.folder / ".commonsync" / "ignore-local").write_text("")
    bob.start()
    wait_for(lambda: (bob.folder / "videos" / "c.mp4").exists(), "c.mp4 after the restart")

    # Removing a rule that is not there says which rules there are (exit code 2).
    done = bob.run("ignore", "remove", "shared", "*.pdf", "--this-device", check=False)
    assert done.returncode == 2
    assert "without --this-device" in done.stderr


def test_a_reader_keeps_rules_to_itself(tmp_path: Path) -> None:
    alice, bob = Device(tmp_path, "alice"), Device(tmp_path, "bob")
    for device in (alice, bob):
        device.init("--listen", "127.0.0.1:0", "--no-discovery")
        device.start()
    try:
        alice.run("device", "add", bob.device_id)
        port = alice.status()["port"]
        bob.run("device", "add", alice.device_id, "--address", f"127.0.0.1:{port}")
        alice.folder.mkdir()
        (alice.folder / "score.txt").write_text("la la\n")
        alice.run("folder", "add", str(alice.folder), "--label", "shared")
        alice.run("share", "shared", bob.device_id, "--role", "reader")
        wait_for(lambda: bool(bob.status()["offered_folders"]), "the offer to reach bob")
        bob.run("folder", "accept", "shared", str(bob.folder))
        wait_for(lambda: (bob.folder / "score.txt").exists(), "the first sync")
        done = bob.run("ignore", "add", "shared", "*.tmp", check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "reader" in done.stderr
        assert "--this-device" in done.stderr
        assert not (bob.folder / ".csignore").exists()
        bob.run("ignore", "add", "shared", "*.tmp", "--this-device")
    finally:
        for device in (alice, bob):
            device.kill()


def _arrival(sender: Device, receiver: Device, name: str, size: int, timeout: float) -> float:
    """Write ``size`` random bytes at ``name`` on ``sender``; seconds until ``receiver`` has
    them whole."""
    data = os.urandom(size)
    started = time.monotonic()
    (sender.folder / name).write_bytes(data)
    target = receiver.folder / name
    wait_for(
        lambda: target.exists() and target.stat().st_size == size and target.read_bytes() == data,
        f"{name} to reach {receiver.name}",
        timeout=timeout,
    )
    return time.monotonic() - started


def test_bandwidth_limits_overall_and_per_device_set_live(two: tuple[Device, Device]) -> None:
    alice, bob = two
    pair_and_share(alice, bob)
    size = 1024 * 1024
    refused = alice.run("limit", "--send", "fast", check=False)
    assert refused.returncode == 2
    assert "500KiB/s" in refused.stderr  # the hint says how to write a rate
    # Without a limit first (the session is warm).
    _arrival(alice, bob, "warm.bin", size, 60)

    # Alice sends at most 256 KiB/s in all: 1 MiB takes at least ~3.5 s (the bucket lets
    # a quarter of a second's worth pass at once).
    shown = alice.json("limit", "--send", "256KiB/s")
    assert shown["send"] == 256 * 1024
    assert shown["receive"] == 0
    rate, burst = 256 * 1024, 2 * 64 * 1024
    took = _arrival(alice, bob, "limited.bin", size, 60)
    assert took >= (size - burst) / rate, f"{took:.2f} s"

    # Bob receives from alice at most 128 KiB/s (a limit for one device, by its name):
    # alice's own limit is lifted, bob's reading slower holds the transfer back.
    alice.run("limit", "--send", "none")
    shown = bob.json("limit", "--device", "alice", "--receive", "128KiB/s")
    assert shown["devices"][0]["receive"] == 128 * 1024
    took = _arrival(alice, bob, "received-slowly.bin", size, 60)
    assert took >= (size - 2 * 32 * 1024 - 64 * 1024) / (128 * 1024), f"{took:.2f} s"
    table = bob.run("limit").stdout
    assert "alice" in table
    assert "128 KiB/s" in table
    # The limits in force, where people look (a table: tab-separated rows in a pipe).
    assert "alice\tnone\t128 KiB/s" in bob.run("status").stdout
    assert "all devices" not in alice.run("status").stdout  # none set there now
    config = tomllib.loads((bob.home / "config.toml").read_text())
    assert [d.get("max_receive_rate") for d in config["devices"]] == ["128 KiB/s"]

    # A limit changed during a transfer applies to it: 6 MiB at 64 KiB/s would take 96 s;
    # lifted after 2 s, the rest goes at full speed.
    bob.run("limit", "--device", alice.device_id[:7], "--receive", "64KiB/s")
    data = os.urandom(6 * 1024 * 1024)
    started = time.monotonic()
    (alice.folder / "big.bin").write_bytes(data)
    time.sleep(2)
    assert not (bob.folder / "big.bin").exists()
    bob.run("limit", "--device", alice.device_id[:7], "--receive", "0")
    wait_for(
        lambda: (bob.folder / "big.bin").exists() and (bob.folder / "big.bin").read_bytes() == data,
        "big.bin once the limit is lifted",
        timeout=60,
    )
    assert time.monotonic() - started < 60
    assert bob.json("limit")["devices"] == []


def test_devices_are_named_by_their_own_name_short_id_or_prefix(
    two: tuple[Device, Device],
) -> None:
    alice, bob = two
    # Paired with no name on either side: each learns the other's from its Hello.
    alice.run("device", "add", bob.device_id)
    port = alice.status()["port"]
    bob.run("device", "add", alice.device_id, "--address", f"127.0.0.1:{port}")
    wait_for(lambda: bob.connected_to(alice), "bob to connect to alice")

    def name_of(device: Device, other: Device) -> str:
        listed = device.json("device", "list")["devices"]
        return str(next(d["name"] for d in listed if d["id"] == other.device_id))

    wait_for(lambda: name_of(alice, bob) == "bob", "alice to learn bob's name")
    wait_for(lambda: name_of(bob, alice) == "alice", "bob to learn alice's name")
    assert "bob" in alice.run("device", "list").stdout
    assert "bob" in alice.run("status").stdout
    config = tomllib.loads((alice.home / "config.toml").read_text())
    assert config["devices"][0]["reported_name"] == "bob"
    assert config["devices"][0]["name"] == ""

    # Any command that takes a device takes that name, the short ID, or a prefix of the ID.
    alice.folder.mkdir()
    alice.run("folder", "add", str(alice.folder), "--label", "shared")
    alice.run("share", "shared", "bob")
    wait_for(lambda: bool(bob.status()["offered_folders"]), "the offer to reach bob")
    alice.run("limit", "--device", bob.device_id[:7], "--send", "1MiB/s")
    alice.run("limit", "--device", bob.device_id[:5].lower(), "--send", "none")
    alice.run("limit", "--device", bob.device_id, "--receive", "none")
    shown = alice.run("status", "--device", bob.device_id[:5].lower(), check=False)
    assert shown.returncode in (0, 1), shown.stderr
    assert "bob" in shown.stdout
    for command in (["status"], ["limit", "--send", "1MB/s"]):
        refused = alice.run(*command, "--device", "carol", check=False)
        assert refused.returncode == 2
        assert "no device 'carol'" in refused.stderr
    unknown = alice.run("limit", "--device", "carol", "--send", "1MB/s", check=False)
    assert unknown.returncode == 2
    assert "no device 'carol'" in unknown.stderr

    # A name chosen here stays, whatever the device calls itself at its next session.
    alice.run("device", "add", bob.device_id, "--name", "Bob's laptop")
    bob.stop()
    bob.start()
    wait_for(lambda: alice.connected_to(bob), "bob back")
    assert name_of(alice, bob) == "Bob's laptop"
    alice.run("limit", "--device", "Bob's laptop", "--send", "2MB/s")
    assert alice.json("limit")["devices"][0]["send"] == 2_000_000


def test_an_edit_made_while_ignored_meets_the_others_as_a_conflict(
    two: tuple[Device, Device],
) -> None:
    alice, bob = two
    (alice.folder / "videos").mkdir(parents=True)
    (alice.folder / "videos" / "a.mp4").write_bytes(b"v1\n")
    pair_and_share(alice, bob)
    wait_for(lambda: tree(alice.folder) == tree(bob.folder), "the first sync")
    bob.run("ignore", "add", "shared", "videos/", "--this-device")
    # Both edit the file: bob's edit is not sent, alice's is not written on bob.
    (bob.folder / "videos" / "a.mp4").write_bytes(b"bob's edit\n")
    (alice.folder / "videos" / "a.mp4").write_bytes(b"alice's edit\n")
    _barrier(alice, bob, "after-edits.txt")
    assert (bob.folder / "videos" / "a.mp4").read_bytes() == b"bob's edit\n"
    # The rule goes: neither edit is lost, each device has both, as for any conflict.
    bob.run("ignore", "remove", "shared", "videos/", "--this-device")

    def both_kept(device: Device) -> bool:
        contents = {v for k, v in tree(device.folder).items() if k.startswith("videos/")}
        return contents == {b"bob's edit\n", b"alice's edit\n"}

    wait_for(lambda: both_kept(bob) and both_kept(alice), "both edits on both devices")
    wait_for(lambda: tree(alice.folder) == tree(bob.folder), "both the same")
