"""LAN discovery: devices find each other over mDNS, and nothing else gets through.

Every zeroconf instance here is pinned to loopback or to a network namespace made for the
test, so no test announces anything on the machine's real network.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest
import trio
from zeroconf import ServiceInfo, Zeroconf

from commonsync import DeviceId, DeviceIdentity
from commonsync.node.discovery import SERVICE_TYPE, LanDiscovery, Sighting
from tests.netns import Lan, lan

__all__ = ["lan"]  # the fixture, imported to be used here

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
#: Devices announce (probing takes ~1.7 s) and must be seen well within this.
FIND_TIMEOUT = 20.0
#: Cancelling discovery says goodbye (~0.25 s) and stops zeroconf's thread.
STOP_TIMEOUT = 2.0


def _zeroconf_threads() -> list[str]:
    # Zeroconf's loop thread runs `_run_loop`; each browser has a `zeroconf-ServiceBrowser-*`.
    return [t.name for t in threading.enumerate() if "zeroconf" in t.name or "_run_loop" in t.name]


def _new_device_id() -> DeviceId:
    return DeviceIdentity.generate().device_id


class _Node:
    """A ``tests.lan_node`` process: its device ID, and the sightings it prints."""

    def __init__(self, prefix: list[str], interface: str, port: int, log: Path) -> None:
        self.interface = interface
        self.port = port
        self.log = log
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "tests.lan_node",
                "--interface",
                interface,
                "--port",
                str(port),
                "--lifetime",
                str(FIND_TIMEOUT * 3),
                "--debug",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.start()
        self.sightings: list[dict[str, Any]] = []
        self.device_id = ""

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def _next_line(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line, or None if the process ended or ``deadline`` passed."""
        try:
            return self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def read_device_id(self, deadline: float) -> bool:
        line = self._next_line(deadline)
        if line is None or "port" in line:
            return False
        self.device_id = line["device_id"]
        return True

    def wait_for_sighting(self, device_id: str, deadline: float) -> dict[str, Any] | None:
        """Read sightings until one of ``device_id``; None if the process ends or time is up."""
        while (line := self._next_line(deadline)) is not None:
            self.sightings.append(line)
            if line["device_id"] == device_id:
                return line
        return None

    def stop(self) -> float:
        """Interrupt the process (it cleans up on SIGINT); kill it if it does not stop."""
        started = time.monotonic()
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            return time.monotonic() - started
        finally:
            self._reader.join(timeout=10)
            self._stderr.close()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_two_hosts_on_a_lan_find_each_other(lan: Lan, tmp_path: Path) -> None:
    nodes: list[_Node] = []
    try:
        a = _Node(lan.prefix(lan.ns_a), lan.addr_a, 22001, tmp_path / "a.log")
        nodes.append(a)
        b = _Node(lan.prefix(lan.ns_b), lan.addr_b, 22002, tmp_path / "b.log")
        nodes.append(b)
        deadline = time.monotonic() + FIND_TIMEOUT
        for node in nodes:
            assert node.read_device_id(deadline), node.stderr()
            DeviceId.parse(node.device_id)
        for seer, seen in ((a, b), (b, a)):
            sighting = seer.wait_for_sighting(seen.device_id, deadline)
            assert sighting is not None, f"{seer.sightings}\n{seer.stderr()}"
            assert seen.interface in sighting["addresses"]
            assert sighting["port"] == seen.port
        for node in nodes:
            assert all(s["device_id"] != node.device_id for s in node.sightings)
    finally:
        stop_times = [node.stop() for node in nodes]
    # SIGINT cancels discovery: it says goodbye and closes zeroconf, promptly.
    assert all(node.process.returncode == 0 for node in nodes), [n.stderr() for n in nodes]
    assert max(stop_times) < 5.0, stop_times


