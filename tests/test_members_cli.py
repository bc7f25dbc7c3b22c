"""Members and roles driven from the command line, with real daemons as separate processes:
share a folder as reader, list the members, remove one (SPEC.md §15)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

from .daemons import LOOPBACK, Device, wait_for
from .relays import RelayProcess


def share(owner: Device, other: Device, label: str, role: str) -> None:
    owner.run("share", label, other.device_id, "--role", role)
    wait_for(lambda: bool(other.status()["offered_folders"]), f"the offer to reach {other.name}")
    other.run("folder", "accept", label, str(other.folder))
    wait_for(lambda: other.json("members", label)["has_log"], f"{other.name} to get the log")


def test_roles_and_removal_from_the_command_line(tmp_path: Path) -> None:
    owner, reader, writer = (Device(tmp_path, n) for n in ("anna", "ben", "chloe"))
    try:
        for device in (owner, reader, writer):
            device.init(*LOOPBACK)
            device.start()
        port = owner.status()["port"]
        owner.run("device", "add", reader.device_id, "--name", reader.name)
        reader.run(
            "device", "add", owner.device_id, "--name", "anna", "--address", f"127.0.0.1:{port}"
        )
        owner.folder.mkdir()
        (owner.folder / "score.txt").write_text("Kyrie\n")
        owner.run("folder", "add", str(owner.folder), "--label", "choir")
        share(owner, reader, "choir", "reader")
        wait_for(lambda: (reader.folder / "score.txt").exists(), "the score to reach ben")

        # Chloe is known to nobody: an invitation link is all she gets, and all she types.
        invited = owner.json("invite", "choir", "--role", "writer", "--name", "chloe")
        assert invited["link"].startswith("commonsync://join/")
        printed = owner.run("invite", "choir", "--expires", "2h").stdout
        assert "commonsync://join/" in printed
        assert "--revoke" in printed
        writer.run("join", invited["link"], str(writer.folder))
        wait_for(lambda: (writer.folder / "score.txt").exists(), "the score to reach chloe")
        again = writer.run("join", invited["link"], str(tmp_path / "again"), check=False)
        assert again.returncode == 2
        assert "already syncs that folder" in again.stderr
        pending = owner.json("members", "choir")["invitations"]
        assert [i["role"] for i in pending] == ["writer"]  # the 2 h one; chloe's is used

        listed = owner.json("members", "choir")
        assert listed["role"] == "owner"
        roles = {m["name"]: m["role"] for m in listed["members"]}
        assert roles == {listed["members"][0]["name"]: "owner", "ben": "reader", "chloe": "writer"}
        table = owner.run("members", "choir").stdout
        assert "3 members; this device is an owner" in table
        assert "reader" in table

        # The reader's edit stays with the reader, and its status says so.
        (reader.folder / "score.txt").write_text("Gloria (ben's version)\n")
        reader.run("folder", "rescan", "choir")
        summary = reader.folder_state("choir")["summary"]
        assert "1 local change not shared (you are a reader of choir)" in summary
        time.sleep(1)
        assert (owner.folder / "score.txt").read_text() == "Kyrie\n"

        # Removing the writer: a new key epoch, and the writer is no longer listed anywhere.
        said = owner.run("member", "remove", "choir", "chloe").stdout
        assert "removed chloe from folder choir" in said
        assert "key epoch 1" in said
        wait_for(
            lambda: (
                [m["name"] for m in reader.json("members", "choir")["members"]]
                == [listed["members"][0]["name"], "ben"]
            ),
            "the removal to reach ben",
        )
        assert reader.json("members", "choir")["epoch"] == 1
        refused = owner.run("member", "remove", "choir", "chloe", check=False)
        assert refused.returncode == 2  # a request that cannot be done, as elsewhere
        assert "no member 'chloe'" in refused.stderr
        as_json = owner.run("--json", "member", "role", "choir", "ben", "writer").stdout
        assert json.loads(as_json)["role"] == "writer"
    finally:
        for device in (owner, reader, writer):
            device.kill()


def test_a_code_joins_through_a_relay_and_join_starts_the_daemon(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    owner, joiner = Device(tmp_path, "anna"), Device(tmp_path, "ben")
    started: list[int] = []
    try:
        owner.init(*LOOPBACK)
        joiner.init(*LOOPBACK)  # set up, but its daemon is not running
        relay.init(owner.device_id)
        relay.start()
        owner.start()
        owner.run("relay", "add", relay.address)
        wait_for(lambda: any(r["connected"] for r in owner.json("relay", "list")["relays"]),
                 "anna to reach the relay")  # fmt: skip
        owner.folder.mkdir()
        (owner.folder / "score.txt").write_text("Kyrie\n")
        owner.run("folder", "add", str(owner.folder), "--label", "choir")
        printed = owner.run("invite", "choir", "--name", "ben").stdout
        found = re.search(r"^(\d+-[a-z]+-[a-z]+)$", printed, re.MULTILINE)
        assert found, printed
        code = found.group(1)
        assert "at relay" in printed

        done = joiner.run("join", code, str(joiner.folder), "--relay", relay.address)
        pid = re.search(r"process (\d+)", done.stdout + done.stderr)
        assert pid, done.stdout + done.stderr
        started.append(int(pid.group(1)))
        wait_for(lambda: (joiner.folder / "score.txt").exists(), "the score to reach ben")
        roles = {m["name"]: m["role"] for m in owner.json("members", "choir")["members"]}
        assert roles.get("ben") == "writer"
        # Redeemed: the same code again finds nobody holding it.
        again = joiner.run("join", code, str(tmp_path / "again"), check=False)
        assert again.returncode != 0
        assert "code" in again.stderr
    finally:
        for pid_ in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid_, signal.SIGTERM)
        owner.kill()
        relay.kill()
