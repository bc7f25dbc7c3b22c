"""Changing one's mind through the library's :class:`~commonsync.Node`, in-process under trio
and asyncio: a folder paused, resumed, moved and removed; devices renamed, paused, resumed,
unshared and removed; a configuration changed as a whole (:meth:`Node.reconfigure`). One node,
nothing on the network but its loopback listener; the same with two daemons is in
``test_lifecycle_daemons``."""

from __future__ import annotations

import copy
from pathlib import Path

import anyio
import pytest

from commonsync import Node, NodeConfig
from commonsync.errors import NotFoundError, RequestConflictError, UnavailableError
from commonsync.formats.identity import DeviceIdentity
from commonsync.node.config import DeviceConfig, RelayConfig
from commonsync.node.folders import FolderRunner, FolderState
from commonsync.sync.layout import FOLDER_MARKER

pytestmark = pytest.mark.anyio
TIMEOUT = 30


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def config() -> NodeConfig:
    return NodeConfig(listen="127.0.0.1:0", discovery_enabled=False)


async def up_to_date(node: Node, label: str) -> FolderRunner:
    with anyio.fail_after(TIMEOUT):
        while (runner := node.folder(label)).state is not FolderState.UP_TO_DATE:
            await anyio.sleep(0.05)
    return runner


async def test_a_folder_paused_resumed_moved_and_removed(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a")
    async with Node.open(tmp_path / "home", config()) as node:
        runner = await node.add_folder(folder, "f")
        folder_id = runner.config.folder_id
        await up_to_date(node, "f")

        assert await node.pause_folder("f") == {"folder": "f", "paused": True}
        assert node.folder("f").state is FolderState.PAUSED
        assert node.status()["folders"][0]["state"] == "paused"
        assert not node.folder_tasks.running(folder_id)
        with pytest.raises(UnavailableError, match="is paused"):
            await node.rescan("f")
        with pytest.raises(RequestConflictError, match="already paused"):
            await node.pause_folder("f")
        await node.resume_folder("f")
        await up_to_date(node, "f")

        moved = await node.move_folder("f", tmp_path / "elsewhere" / "f")
        assert moved["how"] == "renamed"
        assert not folder.exists()
        runner = await up_to_date(node, "f")
        assert runner.root == tmp_path / "elsewhere" / "f"
        assert (runner.root / "a.txt").read_bytes() == b"a"
        with pytest.raises(RequestConflictError, match="already at"):
            await node.move_folder("f", runner.root)

        removed = await node.remove_folder("f")
        assert removed["files_kept"] is True
        assert node.config.folders == []
        assert node.runners == {}
        assert await node.store.folders() == []
        assert not node.home.folder_key_file(folder_id).exists()
        assert (runner.root / "a.txt").read_bytes() == b"a"
        assert not (runner.root / FOLDER_MARKER).exists()
        with pytest.raises(NotFoundError):
            await node.remove_folder("f")


async def test_devices_renamed_paused_unshared_and_removed(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    other = str(DeviceIdentity.generate().device_id)
    async with Node.open(tmp_path / "home", config()) as node:
        await node.add_folder(folder, "f")
        await node.add_device(other, name="phone")
        await node.share("f", "phone")
        renamed = await node.rename_device(other[:7], "pocket")
        assert renamed == {"device": other, "name": "pocket", "was": "phone"}
        await node.add_device(str(DeviceIdentity.generate().device_id), name="tablet")
        with pytest.raises(RequestConflictError, match="already called"):
            await node.rename_device("pocket", "tablet")

        await node.pause_device("pocket")
        assert node.config.devices[0].paused
        assert node.peers.status()[0]["paused"] is True
        with pytest.raises(RequestConflictError, match="already paused"):
            await node.pause_device("pocket")
        await node.resume_device("pocket")
        assert not node.config.devices[0].paused

        # Not a member yet (it never connected): the share is withdrawn.
        await node.unshare("f", "pocket")
        assert node.config.folders[0].devices == []
        with pytest.raises(NotFoundError, match="not shared"):
            await node.unshare("f", "pocket")
        await node.share("f", "pocket")
        removed = await node.remove_device("pocket")
        assert removed["unshared"] == ["f"]
        assert [d.name for d in node.config.devices] == ["tablet"]
        assert node.config.folders[0].devices == []


async def test_a_configuration_changed_as_a_whole(tmp_path: Path) -> None:
    folders = [tmp_path / "one", tmp_path / "two"]
    for path in folders:
        path.mkdir()
    device = DeviceIdentity.generate().device_id
    relay = DeviceIdentity.generate().device_id
    async with Node.open(tmp_path / "home", config()) as node:
        await node.add_folder(folders[0], "one")
        await node.add_folder(folders[1], "two")
        await up_to_date(node, "one")
        new = copy.deepcopy(node.config)
        new.folders[0].paused = True
        new.folders[1].label = "deux"
        new.devices.append(DeviceConfig(device, "laptop", ["127.0.0.1:9"]))
        new.relays.append(RelayConfig(relay, "127.0.0.1:9"))
        new.rescan_interval = 60.0
        new.max_send_rate = 500_000
        done = await node.reconfigure(new)
        assert done.refused == []
        assert node.folder("one").state is FolderState.PAUSED
        assert node.folder("deux").root == folders[1]
        assert node.config.device(device) is not None
        assert relay in node.peers.relays.links
        assert node.config.rescan_interval == 60.0
        assert node.limits_status()["send"] == 500_000  # applied live, as `limit` does
        assert "bandwidth limits" in done.applied
        assert any("applies when the daemon starts again" in a for a in done.applied)

        # A change its command would refuse is refused, and says why; the rest applies.
        again = copy.deepcopy(node.config)
        again.folders[0].paused = False
        again.folders[1].label = "one"
        again.relays = []
        done = await node.reconfigure(again)
        assert len(done.refused) == 1
        assert "already labelled 'one'" in done.refused[0]
        assert node.folder("deux").label == "deux"
        assert not node.config.folders[0].paused
        assert node.config.relays == []
        assert relay not in node.peers.relays.links

        # A folder left out is removed; its files stay.
        (folders[1] / "kept.txt").write_bytes(b"kept")
        last = copy.deepcopy(node.config)
        del last.folders[1]
        done = await node.reconfigure(last)
        assert done.applied == ["folder deux removed"]
        assert [f.label for f in node.config.folders] == ["one"]
        assert (folders[1] / "kept.txt").read_bytes() == b"kept"
