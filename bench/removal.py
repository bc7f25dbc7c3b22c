"""K1: what removing a member costs, against a full resync of the same folder.

Three library Nodes on loopback (an owner and two writers who joined by invitation link) sync
a folder of many files; then the owner removes one writer. A removal writes two membership
entries (the removal, and a new key epoch sealed to each remaining device) and re-derives
nothing: chunk IDs keep epoch 0's key (SPEC.md §15.7), so no content is hashed or sent again.
Measured, in one process (so CPU is the three nodes together): bytes on the wire (every
channel's bytes, counted once) and CPU seconds, for the first sync to both writers, and for the
removal until the remaining writer holds the new epoch's key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from commonsync import Node, NodeConfig

from .report import Benchmark, BenchmarkError, Options

MiB = 1024 * 1024
TIMEOUT = 1800.0


@dataclass
class Phase:
    name: str
    seconds: float
    cpu_seconds: float
    wire_bytes: int


@dataclass
class Result:
    name: str
    files: int
    folder_bytes: int
    phases: list[Phase] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"K1 removal: {self.files} files, {self.folder_bytes // MiB} MiB, 3 nodes on loopback",
            f"{'phase':<34}{'seconds':>10}{'CPU s':>10}{'bytes on the wire':>20}",
        ]
        for p in self.phases:
            lines.append(f"{p.name:<34}{p.seconds:>10.2f}{p.cpu_seconds:>10.2f}{p.wire_bytes:>20,}")
        sync, removal = self.phases
        lines.append(
            f"removal / full sync: bytes {removal.wire_bytes / max(1, sync.wire_bytes):.2e}, "
            f"CPU {removal.cpu_seconds / max(1e-9, sync.cpu_seconds):.2e}"
        )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "folder_bytes": self.folder_bytes,
            "phases": [vars(p) for p in self.phases],
        }


def _wire_bytes(nodes: list[Node]) -> int:
    """Every byte any node sent on a channel (what another received: counted once)."""
    return sum(n.peers.traffic(d.device_id)[0] for n in nodes for d in n.config.devices)


async def _until(check: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(TIMEOUT, reason=f"timed out waiting until {what}"):
        while not check():
            await anyio.sleep(0.05)


async def _measure(files: int, size: int, base: Path) -> Result:
    folder = base / "owner"
    folder.mkdir()
    each = size // files
    for i in range(files):
        sub = folder / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(os.urandom(each))
    result = Result("removal", files, each * files)
    async with anyio.create_task_group() as tasks:
        nodes: list[Node] = []

        async def run(name: str, ready: anyio.Event) -> None:
            config = NodeConfig(listen="127.0.0.1:0", discovery_enabled=False)
            async with Node.open(base / "homes" / name, config, watch=False) as node:
                nodes.append(node)
                ready.set()
                await anyio.sleep_forever()

        for name in ("owner", "bob", "carol"):
            ready = anyio.Event()
            tasks.start_soon(run, name, ready)
            await ready.wait()
        owner, bob, carol = nodes
        await owner.add_folder(folder, "r1")

        started, cpu = time.monotonic(), time.process_time()
        for joiner in (bob, carol):
            link = (await owner.invite("r1"))["link"]
            await joiner.join(link, base / joiner.device_name)

        def synced() -> bool:
            return all(
                (r := n.folder("r1").status())["state"] == "up to date"
                and r["files_applied"] >= files
                for n in (bob, carol)
            )

        await _until(synced, "both writers hold the folder")
        result.phases.append(
            Phase(
                "full sync to 2 writers",
                time.monotonic() - started,
                time.process_time() - cpu,
                _wire_bytes(nodes),
            )
        )

        remaining = bob.folder("r1").folder
        assert remaining is not None
        before = _wire_bytes(nodes)
        started, cpu = time.monotonic(), time.process_time()
        await owner.remove_member("r1", carol.device_id.short_str)
        await _until(lambda: remaining.keyring.current.epoch == 1, "bob holds the new epoch")
        seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
        await anyio.sleep(0.5)  # the session with carol ends, its last bytes counted
        result.phases.append(
            Phase("removal of one writer", seconds, cpu_seconds, _wire_bytes(nodes) - before)
        )
        tasks.cancel_scope.cancel()
    return result


def run(options: Options) -> Result:
    files, size = (1000, 128 * MiB) if options.quick else (10_000, 1024 * MiB)
    tmp_root = tempfile.gettempdir()
    if shutil.disk_usage(tmp_root).free < 4 * size:
        raise BenchmarkError(f"not enough free space in {tmp_root} for 3 copies of the folder")
    base = Path(tempfile.mkdtemp(prefix="commonsync-bench-removal-", dir=tmp_root))
    try:
        return anyio.run(_measure, files, size, base, backend="trio")
    finally:
        shutil.rmtree(base, ignore_errors=True)


BENCHMARK = Benchmark(
    "removal",
    "K1: bytes and CPU to remove a member (new key epoch) against a full sync of the folder",
    run,
)
