"""Names that peers choose must reach a person's terminal as text (issue 12, item 10).

A file name with escape sequences in it went raw to the terminal through ``commonsync
events`` (it can clear the screen, retitle the window, on some terminals answer back), and
rich markup in a folder label or a file name was read as markup in tables. Here bob, a
peer, names a file and a folder so; the victim's real CLI prints them, to a pipe and to a
terminal (a pty, ``TERM=dumb`` so that rich itself adds no escapes), and the bytes must hold
no ESC or BEL, show the escapes visibly, and show ``[bold]`` as it is.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemons import ENV, Device, command, in_a_terminal, wait_for
from tests.hostile import scene

#: A file name that clears the screen and retitles the window, with markup in it.
EVIL_NAME = "notes-\x1b[2J\x1b]0;pwned\x07-[bold]loud.txt"
SHOWN_NAME = "notes-\\x1b[2J\\x1b]0;pwned\\x07-[bold]loud.txt"
#: A conflict copy's name (for `commonsync conflicts`), with an escape and markup.
EVIL_CONFLICT = "minutes\x1b[31m[red]x.sync-conflict-20240101-000000-ABCDEFG.txt"
SHOWN_CONFLICT = "minutes\\x1b[31m[red]x.sync-conflict-20240101-000000-ABCDEFG.txt"
#: A folder label bob offers, with markup, an escape and a right-to-left override.
EVIL_LABEL = "[bold]gift[/bold]\x1b]0;pwned\x07\u202eexe.txt"
SHOWN_LABEL = "[bold]gift[/bold]\\x1b]0;pwned\\x07\\u202eexe.txt"


def _in_a_terminal(device: Device, *args: str) -> bytes:
    """What ``commonsync ARGS`` writes to a terminal (wide, with no colours)."""
    return in_a_terminal(device, *args, term="dumb", columns=400, timeout=30)[0]


def _events(device: Device, *options: str, until: str, timeout: float = 30) -> bytes:
    """What ``commonsync events --replay`` writes to a pipe, up to a line holding ``until``."""
    argv = [*command("commonsync"), "--home", str(device.home), "events", "--replay", *options]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    assert process.stdout is not None
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while until.encode() not in out:
            if time.monotonic() > deadline:
                raise AssertionError(f"no event with {until!r} in {timeout:g} s: {out!r}")
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                data = os.read(process.stdout.fileno(), 65536)
                if not data:
                    break
                out += data
    finally:
        process.kill()
        process.wait(timeout=10)
    return bytes(out)


def _clean(out: bytes) -> str:
    assert b"\x1b" not in out, out
    assert b"\x07" not in out, out
    assert "\u202e".encode() not in out, out
    return out.decode()


@pytest.mark.slow
def test_names_from_peers_reach_the_terminal_as_text(tmp_path: Path) -> None:
    with scene(tmp_path) as (victim, bob):
        (bob.folder / EVIL_NAME).write_text("hello\n")
        (bob.folder / EVIL_CONFLICT).write_text("a conflict copy\n")
        wait_for(lambda: (victim.folder / EVIL_CONFLICT).exists(), "the names to reach the victim")
        wait_for(lambda: (victim.folder / EVIL_NAME).exists(), "the names to reach the victim")
        gift = tmp_path / "gift"
        gift.mkdir()
        bob.run("folder", "add", str(gift), "--label", EVIL_LABEL)
        bob.run("share", EVIL_LABEL, victim.device_id)
        wait_for(lambda: bool(victim.status()["offered_folders"]), "bob's offer")

        # Events, as lines and as JSON (the JSON is still the same names).
        assert SHOWN_NAME in _clean(_events(victim, until="notes-"))
        as_json = _clean(_events(victim, "--json", until="notes-"))
        names = {json.loads(line).get("path") for line in as_json.splitlines() if line}
        assert EVIL_NAME in names

        # Tables, in a terminal and in a pipe.
        for args, shown in [
            (("folder", "list"), SHOWN_LABEL),
            (("status",), SHOWN_LABEL),
            (("conflicts",), SHOWN_CONFLICT),
        ]:
            assert shown in _clean(_in_a_terminal(victim, *args)), args
            assert shown in _clean(victim.run(*args).stdout.encode()), args

        # Accepted, the label is in the folder tables and in the command's own answer.
        accepted = victim.run("folder", "accept", EVIL_LABEL, str(tmp_path / "victim-gift"))
        assert SHOWN_LABEL in _clean(accepted.stdout.encode())
        assert SHOWN_LABEL in _clean(_in_a_terminal(victim, "folder", "list"))
        # An error that repeats a name prints it visibly too.
        refused = victim.run("folder", "accept", EVIL_LABEL, str(tmp_path / "x"), check=False)
        assert refused.returncode == 2
        assert SHOWN_LABEL in _clean(refused.stderr.encode())