@pytest.mark.slow
def test_two_devices_on_loopback_find_each_other() -> None:
    # mDNS on loopback works on these machines without a namespace: pinned to 127.0.0.1,
    # zeroconf sends to 224.0.0.251 through `lo` only.
    id_a, id_b = _new_device_id(), _new_device_id()
    seen_by_a: list[Sighting] = []
    seen_by_b: list[Sighting] = []
    stop_time = 0.0

    def sees(sightings: list[Sighting], device_id: DeviceId) -> bool:
        return any(s.device_id == device_id for s in sightings)

    async def main() -> None:
        nonlocal stop_time
        with trio.fail_after(FIND_TIMEOUT + 10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(LanDiscovery(id_a, 22011, [LOOPBACK]).run, seen_by_a.append)
                nursery.start_soon(LanDiscovery(id_b, 22012, [LOOPBACK]).run, seen_by_b.append)
                with trio.move_on_after(FIND_TIMEOUT):
                    while not (sees(seen_by_a, id_b) and sees(seen_by_b, id_a)):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
                cancelled = trio.current_time()
            stop_time = trio.current_time() - cancelled

    trio.run(main)
    assert sees(seen_by_a, id_b), seen_by_a
    assert sees(seen_by_b, id_a), seen_by_b
    for sightings, other, port in ((seen_by_a, id_b, 22012), (seen_by_b, id_a, 22011)):
        sighting = next(s for s in sightings if s.device_id == other)
        assert sighting.addresses == (LOOPBACK,)
        assert sighting.port == port
    assert not sees(seen_by_a, id_a)
    assert not sees(seen_by_b, id_b)
    assert stop_time < STOP_TIMEOUT
    assert _zeroconf_threads() == []


def _register(zc: Zeroconf, info: ServiceInfo) -> None:
    zc.register_service(info, allow_name_change=True)


@pytest.mark.slow
def test_malformed_announcements_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """Announcements with a bad, mistyped, missing or undecodable ID, no port or no address
    are skipped; discovery goes on and still reports a good one announced afterwards."""
    own_id, good_id = _new_device_id(), _new_device_id()
    mistyped = str(good_id)
    mistyped = mistyped[:-1] + ("A" if mistyped[-1] != "A" else "B")

    def bogus(name: str, properties: dict[bytes, bytes | None], **kwargs: Any) -> ServiceInfo:
        fields: dict[str, Any] = {"port": 22031, "parsed_addresses": [LOOPBACK], **kwargs}
        return ServiceInfo(
            SERVICE_TYPE,
            f"bogus-{name}.{SERVICE_TYPE}",
            properties=properties,
            server=f"bogus-{name}.local.",
            **fields,
        )

    bad = [
        bogus("garbage", {b"id": b"not a device id"}),
        bogus("mistyped", {b"id": mistyped.encode()}),
        bogus("undecodable", {b"id": b"\xff\xfe" * 30}),
        bogus("missing", {b"name": str(good_id).encode()}),
        bogus("novalue", {b"id": None}),
        bogus("noport", {b"id": str(good_id).encode()}, port=0),
        # Incomplete: discovery asks for its address, and gives up after a while.
        bogus("noaddress", {b"id": str(good_id).encode()}, parsed_addresses=[]),
    ]
    good = bogus("good", {b"id": str(good_id).encode()}, port=22032)
    sightings: list[Sighting] = []
    stop_time = 0.0
    caplog.set_level(logging.DEBUG, logger="commonsync.node.discovery")

    async def main() -> None:
        nonlocal stop_time
        zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=[LOOPBACK]))
        try:
            with trio.fail_after(FIND_TIMEOUT + 10):
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        LanDiscovery(own_id, 22030, [LOOPBACK]).run, sightings.append
                    )
                    async with trio.open_nursery() as registering:
                        for info in bad:
                            registering.start_soon(trio.to_thread.run_sync, _register, zc, info)
                    await trio.to_thread.run_sync(_register, zc, good)
                    with trio.move_on_after(FIND_TIMEOUT):
                        while all(s.device_id != good_id for s in sightings):
                            await trio.sleep(0.05)
                    await trio.sleep(0.5)  # time for anything else to (wrongly) show up
                    nursery.cancel_scope.cancel()
                    cancelled = trio.current_time()
                stop_time = trio.current_time() - cancelled
        finally:
            await trio.to_thread.run_sync(zc.close)

    trio.run(main)
    # Real devices on this machine's loopback (another test's) may show up too: skip those.
    ours = [s for s in sightings if s.device_id == good_id or s.port in (0, 22031)]
    assert ours == [Sighting(good_id, (LOOPBACK,), 22032)]
    ignored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring")]
    for info in bad[:-1]:  # each seen, and turned down
        assert any(repr(info.name) in message for message in ignored), (info.name, ignored)
    assert stop_time < STOP_TIMEOUT  # even with a resolution in progress
    assert _zeroconf_threads() == []


@pytest.mark.parametrize(
    ("interfaces", "error"),
    [
        ([], ValueError),  # zeroconf's default would be every interface
        (["eth0"], ValueError),
        (["10.0.0.300"], ValueError),
        ("127.0.0.1", TypeError),
    ],
)
def test_interfaces_are_explicit_ip_addresses(interfaces: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        LanDiscovery(_new_device_id(), 22000, interfaces)


def test_port_must_be_a_tcp_port() -> None:
    with pytest.raises(ValueError, match="port"):
        LanDiscovery(_new_device_id(), 0, [LOOPBACK])
