"""The programs in examples/ run as documented and do what they say."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from commonsyncd.demo import tree

ROOT = Path(__file__).resolve().parent.parent


def test_sync_two_folders_example(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (source / "ünïcode.txt").write_text("ça marche\n")
    (source / "empty").mkdir()
    target.mkdir()
    (target / "from-target.txt").write_text("this goes the other way\n")

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sync_two_folders.py"), str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "in sync after" in done.stdout
    assert "bob: applied  deep/er/data.bin" in done.stdout
    assert tree(source) == tree(target)
    assert (source / "from-target.txt").read_text() == "this goes the other way\n"


def test_node_from_asyncio_example() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "node_asyncio.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "bob received notes/agenda.txt" in done.stdout or "in sync: 2 files" in done.stdout
    assert done.stdout.rstrip().endswith("in sync: 2 files")


def test_two_processes_sync_a_directory_with_the_node_example(tmp_path: Path) -> None:
    """Two separate processes, each a library Node (no daemon code), sync a directory."""
    from commonsync import NodeHome

    homes = [tmp_path / "alice", tmp_path / "bob"]
    ids = [NodeHome(home).load_or_create_identity().device_id for home in homes]
    ports = [free_port(), free_port()]
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "deep").mkdir(parents=True)
    (source / "deep" / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (source / "ünïcode.txt").write_text("ça marche\n")
    script = str(ROOT / "examples" / "sync_with_device.py")

    def node(me: int, directory: Path, *more: str) -> list[str]:
        peer = f"{ids[1 - me]}@127.0.0.1:{ports[1 - me]}"
        listen = f"127.0.0.1:{ports[me]}"
        return [
            sys.executable,
            script,
            str(homes[me]),
            str(directory),
            *more,
            "--peer",
            peer,
            "--listen",
            listen,
        ]

    alice = subprocess.Popen(
        node(0, source, "--share", "music"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    bob = subprocess.Popen(
        node(1, target),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and tree(target) != tree(source):
            assert alice.poll() is None, "alice's process stopped"
            assert bob.poll() is None, "bob's process stopped"
            time.sleep(0.2)
        assert tree(target) == tree(source)
        (target / "reply.txt").write_text("merci\n")  # and back, through bob's watcher
        while time.monotonic() < deadline and not (source / "reply.txt").exists():
            time.sleep(0.2)
        assert (source / "reply.txt").read_text() == "merci\n"
    finally:
        for process in (alice, bob):
            process.send_signal(signal.SIGINT)
        outputs = [p.communicate(timeout=30)[0] for p in (alice, bob)]
    assert f"device ID {ids[1]}" in outputs[1]
    assert "folder offered: music" in outputs[1]
    assert [p.returncode for p in (alice, bob)] == [0, 0], outputs


def default_sigint() -> None:
    """Ctrl-C works in the child even when this run inherited SIGINT ignored (a shell's
    background job does): the test stops the examples with it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
