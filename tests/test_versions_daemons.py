"""Versions and conflicts end to end: two real daemons (separate processes on 127.0.0.1),
driven with the ``commonsync`` command. A restore and a conflict resolution are edits that
reach the other device, and nothing is lost on either: what was replaced is in a versions
folder. Every wait is bounded (:data:`tests.daemons.STEP`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from commonsync.sync import layout
from tests.daemons import LOOPBACK, Device, pair_and_share, wait_for

pytestmark = pytest.mark.slow

LABEL = "shared"


def content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None


def kept(device: Device) -> list[bytes]:
    """The contents in the device's versions folder (sorted)."""
    versions = device.folder / layout.VERSIONS_DIR
    if not versions.exists():
        return []
    return sorted(p.read_bytes() for p in versions.rglob("*") if p.is_file())


def write(path: Path, data: bytes, mtime_s: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_s is not None:
        os.utime(path, (mtime_s, mtime_s))


def up_to_date(*devices: Device) -> None:
    for device in devices:
        wait_for(
            lambda d=device: d.folder_state(LABEL)["state"] == "up to date",  # type: ignore[misc]
            f"{device.name} to be up to date",
        )


def test_restore_reaches_the_other_device(two: tuple[Device, Device]) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    write(a.folder / "notes" / "agenda.txt", b"first draft\n")
    wait_for(lambda: content(b.folder / "notes/agenda.txt") == b"first draft\n", "v1 on bob")
    write(b.folder / "notes" / "agenda.txt", b"bob's rewrite\n")
    wait_for(lambda: content(a.folder / "notes/agenda.txt") == b"bob's rewrite\n", "v2 on alice")

    listed = a.json("versions", "list", LABEL, "notes/agenda.txt")
    [version] = listed["versions"]
    assert version["path"] == "notes/agenda.txt"
    assert version["size"] == len(b"first draft\n")
    assert version["why"] == "replaced by another device's version"
    plain = a.run("versions", "list", LABEL).stdout
    assert "notes/agenda.txt" in plain
    assert version["local_time"] in plain

    done = a.json("versions", "restore", LABEL, "notes/agenda.txt", "--at", version["local_time"])
    assert done["restored"]["name"] == version["name"]
    assert done["not_sent_yet"] == ""
    assert content(a.folder / "notes/agenda.txt") == b"first draft\n"
    wait_for(
        lambda: content(b.folder / "notes/agenda.txt") == b"first draft\n",
        "the restored version to reach bob",
    )
    up_to_date(a, b)
    # Nothing lost: bob's rewrite is in both versions folders.
    assert b"bob's rewrite\n" in kept(a)
    assert b"bob's rewrite\n" in kept(b)
    [aside] = a.json("versions", "list", LABEL, "notes/agenda.txt")["versions"]
    assert aside["why"] == "replaced by a restore"

    # Errors are one sentence with a hint, exit code 2.
    for args, words in [
        (["versions", "restore", LABEL, "nothing.txt"], "no version of 'nothing.txt'"),
        (["versions", "restore", LABEL, "../etc/passwd"], "not a path inside the folder"),
        (["versions", "restore", LABEL, "/etc/passwd"], "outside the folder"),
        (["versions", "list", "nosuch"], "no folder is called 'nosuch'"),
        (["versions", "restore", LABEL, "notes/agenda.txt", "--at", "1999-01-01"], "no version"),
    ]:
        failed = a.run(*args, check=False)
        assert failed.returncode == 2, (args, failed.stdout, failed.stderr)
        assert words in failed.stderr + failed.stdout, (args, failed.stderr)

    pruned = a.json("versions", "prune", LABEL)
    assert pruned["deleted"] == 0  # young versions are all kept
    assert pruned["kept"] >= 1


def _conflicting(a: Device, b: Device, names: list[str]) -> None:
    """Each of ``names`` edited on both devices while bob's daemon is stopped; bob's edit is
    the later one, so it wins everywhere and alice's is her conflict copy."""
    for name in names:
        write(a.folder / name, b"base\n")
    for name in names:
        wait_for(lambda n=name: content(b.folder / n) == b"base\n", f"{name} on bob")  # type: ignore[misc]
    up_to_date(a, b)
    assert b.stop() == 0
    for name in names:
        write(a.folder / name, f"alice's {name}\n".encode(), mtime_s=1_900_000_000)
        write(b.folder / name, f"bob's {name}\n".encode(), mtime_s=1_900_000_100)
    a.run("folder", "rescan", LABEL)
    b.start()


def _copies(device: Device) -> list[dict[str, Any]]:
    return device.json("conflicts", "list", LABEL)["conflicts"]  # type: ignore[no-any-return]


def test_conflicts_resolve_on_both_devices(two: tuple[Device, Device]) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    names = ["mine.txt", "theirs.txt", "both.txt"]
    _conflicting(a, b, names)
    for device in (a, b):
        wait_for(
            lambda d=device: len(_copies(d)) == 3,  # type: ignore[misc]
            f"three conflict copies on {device.name}",
        )
    for name in names:
        wait_for(
            lambda n=name: content(a.folder / n) == f"bob's {n}\n".encode(),  # type: ignore[misc]
            f"bob's {name} on alice",
        )
    copies = {c["original"]: c for c in _copies(a)}
    assert content(a.folder / copies["theirs.txt"]["path"]) == b"alice's theirs.txt\n"
    # A copy is named for the losing content, not for alice's device (bob, resolving the
    # conflict, keeps alice's edit too): one name on both devices, and its tag is no device.
    assert {c["original"]: c["path"] for c in _copies(b)} == {
        n: c["path"] for n, c in copies.items()
    }
    assert len({c["tag"] for c in copies.values()}) == 3
    for copy in copies.values():
        assert copy["path"].endswith(f"-{copy['tag']}.txt")
        assert "device" not in copy
    # The device the list shows is the one that recorded the copy, from the index: alice,
    # whose file it was, or bob, who kept her edit when he resolved the conflict.
    wait_for(lambda: all(c["recorded_by"] for c in _copies(a)), "alice's index to hold the copies")
    recorded = {c["original"]: c["recorded_by"] for c in _copies(a)}["theirs.txt"]
    names = {a.device_id[:7]: a.name, b.device_id[:7]: b.name}
    assert recorded["device"] in names
    assert recorded["name"].startswith(f"{names[recorded['device']]} (device ")
    listed = a.run("conflicts", "list", LABEL).stdout
    assert "theirs.txt" in listed
    assert f"\t{recorded['name']}\t" in listed  # in the column where the device was

    # Resolved on bob, the device whose version won: "theirs" is alice's copy.
    b.run("conflicts", "resolve", LABEL, "mine.txt", "--keep", "mine")
    b.run("conflicts", "resolve", LABEL, "theirs.txt", "--keep", "theirs")
    done = b.json("conflicts", "resolve", LABEL, copies["both.txt"]["path"], "--keep", "both")
    [renamed] = done["renamed"]
    assert not layout.is_conflict_copy(renamed)

    expected = {
        "mine.txt": b"bob's mine.txt\n",
        "theirs.txt": b"alice's theirs.txt\n",
        "both.txt": b"bob's both.txt\n",
        renamed: b"alice's both.txt\n",
    }
    for device in (a, b):
        for name, data in expected.items():
            wait_for(
                lambda d=device, n=name, x=data: content(d.folder / n) == x,  # type: ignore[misc]
                f"{name} resolved on {device.name}",
            )
        wait_for(lambda d=device: _copies(d) == [], f"no conflict copies on {device.name}")  # type: ignore[misc]
    up_to_date(a, b)
    # Nothing lost: what each resolution set aside is in a versions folder on both devices.
    for device in (a, b):
        assert b"alice's mine.txt\n" in kept(device), device.name
        assert b"bob's theirs.txt\n" in kept(device), device.name

    failed = b.run("conflicts", "resolve", LABEL, "mine.txt", "--keep", "theirs", check=False)
    assert failed.returncode == 2
    assert "has no conflict copy" in failed.stderr


def test_a_reader_is_refused(tmp_path: Path) -> None:
    a, b = Device(tmp_path, "alice"), Device(tmp_path, "bob")
    try:
        for device in (a, b):
            device.init(*LOOPBACK)
            device.start()
        a.run("device", "add", b.device_id, "--name", b.name)
        port = a.status()["port"]
        b.run("device", "add", a.device_id, "--name", a.name, "--address", f"127.0.0.1:{port}")
        a.folder.mkdir()
        write(a.folder / "a.txt", b"hello\n")
        a.run("folder", "add", str(a.folder), "--label", LABEL)
        a.run("share", LABEL, b.device_id, "--role", "reader")
        wait_for(lambda: bool(b.status()["offered_folders"]), "the offer to reach bob")
        b.run("folder", "accept", LABEL, str(b.folder))
        wait_for(lambda: b.folder_state(LABEL)["role"] == "reader", "bob to be a reader")
        for args in (
            ["versions", "restore", LABEL, "a.txt"],
            ["conflicts", "resolve", LABEL, "a.txt", "--keep", "mine"],
        ):
            failed = b.run(*args, check=False)
            assert failed.returncode == 2
            assert "this device is a reader" in failed.stderr
            assert "not shared" in failed.stderr
    finally:
        for device in (a, b):
            device.kill()
