"""Bandwidth limits in the library: rates as people write them, token buckets, and a channel
kept to them in both directions, with a limit changed while bytes flow (issue 16).

Durations are checked from below only (a transfer under a limit takes at least what the
limit allows): a lower bound is a correctness check that a loaded machine cannot break."""

from __future__ import annotations

import os
import time

import anyio
import anyio.abc
import pytest

from commonsync.errors import InvalidRequestError
from commonsync.formats.identity import DeviceIdentity
from commonsync.node.config import DeviceConfig, NodeConfig
from commonsync.node.limits import RateLimits, format_rate, parse_rate
from commonsync.wire.channel import Channel, accept_channel, connect_channel
from commonsync.wire.ratelimit import Bucket

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("500KiB/s", 500 * 1024),
        ("2MB/s", 2_000_000),
        ("2 MB/s", 2_000_000),
        ("1.5M", 1_500_000),
        ("800kbit/s", 100_000),
        ("100", 100),
        ("3 GiB/s", 3 * 1024**3),
        ("0", 0),
        ("none", 0),
        ("unlimited", 0),
        (4096, 4096),
    ],
)
def test_rates_are_read_as_people_write_them(text: str | int, rate: int) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(format_rate(rate)) == rate


@pytest.mark.parametrize("text", ["fast", "2 parsecs", "-5", "1e9x", "", True, -3])
def test_a_rate_that_is_none_says_how_to_write_it(text: str | int) -> None:
    with pytest.raises(InvalidRequestError):
        parse_rate(text)


def test_format_rate_picks_the_largest_exact_unit() -> None:
    assert format_rate(0) == "none"
    assert format_rate(500 * 1024) == "500 KiB/s"
    assert format_rate(2 * 1024**2) == "2 MiB/s"
    assert format_rate(1000) == "1000 B/s"


@pytest.mark.slow
async def test_a_bucket_keeps_to_its_rate_and_follows_a_change() -> None:
    bucket = Bucket(200_000)
    started = time.monotonic()
    for _ in range(40):  # 40 pieces of 10 kB at 200 kB/s: about 2 s less the burst (50 kB)
        await bucket.take(10_000)
    assert time.monotonic() - started >= (400_000 - bucket.capacity - 10_000) / 200_000
    bucket.set_rate(0)  # no limit: at once
    started = time.monotonic()
    for _ in range(1000):
        await bucket.take(1_000_000)
    assert time.monotonic() - started < 5


async def _pair(
    me: DeviceIdentity, peer: DeviceIdentity
) -> tuple[Channel, Channel, anyio.abc.Listener[anyio.abc.SocketStream]]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted: list[Channel] = []

    async def serve() -> None:
        stream = await listener.listeners[0].accept()  # type: ignore[attr-defined]
        accepted.append(await accept_channel(stream, peer, accept=lambda d: d == me.device_id))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(serve)
        dialled = await connect_channel("127.0.0.1", port, me, accept=lambda d: d == peer.device_id)
    return dialled, accepted[0], listener


async def _transfer(sender: Channel, receiver: Channel, size: int) -> float:
    """Seconds to send ``size`` random bytes as 64 KiB messages from one to the other."""
    payload = os.urandom(64 * 1024)
    started = time.monotonic()
    async with anyio.create_task_group() as tasks:

        async def send() -> None:
            for _ in range(size // len(payload)):
                await sender.send(payload)

        tasks.start_soon(send)
        got = 0
        with anyio.fail_after(60):
            while got < size:
                got += len(await receiver.receive())
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["send", "receive"])
async def test_a_channel_keeps_to_its_limit_either_way(direction: str) -> None:
    me, peer = DeviceIdentity.generate(), DeviceIdentity.generate()
    dialled, accepted, listener = await _pair(me, peer)
    limits = RateLimits(NodeConfig(devices=[DeviceConfig(peer.device_id)]))
    async with listener, dialled, accepted:
        send, receive = limits.buckets(peer.device_id)
        dialled.throttle(send, receive)
        await _transfer(dialled, accepted, 512 * 1024)  # unlimited: the channel works
        rate = 512 * 1024
        config = NodeConfig(
            devices=[DeviceConfig(peer.device_id, **{f"max_{direction}_rate": rate})]
        )
        limits.apply(config)
        size = 1024 * 1024
        sender, receiver = (dialled, accepted) if direction == "send" else (accepted, dialled)
        took = await _transfer(sender, receiver, size)
        burst = 2 * max(b.capacity for b in send + receive)
        assert took >= (size - burst) / rate, f"{took:.2f} s for {size} bytes at {rate} B/s"
        # The overall limit applies as well, and a limit lifted applies at once.
        config.devices[0] = DeviceConfig(peer.device_id)
        config.max_send_rate = config.max_receive_rate = 256 * 1024
        limits.apply(config)
        took = await _transfer(sender, receiver, 512 * 1024)
        assert took >= (512 * 1024 - burst) / (256 * 1024)


@pytest.mark.slow
async def test_a_limit_changed_during_a_transfer_applies_to_it() -> None:
    me, peer = DeviceIdentity.generate(), DeviceIdentity.generate()
    dialled, accepted, listener = await _pair(me, peer)
    limits = RateLimits(NodeConfig(max_send_rate=64 * 1024))
    async with listener, dialled, accepted, anyio.create_task_group() as tasks:
        dialled.throttle(*limits.buckets(peer.device_id))

        async def lift() -> None:
            await anyio.sleep(1)
            limits.apply(NodeConfig())  # no limit any more: the rest goes at once

        tasks.start_soon(lift)
        # 8 MiB at 64 KiB/s would take 128 s; lifted after 1 s, it takes far less.
        took = await _transfer(dialled, accepted, 8 * 1024 * 1024)
        assert 0.9 <= took < 60
