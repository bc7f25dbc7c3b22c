"""Changing one's mind with real daemons (separate processes on 127.0.0.1), driven by the
``commonsync`` command: folders paused, resumed, moved, removed; devices renamed, paused,
resumed, removed; a folder unshared; config.toml edited by hand. Each effect is seen on disk
and on the other device, live: no daemon is restarted for it (one restart checks that a pause
is kept). Every wait is bounded (:data:`tests.daemons.STEP`)."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from commonsync.sync.layout import FOLDER_MARKER
from tests.daemons import LOOPBACK, Device, pair_and_share, wait_for

pytestmark = pytest.mark.slow

LABEL = "shared"
#: How long a test looks for something that must not happen (a file that must not arrive).
QUIET = 3.0


def content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def arrives(path: Path, data: bytes, what: str) -> None:
    wait_for(lambda: content(path) == data, what)


def stays_away(path: Path, what: str) -> None:
    """``path`` does not appear within :data:`QUIET` seconds."""
    deadline = time.monotonic() + QUIET
    while time.monotonic() < deadline:
        assert not path.exists(), what
        time.sleep(0.1)


def error_of(device: Device, *args: str) -> tuple[int, dict[str, str]]:
    """Run a command that must fail; its exit code and its JSON error."""
    done = device.run(*args, "--json", check=False)
    assert done.returncode != 0, done.stdout
    return done.returncode, json.loads(done.stderr)


def keys_of(device: Device) -> list[str]:
    keys = device.home / "folder-keys"
    return sorted(p.name for p in keys.glob("*.key")) if keys.exists() else []


def test_folder_pause_resume_survives_a_restart(two: tuple[Device, Device]) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    (a.folder / "one.txt").write_bytes(b"one\n")
    arrives(b.folder / "one.txt", b"one\n", "one.txt on bob")

    paused = b.json("folder", "pause", LABEL)
    assert paused == {"folder": LABEL, "paused": True}
    assert b.folder_state(LABEL)["state"] == "paused"
    assert "paused" in b.run("folder", "list").stdout
    (a.folder / "two.txt").write_bytes(b"two\n")
    (b.folder / "local.txt").write_bytes(b"bob's, while paused\n")
    stays_away(b.folder / "two.txt", "a paused folder takes no file")
    assert not (a.folder / "local.txt").exists(), "a paused folder sends no file"
    code, error = error_of(b, "folder", "pause", LABEL)
    assert code == 2
    assert "already paused" in error["error"]
    code, error = error_of(b, "folder", "rescan", LABEL)
    assert code == 1
    assert "paused" in error["error"]
    # Out of sync on purpose: not waited for.
    assert b.run("status", "--wait", "--timeout", "30").returncode == 0

    # Kept across a restart: in the configuration, and the folder does not start.
    config = tomllib.loads((b.home / "config.toml").read_text())
    assert config["folders"][0]["paused"] is True
    assert b.stop() == 0
    b.start()
    assert b.folder_state(LABEL)["state"] == "paused"
    stays_away(b.folder / "two.txt", "a folder paused before a restart stays paused")

    assert b.json("folder", "resume", LABEL)["paused"] is False
    arrives(b.folder / "two.txt", b"two\n", "two.txt on bob once resumed")
    arrives(a.folder / "local.txt", b"bob's, while paused\n", "bob's file on alice")
    assert "paused" not in tomllib.loads((b.home / "config.toml").read_text())["folders"][0]


def test_folder_remove_keeps_the_files(two: tuple[Device, Device]) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    (a.folder / "kept.txt").write_bytes(b"kept\n")
    arrives(b.folder / "kept.txt", b"kept\n", "kept.txt on bob")
    assert keys_of(b)

    removed = b.json("folder", "remove", LABEL, "--keep-files")
    assert removed["files_kept"] is True
    assert removed["marker_removed"] is True
    assert removed["still_member"] is True  # a folder with members: an admin removes it
    assert b.status()["folders"] == []
    assert keys_of(b) == [], "its keys are forgotten"
    assert content(b.folder / "kept.txt") == b"kept\n", "its files stay"
    assert not (b.folder / FOLDER_MARKER).exists()
    assert tomllib.loads((b.home / "config.toml").read_text()).get("folders", []) == []
    # Alice goes on; what she writes no longer reaches bob, and she offers the folder again.
    (a.folder / "later.txt").write_bytes(b"later\n")
    stays_away(b.folder / "later.txt", "a removed folder takes no file")
    wait_for(lambda: bool(b.status()["offered_folders"]), "alice's offer, again")
    assert a.folder_state(LABEL)["state"] == "up to date"
    code, error = error_of(b, "folder", "remove", LABEL)
    assert code == 2
    assert "no folder" in error["error"]


def test_folder_move_renames_or_repairs(two: tuple[Device, Device], tmp_path: Path) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    (a.folder / "a.txt").write_bytes(b"a\n")
    arrives(b.folder / "a.txt", b"a\n", "a.txt on bob")

    # On the same file system: renamed there, and it goes on syncing at its new place.
    new = tmp_path / "moved" / "bob-files"
    moved = b.json("folder", "move", LABEL, str(new))
    assert moved["how"] == "renamed"
    assert moved["path"] == str(new)
    assert not b.folder.exists()
    assert content(new / "a.txt") == b"a\n"
    (a.folder / "b.txt").write_bytes(b"b\n")
    arrives(new / "b.txt", b"b\n", "b.txt at bob's new place")
    (new / "c.txt").write_bytes(b"c\n")
    arrives(a.folder / "c.txt", b"c\n", "a file written at the new place on alice")

    # Moved by hand while the daemon runs: an error, then found where it went.
    by_hand = tmp_path / "by-hand"
    new.rename(by_hand)
    wait_for(lambda: b.folder_state(LABEL)["state"] == "error", "the folder in error")
    assert b.json("folder", "move", LABEL, str(by_hand))["how"] == "found"
    wait_for(lambda: b.folder_state(LABEL)["state"] == "up to date", "the folder found")
    (a.folder / "d.txt").write_bytes(b"d\n")
    arrives(by_hand / "d.txt", b"d\n", "d.txt where the folder was moved by hand")
    assert a.folder_state(LABEL)["state"] == "up to date"
    # Never into a directory that holds other files; never where nothing safe can be done.
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_bytes(b"someone else's\n")
    code, error = error_of(b, "folder", "move", LABEL, str(other))
    assert code == 2
    assert "holds other files" in error["error"]
    by_hand.rename(tmp_path / "gone")
    code, error = error_of(b, "folder", "move", LABEL, str(tmp_path / "empty"))
    assert code == 2
    assert "deletion" in error["error"]


def test_a_folder_accepted_at_a_wrong_path_is_repaired(two: tuple[Device, Device]) -> None:
    a, b = two
    a.run("device", "add", b.device_id, "--name", b.name)
    b.run("device", "add", a.device_id, "--address", f"127.0.0.1:{a.status()['port']}")
    a.folder.mkdir()
    (a.folder / "x.txt").write_bytes(b"x\n")
    a.run("folder", "add", str(a.folder), "--label", LABEL)
    a.run("share", LABEL, b.device_id)
    wait_for(lambda: bool(b.status()["offered_folders"]), "the offer")
    # A path under a file: it can never be created, the folder is in error for good.
    blocker = b.folder.parent / "a-file"
    blocker.write_bytes(b"")
    b.run("folder", "accept", LABEL, str(blocker / "Shared"), check=False)
    wait_for(lambda: b.folder_state(LABEL)["state"] == "error", "the folder in error")

    repaired = b.json("folder", "move", LABEL, str(b.folder))
    assert repaired["how"] == "created"
    arrives(b.folder / "x.txt", b"x\n", "the folder synced at its right place")


def test_devices_renamed_paused_resumed_and_removed(
    two: tuple[Device, Device], tmp_path: Path
) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    (a.folder / "1.txt").write_bytes(b"1\n")
    arrives(b.folder / "1.txt", b"1\n", "1.txt on bob")

    renamed = a.json("device", "rename", b.device_id[:7], "bobby")
    assert renamed == {"device": b.device_id, "name": "bobby", "was": b.name}
    assert "bobby" in a.run("device", "list").stdout
    paused = a.json("device", "pause", "bobby")  # the new name is a reference
    assert paused["paused"] is True
    wait_for(lambda: not a.connected_to(b), "the session to end")
    devices = a.json("device", "list")
    assert devices["devices"][0]["paused"] is True
    assert devices["pending"] == []
    # The folder's log changes (bob becomes a reader): its address book is read again, and
    # the pause, which is this device's own, stays.
    a.run("member", "role", LABEL, "bob", "reader")
    (a.folder / "2.txt").write_bytes(b"2\n")
    stays_away(b.folder / "2.txt", "nothing reaches a paused device")
    assert a.json("device", "list")["devices"][0]["paused"] is True
    assert not b.connected_to(a), "a paused device is refused when it dials"
    assert a.status()["pending_devices"] == [], "nor listed as waiting"
    assert "paused" in a.run("device", "list").stdout
    assert a.run("status", "--wait", "--timeout", "30").returncode == 0  # not waited for

    a.run("device", "resume", b.device_id[:9])
    arrives(b.folder / "2.txt", b"2\n", "2.txt on bob once resumed")

    # A member's device: neither unshared nor removed (the log would add it back), and
    # the message says what does revoke it.
    for args in (("unshare", LABEL, "bobby"), ("device", "remove", "bobby")):
        code, error = error_of(a, *args)
        assert code == 2
        assert "member" in error["error"]
        assert "member remove" in error["hint"]
        assert "device pause" in error["hint"]
    assert a.connected_to(b)

    # A device that is no member (carol was offered the folder, and never came): removed,
    # and unshared from the folder; bob goes on.
    carol = Device(tmp_path, "carol")
    carol.init(*LOOPBACK)
    a.run("device", "add", carol.device_id, "--name", "carol")
    a.run("share", LABEL, "carol")
    removed = a.json("device", "remove", "carol")
    assert removed["unshared"] == [LABEL]
    assert [d["name"] for d in a.json("device", "list")["devices"]] == ["bobby"]
    assert a.folder_state(LABEL)["devices"] == [b.device_id]
    config = tomllib.loads((a.home / "config.toml").read_text())
    assert [d["id"] for d in config["devices"]] == [b.device_id]
    (a.folder / "3.txt").write_bytes(b"3\n")
    arrives(b.folder / "3.txt", b"3\n", "3.txt on bob")


def test_unshare_withdraws_an_offer(two: tuple[Device, Device], tmp_path: Path) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    # Carol was offered the folder and has not connected since: no member yet (the entry
    # admitting a device is written at its next session), so the share is simply withdrawn.
    carol = Device(tmp_path, "carol")
    carol.init(*LOOPBACK)
    a.run("device", "add", carol.device_id, "--name", "carol")
    a.run("share", LABEL, carol.device_id[:8])
    assert carol.device_id in a.folder_state(LABEL)["devices"]
    done = a.json("unshare", LABEL, "carol")
    assert done["folder"] == LABEL
    assert done["device"] == carol.device_id
    assert a.folder_state(LABEL)["devices"] == [b.device_id]
    config = tomllib.loads((a.home / "config.toml").read_text())
    assert config["folders"][0]["devices"] == [b.device_id]
    code, error = error_of(a, "unshare", LABEL, "carol")
    assert code == 2
    assert "not shared" in error["error"]
    assert "shared" in a.run("device", "list").stdout  # bob keeps it


def test_config_edited_by_hand_is_applied_live(two: tuple[Device, Device]) -> None:
    a, b = two
    pair_and_share(a, b, LABEL)
    (a.folder / "1.txt").write_bytes(b"1\n")
    arrives(b.folder / "1.txt", b"1\n", "1.txt on bob")
    file = b.home / "config.toml"

    # Paused by hand: applied within seconds, no restart.
    config = tomllib.loads(file.read_text())
    config["folders"][0]["paused"] = True
    config["devices"][0]["name"] = "alice-laptop"
    file.write_text(tomli_w.dumps(config))
    wait_for(lambda: b.folder_state(LABEL)["state"] == "paused", "the hand-made pause")
    assert b.json("device", "list")["devices"][0]["name"] == "alice-laptop"
    (a.folder / "2.txt").write_bytes(b"2\n")
    stays_away(b.folder / "2.txt", "a folder paused by hand takes no file")

    # A file it cannot read: said in status (exit 1), and the old configuration runs on.
    file.write_text("this is [not toml\n")
    wait_for(lambda: bool(b.status()["config_error"]), "the error in status")
    shown = b.run("status", check=False)
    assert shown.returncode == 1
    assert "not valid TOML" in " ".join(shown.stdout.split())
    assert b.folder_state(LABEL)["state"] == "paused"
    # A command changes the configuration meanwhile: the unreadable file is kept aside.
    b.run("device", "rename", "alice-laptop", "alice")
    assert (b.home / "config.toml.rejected").read_text() == "this is [not toml\n"
    assert tomllib.loads(file.read_text())["devices"][0]["name"] == "alice"
    assert "config.toml.rejected" in b.status()["config_error"]
    config["devices"][0]["name"] = "alice"

    # Fixed: applied, and the error is gone.
    config["folders"][0]["paused"] = False
    file.write_text(tomli_w.dumps(config))
    wait_for(lambda: not b.status()["config_error"], "the error to go")
    arrives(b.folder / "2.txt", b"2\n", "2.txt once resumed by hand")

    # A change its command would refuse is refused the same way, and said.
    config["folders"][0]["devices"] = []  # unsharing a member's device
    file.write_text(tomli_w.dumps(config))
    wait_for(lambda: "refused" in b.status()["config_error"], "the refusal in status")
    assert "member remove" in b.status()["config_error"]
    assert b.folder_state(LABEL)["devices"] == [a.device_id]

    # A file emptied by accident is not the removal of every folder.
    file.write_text("")
    wait_for(lambda: "no folder left" in b.status()["config_error"], "the emptied file refused")
    assert [f["label"] for f in b.status()["folders"]] == [LABEL]
