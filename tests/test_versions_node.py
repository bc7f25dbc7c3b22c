"""Versions through the library's :class:`~commonsync.Node`: its methods, the folder's own
retention policy, and the periodic pruning the daemon runs, on one in-process node (nothing
on the network but its loopback listener)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from commonsync import Node, NodeConfig
from commonsync.errors import NotFoundError, UnavailableError
from commonsync.node.history import prune_periodically
from commonsync.sync import layout
from commonsync.sync.retention import DAY, RetentionPolicy
from commonsync.sync.store import LocalFile
from commonsync.sync.target import open_target
from commonsync.sync.versions import keep_version

pytestmark = pytest.mark.anyio
S = 1_000_000_000
TIMEOUT = 60


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def keep(root: Path, path: str, content: bytes, when: int) -> None:
    """A version of ``path`` kept at ``when``, as the applier keeps one."""
    (root / path).write_bytes(content)
    target = await open_target(root, path)
    try:
        seen = LocalFile.from_stat(os.lstat(root / path))
        keep_version(target, seen, when, move=True)
    finally:
        target.close()


async def test_node_lists_restores_and_prunes_under_the_folders_policy(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    now = time.time_ns()
    config = NodeConfig(listen="127.0.0.1:0", discovery_enabled=False)
    async with Node.open(tmp_path / "home", config) as node:
        runner = await node.add_folder(folder, "f")
        await keep(folder, "a.txt", b"a year and more ago", now - 400 * DAY * S)
        noon = (now // (DAY * S) - 7) * DAY * S + DAY * S // 2  # a week ago, one UTC day
        await keep(folder, "a.txt", b"last week", noon)
        await keep(folder, "a.txt", b"last week too", noon + 60 * S)
        await keep(folder, "a.txt", b"just now", now - 60 * S)
        listed = await node.versions("f", "a.txt")
        assert [v["size"] for v in listed] == [19, 9, 13, 8]

        # The default policy: the year-old one goes, and one of last week's two.
        pruned = await node.prune_versions("f")
        assert (pruned["deleted"], pruned["kept"]) == (2, 2)
        assert [v["size"] for v in await node.versions("f")] == [13, 8]

        # Restore the older of what is left: a.txt is a new edit, scanned into the index.
        done = await node.restore("f", str(folder / "a.txt"), at=listed[2]["time"])
        assert done["not_sent_yet"] == ""
        assert (folder / "a.txt").read_bytes() == b"last week too"
        entry = await node.store.get(runner.config.folder_id, "a.txt")
        assert entry is not None
        assert entry.record.size == 13

        # A policy of its own: everything, but never more than 10 bytes (the newest stays).
        runner.config.versions = RetentionPolicy(staggered=False, max_age=0, max_size="10")
        await keep(folder, "b.txt", b"0123456789", now - 3 * DAY * S)
        await keep(folder, "b.txt", b"01234", now - 2 * DAY * S)
        await prune_and_wait(node)
        assert sorted(v["size"] for v in await node.versions("f")) == [5, 8]

        with pytest.raises(NotFoundError, match=r"no version of 'c\.txt'"):
            await node.restore("f", "c.txt")
        with pytest.raises(NotFoundError, match="no folder"):
            await node.versions("nosuch")
        runner.folder, running = None, runner.folder
        try:
            with pytest.raises(UnavailableError, match="not running"):
                await node.versions("f")
        finally:
            runner.folder = running
    assert (folder / layout.VERSIONS_DIR).is_dir()


async def prune_and_wait(node: Node) -> None:
    """The daemon's periodic pruning, run at once and until it has done its round."""
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: prune_periodically(node.runners, node.store, first=0))
            while len(await node.versions("f")) > 2:
                await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
