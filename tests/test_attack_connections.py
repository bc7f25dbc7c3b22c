"""A stranger's connections must not crash the daemon, crowd out others or flood its log.

Issue 12, items 3 and 10: 1,024 idle TCP connections exhausted the daemon's file
descriptors, ``accept()`` failed with EMFILE and the daemon exited; each malformed connection
cost a log line. Here real victim daemons (``tests/hostile.py``) are attacked on loopback from
many source addresses in 127.0.0.0/8, while a well-behaved peer keeps syncing with them.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import socket
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from commonsync.node import inbound
from commonsync.node.inbound import Admission, Ticket
from commonsync.node.peers import MAX_HANDSHAKES_PER_SOURCE
from tests.daemons import wait_for
from tests.hostile import IdleFlood, scene, still_syncs, stranger_is_served, victim_port

pytestmark = pytest.mark.anyio

#: The victim's file limit: a few hundred sockets are enough to exhaust it.
NOFILE = 128
#: More idle connections than the victim may open files, from many sources.
FLOOD = 300
SOURCES = [f"127.0.1.{i}" for i in range(1, 61)]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.slow
async def test_idle_connections_beyond_the_file_limit_do_not_crash_the_daemon(
    tmp_path: Path,
) -> None:
    with scene(tmp_path, victim_nofile=NOFILE) as (victim, bob):
        port = await anyio.to_thread.run_sync(victim_port, victim)
        assert victim.process is not None
        with IdleFlood(port, FLOOD, SOURCES, reopen=True) as flood:
            await anyio.to_thread.run_sync(
                wait_for, lambda: flood.closed >= FLOOD - NOFILE, "the victim to shed connections"
            )
            assert victim.process.poll() is None, victim.log.read_text()[-3000:]
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
            assert victim.process.poll() is None, victim.log.read_text()[-3000:]
        # The idle ones are gone: a new connection is served.
        assert await stranger_is_served(port)
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
        assert victim.process.poll() is None


@pytest.mark.slow
async def test_one_source_gets_a_few_handshakes_and_others_are_still_served(
    tmp_path: Path,
) -> None:
    with scene(tmp_path) as (victim, bob):
        port = await anyio.to_thread.run_sync(victim_port, victim)
        count = 50
        with IdleFlood(port, count, ["127.0.0.2"]) as flood:
            # Those beyond the bound are closed at once; the bound's worth wait for their
            # handshake timeout.
            beyond = count - MAX_HANDSHAKES_PER_SOURCE
            await anyio.to_thread.run_sync(
                wait_for, lambda: flood.closed >= beyond, "the victim to close the extra ones"
            )
            assert flood.open == MAX_HANDSHAKES_PER_SOURCE
            # Another source is served meanwhile, and bob syncs.
            assert await stranger_is_served(port)
            await anyio.to_thread.run_sync(still_syncs, victim, bob, "during")
        log = victim.log.read_text()
        closed_lines = [line for line in log.splitlines() if "closed a connection from" in line]
        assert 0 < len(closed_lines) <= 5, closed_lines


@pytest.mark.slow
async def test_malformed_connections_cost_a_few_log_lines(tmp_path: Path) -> None:
    with scene(tmp_path) as (victim, bob):
        port = await anyio.to_thread.run_sync(victim_port, victim)

        def garbage(count: int) -> None:
            # A first handshake message of 4 bytes, where the ephemeral key alone takes 32:
            # refused as soon as it arrives (a timeout here fails the test).
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    raw.sendall(b"\x00\x04\xff\xff\xff\xff")
                    try:
                        while raw.recv(4096):
                            pass
                    except ConnectionResetError:
                        pass

        await anyio.to_thread.run_sync(garbage, 300)
        await anyio.to_thread.run_sync(still_syncs, victim, bob, "after")
        refused = [
            line for line in victim.log.read_text().splitlines() if "refused a connection" in line
        ]
        assert 0 < len(refused) <= 5, len(refused)


async def test_the_accept_loop_survives_running_out_of_file_descriptors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """accept() failing with EMFILE pauses accepting (one warning), it does not end it."""
    handled: list[str] = []

    async def handler(stream: anyio.abc.SocketStream, ticket: Ticket) -> None:
        handled.append(ticket.source)
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    clients = [socket.socket() for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    caplog.set_level(logging.INFO, logger="commonsync.node.inbound")
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(inbound.serve, listener, handler, Admission(8, 8))
                # No descriptor left for the accepted sockets: the clients' sockets exist
                # already, and connecting takes none. No garbage collection meanwhile: it
                # may close a socket an earlier test leaked, freeing a descriptor below the
                # limit (seen on a loaded machine, where the clients were then served).
                gc.collect()
                gc.disable()
                resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_descriptor(), hard))
                try:
                    for client in clients:
                        client.setblocking(False)
                        client.connect_ex(("127.0.0.1", port))
                    await anyio.sleep(1.5)  # accept() fails, again and again
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    gc.enable()
                assert handled == []
                while len(handled) < len(clients):  # served as soon as there are descriptors
                    await anyio.sleep(0.02)
                tasks.cancel_scope.cancel()
    finally:
        for client in clients:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert handled == ["127.0.0.1"] * 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "cannot accept connections" in warnings[0].getMessage()
    assert any("accepting connections again" in r.getMessage() for r in caplog.records)


def _lowest_free_descriptor() -> int:
    """The descriptor the next open() would get: a soft limit at it leaves none free."""
    fd = os.open(os.devnull, os.O_RDONLY)  # the lowest free one, by POSIX
    os.close(fd)
    return fd


def test_sources_are_addresses_and_ipv6_networks() -> None:
    assert inbound.source_of("203.0.113.9") == "203.0.113.9"
    assert inbound.source_of("::ffff:203.0.113.9") == "203.0.113.9"
    assert inbound.source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert inbound.source_of("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert inbound.source_of("fe80::1%eth0") == "fe80::/64"
    admission = Admission(per_source=2, total=3)
    first, second = admission.enter("a"), admission.enter("a")
    assert first is not None
    assert second is not None
    assert admission.enter("a") is None  # the source's bound
    third = admission.enter("b")
    assert third is not None
    assert admission.enter("c") is None  # the total
    first.release()
    first.release()  # idempotent
    assert admission.greeting == 2
    assert admission.enter("c") is not None
