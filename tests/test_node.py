"""Two library Nodes sync a folder with no daemon code involved, under trio and asyncio.

The Node is the whole device: listening, dialling, offers, the folder's watcher and puller.
These tests drive it only through its public API, as a tool embedding it would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from commonsync import DeviceIdentity, Node, NodeConfig, RequestError
from commonsync.errors import NotFoundError, RequestConflictError

pytestmark = pytest.mark.anyio
TIMEOUT = 60


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def loopback() -> NodeConfig:
    """A node that talks to loopback only: no LAN discovery, a port the system picks."""
    return NodeConfig(listen="127.0.0.1:0", discovery_enabled=False)


async def until(check: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(TIMEOUT, reason=f"timed out waiting until {what}"):
        while not check():
            await anyio.sleep(0.05)


@asynccontextmanager
async def paired(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """Alice and Bob, each knowing the other at its loopback address."""
    async with (
        Node.open(tmp_path / "alice", loopback()) as alice,
        Node.open(tmp_path / "bob", loopback()) as bob,
    ):
        await alice.add_device(bob.device_id, name="bob", addresses=[f"127.0.0.1:{bob.port}"])
        await bob.add_device(alice.device_id, addresses=[f"127.0.0.1:{alice.port}"])
        yield alice, bob


async def test_two_nodes_sync_a_folder_both_ways(tmp_path: Path) -> None:
    photos, received = tmp_path / "photos", tmp_path / "received"
    photos.mkdir()
    (photos / "concert.jpg").write_bytes(os.urandom(300_000))
    changes: list[int] = []
    async with paired(tmp_path) as (alice, bob):
        alice._on_config_change = lambda config: changes.append(len(config.folders))
        await alice.add_folder(photos, "photos")
        # The tool is told, to keep its configuration (also of the name Bob gives himself,
        # learnt when the session began: that change may come before or after).
        assert changes[-1] == 1
        await alice.share("photos", "bob")  # by the name it was given
        await until(lambda: bool(bob.offers), "bob is offered the folder")
        await bob.accept_folder("photos", received)
        await until(lambda: (received / "concert.jpg").exists(), "the photo arrives")
        assert (received / "concert.jpg").read_bytes() == (photos / "concert.jpg").read_bytes()

        (received / "programme.txt").write_text("Fauré, Requiem\n")  # the watcher sees it
        await until(lambda: (photos / "programme.txt").exists(), "bob's file reaches alice")
        assert (photos / "programme.txt").read_text() == "Fauré, Requiem\n"

        status = alice.status()
        assert status["folders"][0]["label"] == "photos"
        assert [d["connected"] for d in status["devices"]] == [True]


async def test_events_say_what_happened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    async with paired(tmp_path) as (alice, bob):
        seen: list[dict[str, object]] = []

        async def watch() -> None:
            async for event in bob.events(replay=True):
                seen.append(event)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            await alice.add_folder(shared, "shared")
            await alice.share("shared", bob.device_id)
            await until(lambda: any(e["kind"] == "folder offered" for e in seen), "an offer")
            await bob.accept_folder("shared", tmp_path / "copy")
            (shared / "a.txt").write_text("a")
            await until(lambda: (tmp_path / "copy" / "a.txt").exists(), "the file arrives")
            tasks.cancel_scope.cancel()
        kinds = {e["kind"] for e in seen}
        assert {"peer connected", "folder offered"} <= kinds


async def test_requests_that_cannot_be_done_change_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    async with Node.open(tmp_path / "home", loopback()) as node:
        with pytest.raises(NotFoundError, match="is not a directory"):
            await node.add_folder(tmp_path / "missing", "x")
        with pytest.raises(RequestConflictError, match=r"home .* secret key"):
            await node.add_folder(tmp_path, "everything")  # it holds the node's home
        with pytest.raises(RequestConflictError, match=r"home .* secret key"):
            await node.add_folder(tmp_path / "home", "keys")
        await node.add_folder(tmp_path / "a", "a")
        with pytest.raises(RequestConflictError, match="already labelled"):
            await node.add_folder(tmp_path / "a", "a")
        with pytest.raises(RequestConflictError, match="own ID"):
            await node.add_device(node.device_id)
        with pytest.raises(RequestError, match="not a valid device ID"):
            await node.add_device("not-an-id")
        with pytest.raises(NotFoundError, match="not known"):
            await node.share("a", DeviceIdentity.generate().device_id)  # a stranger
        assert [f.label for f in node.config.folders] == ["a"]
        assert node.config.devices == []


async def test_a_node_keeps_its_identity_in_its_home(tmp_path: Path) -> None:
    async with Node.open(tmp_path / "home", loopback()) as first:
        device_id = first.device_id
    async with Node.open(tmp_path / "home", loopback()) as again:
        assert again.device_id == device_id
    assert oct((tmp_path / "home" / "device.key").stat().st_mode & 0o777) == "0o600"


def test_the_library_runs_without_the_daemon() -> None:
    """Importing the library (and a Node) loads none of the daemon's modules."""
    code = (
        "import sys, commonsync, commonsync.node.node, commonsync.node.discovery;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'commonsyncd'))"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
