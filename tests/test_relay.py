"""The community relay (SPEC.md §14), server and client over real sockets on 127.0.0.1.

The relay server runs in the test's event loop (``commonsyncd.relay.server.RelayServer``, the code
``commonsync relay serve`` runs) with small limits where a test needs them; devices use the
library's client. ``tests/test_relay_daemon.py`` drives the real processes end to end.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from commonsyncd.config import ConfigError
from commonsyncd.relay.config import RelayLimits, RelayServerConfig
from commonsyncd.relay.server import RelayServer, TokenBucket

from commonsync import DeviceIdentity
from commonsync.errors import ChannelError, RelayError, RelayJoinError, RelayRefusedError
from commonsync.formats import encoding
from commonsync.relay.client import (
    RelayControl,
    accept_relayed_channel,
    connect_relay,
    join_session,
    open_relayed_channel,
)
from commonsync.relay.wire import (
    MAX_RELAY_MESSAGE,
    PREAMBLE_SIZE,
    Granted,
    Invitation,
    Refused,
    RefuseReason,
    decode,
    encode,
    preamble,
)
from commonsync.wire.channel import accept_channel, connect_channel

pytestmark = pytest.mark.anyio

RELAY = DeviceIdentity.generate()
ALICE, BOB, CAROL, DAVE = (DeviceIdentity.generate() for _ in range(4))
MEMBERS = [ALICE.device_id, BOB.device_id, DAVE.device_id]
HOST = "127.0.0.1"
#: Plaintext that must never cross the relay in the clear.
MARKER = b"plaintext that only the two devices may read. " * 2000


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@asynccontextmanager
async def relay(
    members: list[object] | None = None, **options: object
) -> AsyncIterator[tuple[RelayServer, int, bytearray]]:
    """A relay on an ephemeral port; what it forwards is recorded in the bytearray."""
    limits = {k: options.pop(k) for k in list(options) if hasattr(RelayLimits, k)}
    config = RelayServerConfig(
        members=list(MEMBERS if members is None else members),  # type: ignore[arg-type]
        limits=RelayLimits(**limits),  # type: ignore[arg-type]
    )
    seen = bytearray()
    server = RelayServer(RELAY, config, tap=seen.extend, **options)  # type: ignore[arg-type]
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, listener)
        yield server, port, seen
        tasks.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    """The relay registers a device just after the device sees its handshake succeed."""
    while not condition():
        await anyio.sleep(0.01)


async def first_invitation(relay_control: RelayControl) -> Invitation:
    async for invitation in relay_control.invitations():
        return invitation
    raise AssertionError("the control connection ended without an invitation")


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_two_members_talk_end_to_end_and_the_relay_sees_only_ciphertext() -> None:
    async with (
        relay() as (server, port, seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
        connect_relay(HOST, port, BOB, RELAY.device_id) as bob,
    ):
        assert alice.relay_id == RELAY.device_id
        received: list[bytes] = []

        async def bob_side() -> None:
            invitation = await first_invitation(bob)
            assert invitation.requester_id == ALICE.device_id
            channel = await accept_relayed_channel(
                bob, BOB, invitation, accept=lambda d: d == ALICE.device_id
            )
            assert channel.peer == ALICE.device_id  # proven by the handshake, end to end
            received.append(await channel.receive())
            await channel.send(b"and back")
            await channel.aclose()

        with anyio.fail_after(20):
            await until(lambda: len(server.controls) == 2)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bob_side)
                channel = await open_relayed_channel(alice, ALICE, BOB.device_id)
                assert channel.peer == BOB.device_id
                await channel.send(MARKER)
                assert await channel.receive() == b"and back"
                await channel.aclose()
            while server._session_total:  # the relay forgets the session once both left
                await anyio.sleep(0.01)
        assert received == [MARKER]
        assert len(seen) > len(MARKER)
        assert MARKER[:40] not in bytes(seen)
    assert server.controls == {}


async def test_a_token_is_single_use_and_a_guessed_one_gets_nothing() -> None:
    async with (
        relay() as (server, port, seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
        connect_relay(HOST, port, BOB, RELAY.device_id) as bob,
    ):
        with anyio.fail_after(20):
            await until(lambda: len(server.controls) == 2)
            # A guessed token: the relay answers "unknown" and closes; nothing is forwarded.
            with pytest.raises(RelayJoinError, match="does not know this session token"):
                await join_session(HOST, port, os.urandom(32))
            raw = await anyio.connect_tcp(HOST, port)
            await raw.send(preamble(os.urandom(32)) + b"anything after the preamble")
            assert await raw.receive() == b"\x01"
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await raw.receive()
            await raw.aclose()

            token = await alice.request_session(BOB.device_id)
            assert (await first_invitation(bob)).token == token
            streams: list[anyio.abc.SocketStream] = []

            async def join() -> None:
                streams.append(await join_session(HOST, port, token))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(join)
                tasks.start_soon(join)
            assert len(streams) == 2
            await streams[0].send(b"ping through the splice")
            assert await streams[1].receive() == b"ping through the splice"
            # Both sides joined: the token is gone, a third connection gets nothing.
            with pytest.raises(RelayJoinError, match="does not know this session token"):
                await join_session(HOST, port, token)
            for stream in streams:
                await stream.aclose()
        assert bytes(seen) == b"ping through the splice"


async def test_the_other_side_must_join_in_time() -> None:
    async with (
        relay(join_timeout=0.5) as (server, port, _seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
        connect_relay(HOST, port, BOB, RELAY.device_id),
    ):
        with anyio.fail_after(20):
            await until(lambda: len(server.controls) == 2)
            token = await alice.request_session(BOB.device_id)
            started = time.monotonic()
            with pytest.raises(RelayJoinError, match="did not join the session in time"):
                await join_session(HOST, port, token)
            assert 0.3 < time.monotonic() - started < 5
            assert server._session_total == 0
            # A token nobody joined expires too.
            token = await alice.request_session(BOB.device_id)
            await anyio.sleep(0.6)
            with pytest.raises(RelayJoinError, match="does not know"):
                await join_session(HOST, port, token)
            assert server._session_total == 0


async def test_refusals_say_why() -> None:
    async with (
        relay(max_sessions_per_device=3) as (server, port, _seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
        connect_relay(HOST, port, BOB, RELAY.device_id) as bob,
        connect_relay(HOST, port, DAVE, RELAY.device_id) as dave,
    ):
        with anyio.fail_after(20):
            await until(lambda: len(server.controls) == 3)
            with pytest.raises(RelayRefusedError, match="not connected to the relay") as offline:
                await alice.request_session(CAROL.device_id)
            assert offline.value.reason == RefuseReason.OFFLINE
            with pytest.raises(RelayRefusedError, match="a session with oneself"):
                await alice.request_session(ALICE.device_id)
            await alice.request_session(BOB.device_id)
            await alice.request_session(BOB.device_id)
            # Two tokens nobody used yet are the most one device may hold for another.
            with pytest.raises(RelayRefusedError, match="are waiting") as waiting:
                await alice.request_session(BOB.device_id)
            assert waiting.value.reason == RefuseReason.TOO_MANY_SESSIONS
            await dave.request_session(BOB.device_id)  # bob's third session
            with pytest.raises(RelayRefusedError, match="too many sessions") as busy:
                await bob.request_session(DAVE.device_id)
            assert busy.value.reason == RefuseReason.TOO_MANY_SESSIONS


async def test_invitations_are_rate_limited() -> None:
    async with (
        relay(connect_burst=2, connects_per_minute=1) as (server, port, _seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
        connect_relay(HOST, port, BOB, RELAY.device_id),
        connect_relay(HOST, port, DAVE, RELAY.device_id),
    ):
        with anyio.fail_after(20):
            await until(lambda: len(server.controls) == 3)
            for _ in range(10):  # asking for offline devices costs nothing
                with pytest.raises(RelayRefusedError, match="not connected"):
                    await alice.request_session(CAROL.device_id)
            await alice.request_session(BOB.device_id)
            await alice.request_session(DAVE.device_id)
            with pytest.raises(RelayRefusedError, match="too many requests") as fast:
                await alice.request_session(BOB.device_id)
            assert fast.value.reason == RefuseReason.RATE_LIMITED


async def test_a_non_member_is_refused_until_allowed(tmp_path: Path) -> None:
    config_file = tmp_path / "relay.toml"
    RelayServerConfig(members=list(MEMBERS)).save(config_file)
    async with relay(config_file=config_file) as (server, port, _seen):
        with anyio.fail_after(20):
            with pytest.raises(RelayRefusedError, match="not one of its members") as refused:
                async with connect_relay(HOST, port, CAROL, RELAY.device_id):
                    pass
            assert refused.value.reason == RefuseReason.NOT_MEMBER
            assert f"commonsync relay allow {CAROL.device_id}" in str(refused.value)
            # `commonsync relay allow` rewrites the file; the running relay reads it again.
            RelayServerConfig(members=[*MEMBERS, CAROL.device_id]).save(config_file)
            async with connect_relay(HOST, port, CAROL, RELAY.device_id):
                await until(lambda: CAROL.device_id in server.controls)


async def test_the_relay_id_is_pinned() -> None:
    impostor = DeviceIdentity.generate()
    async with relay() as (_server, port, _seen):
        with anyio.fail_after(20), pytest.raises(RelayError, match="not the configured relay"):
            async with connect_relay(HOST, port, ALICE, impostor.device_id):
                pass


async def test_the_relay_refuses_devices_beyond_its_capacity() -> None:
    async with (
        relay(max_control_connections=1) as (server, port, _seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id),
    ):
        await until(lambda: ALICE.device_id in server.controls)
        async with connect_relay(HOST, port, BOB, RELAY.device_id) as bob:
            with anyio.fail_after(20), pytest.raises(RelayRefusedError, match="at capacity"):
                async for _ in bob.invitations():
                    pass
        assert list(server.controls) == [ALICE.device_id]


async def test_protocol_errors_close_only_that_control_connection() -> None:
    async with (
        relay() as (server, port, _seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
    ):
        with anyio.fail_after(20):
            for bad in (
                b"\xc1 not msgpack",
                encoding.pack([32, 1, b"short"]),
                encode(Granted(1, b"t" * 32)),  # only relays send this
            ):
                channel = await connect_channel(
                    HOST, port, BOB, accept=lambda d: d == RELAY.device_id
                )
                await channel.send(bad)
                answer = decode(await channel.receive())
                assert isinstance(answer, Refused)
                assert (answer.request_id, answer.reason) == (0, RefuseReason.PROTOCOL_ERROR)
                with pytest.raises(anyio.EndOfStream):
                    await channel.receive()
                await channel.aclose()
            # An oversized frame is refused before it is buffered.
            channel = await connect_channel(HOST, port, BOB, accept=lambda d: d == RELAY.device_id)
            await channel.send(b"x" * (MAX_RELAY_MESSAGE + 1000))
            with pytest.raises((anyio.EndOfStream, ChannelError)):
                await channel.receive()
            await channel.aclose()
            # Alice's control connection was never disturbed.
            with pytest.raises(RelayRefusedError, match="not connected"):
                await alice.request_session(CAROL.device_id)
            await until(lambda: list(server.controls) == [ALICE.device_id])


async def test_keep_alives_and_dead_connections() -> None:
    async with relay(idle_timeout=0.6) as (server, port, _seen):
        with anyio.fail_after(20):
            # A device that pings often stays connected past the relay's idle timeout ...
            async with connect_relay(
                HOST, port, ALICE, RELAY.device_id, ping_interval=0.1
            ) as alice:
                await anyio.sleep(1.5)
                assert not alice.closed.is_set()
                assert ALICE.device_id in server.controls
            # ... one that stays silent is closed by the relay.
            async with connect_relay(HOST, port, BOB, RELAY.device_id, ping_interval=60) as bob:
                with pytest.raises(RelayError, match="closed the control connection"):
                    async for _ in bob.invitations():
                        pass

    # A relay that never answers is given up on by the device.
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def mute_relay(stream: anyio.abc.SocketStream) -> None:
        await accept_channel(stream, RELAY, accept=lambda _d: True)
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, mute_relay)
        with anyio.fail_after(20):
            async with connect_relay(
                HOST, port, ALICE, RELAY.device_id, ping_interval=0.1, idle_timeout=0.5
            ) as alice:
                with pytest.raises(RelayError, match=r"has not answered for 0\.5 s"):
                    async for _ in alice.invitations():
                        pass
                with pytest.raises(RelayError, match="has not answered"):
                    await alice.request_session(BOB.device_id)
        tasks.cancel_scope.cancel()


async def test_a_session_bandwidth_limit() -> None:
    async with (
        relay(session_bytes_per_second=1_000_000) as (server, port, _seen),
        connect_relay(HOST, port, ALICE, RELAY.device_id) as alice,
        connect_relay(HOST, port, BOB, RELAY.device_id),
    ):
        with anyio.fail_after(20):
            await until(lambda: len(server.controls) == 2)
            token = await alice.request_session(BOB.device_id)
            streams: list[anyio.abc.SocketStream] = []

            async def join() -> None:
                streams.append(await join_session(HOST, port, token))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(join)
                tasks.start_soon(join)
            data = os.urandom(800_000)
            started = time.monotonic()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(streams[0].send, data)
                received = bytearray()
                while len(received) < len(data):
                    received += await streams[1].receive()
            assert bytes(received) == data
            assert time.monotonic() - started > 0.6  # 800 kB at 1 MB/s: 0.8 s, less a burst
            for stream in streams:
                await stream.aclose()


async def test_a_slow_or_broken_greeting_costs_the_relay_nothing_lasting() -> None:
    async with relay() as (server, port, _seen):
        with anyio.fail_after(20):
            # Half a preamble, then gone; a wrong protocol version.
            with socket.create_connection((HOST, port)) as raw:
                raw.sendall(preamble(b"t" * 32)[: PREAMBLE_SIZE // 2])
            raw_stream = await anyio.connect_tcp(HOST, port)
            bad = bytearray(preamble(b"t" * 32))
            bad[16] = 9
            await raw_stream.send(bytes(bad))
            assert await raw_stream.receive() == b"\x03"
            await raw_stream.aclose()
            await anyio.sleep(0.1)
            assert server._greeting == 0
            async with connect_relay(HOST, port, ALICE, RELAY.device_id):
                await until(lambda: ALICE.device_id in server.controls)


async def test_errors_in_the_block_come_out_as_they_are() -> None:
    async with relay() as (_server, port, _seen):
        with anyio.fail_after(20), pytest.raises(LookupError, match="from the block"):
            async with connect_relay(HOST, port, ALICE, RELAY.device_id):
                raise LookupError("from the block")


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.5)
    assert bucket.take(1.0)
    assert not bucket.full(1.0)
    assert bucket.full(3.0)


def test_relay_configuration_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    config = RelayServerConfig(
        listen="127.0.0.1:9", open=True, members=[ALICE.device_id], limits=RelayLimits(5)
    )
    config.save(path)
    assert RelayServerConfig.load(path) == config
    for text, problem in [
        ("open = 1", "open has the wrong type"),
        ('members = ["nope"]', "56 letters"),
        ("[limits]\nmax_sessions = -1", "must be positive"),
        ("[limits]\nbogus = 1", "not a known limit"),
        ('listen = "host:99999"', "no valid port"),
        ("open = [", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            RelayServerConfig.load(path)
