"""Who may use a community relay, and for what (SPEC.md §14.1): delegated admission
(``Vouch``), devices that are not members (strangers that come to join a folder) and the
nameplates of short codes. A real relay server runs in the test's event loop on 127.0.0.1
(``tests/test_relay.py``'s helper) and devices speak to it with the library's client over real
sockets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from commonsyncd.config import ConfigError
from commonsyncd.relay.config import RelayServerConfig
from commonsyncd.relay.server import RelayServer, StrangerLimits, load_vouched

from commonsync import DeviceIdentity
from commonsync.errors import CommonsyncError, RelayError, RelayRefusedError
from commonsync.membership.entries import Role
from commonsync.node import relay_links
from commonsync.relay.client import RelayControl, connect_relay, join_session
from commonsync.relay.wire import MAX_VOUCH_BATCH, MAX_VOUCHED, RefuseReason, Vouch, encode
from commonsync.wire.channel import accept_channel
from commonsync.wire.handshake import JOIN_FEATURE
from tests.test_members_sync import nodes
from tests.test_node import until as node_until
from tests.test_relay import HOST, RELAY, first_invitation, relay, until

pytestmark = pytest.mark.anyio

ADMIN, MEMBER, OTHER, JOINER, JOINER2, JOINER3 = (DeviceIdentity.generate() for _ in range(6))
#: ADMIN is a delegate; MEMBER and OTHER get in only when ADMIN vouches for them.
JOIN = [JOIN_FEATURE]
CONNECTION_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def delegating(path: Path, *delegates: DeviceIdentity) -> Path:
    RelayServerConfig(delegates=[d.device_id for d in delegates]).save(path)
    return path


@asynccontextmanager
async def served(config_file: Path, vouched_file: Path | None = None) -> AsyncIterator[int]:
    """A relay configured by ``config_file`` (read again when it changes, as
    ``commonsync relay serve`` does) on an ephemeral port: its port."""
    server = RelayServer(
        RELAY,
        RelayServerConfig.load(config_file),
        config_file=config_file,
        vouched_file=vouched_file,
    )
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, listener)
        SERVERS.append(server)
        try:
            yield listener.extra(anyio.abc.SocketAttribute.local_port)
        finally:
            SERVERS.remove(server)
            tasks.cancel_scope.cancel()


#: The relays running (tests look at their state).
SERVERS: list[RelayServer] = []


async def drain(stream: anyio.abc.SocketStream) -> int:
    """Read until the relay ends the stream; how many bytes came."""
    received = 0
    try:
        while True:
            received += len(await stream.receive())
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return received


async def ended(control: RelayControl) -> RelayRefusedError:
    """How the relay closed a control connection (its ``Refused`` with request ID 0)."""
    await control.closed.wait()
    assert isinstance(control.error, RelayRefusedError), control.error
    return control.error


# -- delegated admission ------------------------------------------------------------------


async def test_a_delegate_vouches_and_withdraws_and_the_relay_follows(tmp_path: Path) -> None:
    config_file = delegating(tmp_path / "relay.toml", ADMIN)
    vouched_file = tmp_path / "vouched.json"
    async with served(config_file, vouched_file) as port:
        server = SERVERS[-1]
        with anyio.fail_after(20):
            with pytest.raises(RelayRefusedError, match="not one of its members"):
                async with connect_relay(HOST, port, MEMBER, RELAY.device_id):
                    pass
            async with connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin:
                assert admin.takes_vouches
                assert await admin.vouch({MEMBER.device_id, OTHER.device_id}) == 2
                # The set is the device's claim only: the relay learns device IDs, kept
                # across a restart in its state file.
                assert load_vouched(vouched_file) == {
                    ADMIN.device_id: frozenset({MEMBER.device_id, OTHER.device_id})
                }
                async with (
                    connect_relay(HOST, port, MEMBER, RELAY.device_id) as member,
                    connect_relay(HOST, port, OTHER, RELAY.device_id) as other,
                ):
                    await until(lambda: len(server.controls) == 3)
                    # A session between two vouched devices, spliced.
                    token = await member.request_session(OTHER.device_id)
                    invitation = await first_invitation(other)
                    ends: list[anyio.abc.SocketStream] = []

                    async def other_side() -> None:
                        ends.append(await join_session(HOST, port, invitation.token))

                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(other_side)
                        stream = await join_session(HOST, port, token)
                    await stream.send(b"hello")
                    assert await ends[0].receive() == b"hello"
                    # A new set replaces the old one whole: MEMBER is dropped, its control
                    # connection and its session are closed, OTHER stays.
                    assert await admin.vouch({OTHER.device_id}) == 1
                    refusal = await ended(member)
                    assert refusal.reason == RefuseReason.NOT_MEMBER
                    assert "no longer a member" in str(refusal)
                    assert await drain(ends[0]) == 0  # the session was cut
                    for end in (stream, ends[0]):
                        await end.aclose()
                    assert OTHER.device_id in server.controls
                    assert not other.closed.is_set()
                    with pytest.raises(RelayRefusedError, match="not one of its members"):
                        async with connect_relay(HOST, port, MEMBER, RELAY.device_id):
                            pass
                    # The hoster withdraws the delegation (`relay disallow --delegate`): the
                    # running relay reads relay.toml again and closes what it admitted.
                    RelayServerConfig().save(config_file)
                    assert (await ended(other)).reason == RefuseReason.NOT_MEMBER
                    assert (await ended(admin)).reason == RefuseReason.NOT_MEMBER
            assert load_vouched(vouched_file) == {}


async def test_vouched_sets_survive_a_restart(tmp_path: Path) -> None:
    config_file = delegating(tmp_path / "relay.toml", ADMIN)
    vouched_file = tmp_path / "vouched.json"
    async with (
        served(config_file, vouched_file) as port,
        connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin,
    ):
        with anyio.fail_after(20):
            assert await admin.vouch({MEMBER.device_id}) == 1
    # A new relay process on the same state, while no admin is online.
    async with served(config_file, vouched_file) as port:
        server = SERVERS[-1]
        with anyio.fail_after(20):
            async with connect_relay(HOST, port, MEMBER, RELAY.device_id):
                await until(lambda: MEMBER.device_id in server.controls)


async def test_a_set_in_several_batches_and_its_bounds(tmp_path: Path) -> None:
    config_file = delegating(tmp_path / "relay.toml", ADMIN)
    many = {DeviceIdentity.generate().device_id for _ in range(3 * MAX_VOUCH_BATCH + 5)}
    async with (
        served(config_file) as port,
        connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin,
    ):
        server = SERVERS[-1]
        with anyio.fail_after(20):
            assert await admin.vouch(many) == len(many)
            assert server.vouched[ADMIN.device_id] == frozenset(many)
            assert await admin.vouch(set()) == 0  # an empty set: vouches for none
            assert server.vouched[ADMIN.device_id] == frozenset()
            # Past MAX_VOUCHED devices the relay refuses the set (the client will not even
            # send it): INVALID, and the set in force stays as it was.
            with pytest.raises(RelayError, match=f"at most {MAX_VOUCHED}"):
                await admin.vouch([DeviceIdentity.generate().device_id] * (MAX_VOUCHED + 1))
            # A device that sends more batches than that anyway (not this client).
            for i in range(MAX_VOUCHED // MAX_VOUCH_BATCH):
                batch = [i.to_bytes(4, "big") + j.to_bytes(28, "big") for j in range(24)]
                await admin.channel.send(encode(Vouch(77, False, batch)))
            last = {DeviceIdentity.generate().device_id for _ in range(20)}
            with pytest.raises(RelayRefusedError, match=f"at most {MAX_VOUCHED} devices") as big:
                await admin.vouch(last)  # the final batch goes past the bound
            assert big.value.reason == RefuseReason.INVALID
            assert server.vouched[ADMIN.device_id] == frozenset()
            assert await admin.vouch({MEMBER.device_id}) == 1  # the next set starts anew


async def test_only_delegates_vouch(tmp_path: Path) -> None:
    config_file = delegating(tmp_path / "relay.toml", ADMIN)
    RelayServerConfig(members=[MEMBER.device_id], delegates=[ADMIN.device_id]).save(config_file)
    async with (
        served(config_file) as port,
        connect_relay(HOST, port, MEMBER, RELAY.device_id) as member,
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as stranger,
    ):
        with anyio.fail_after(20):
            for device in (member, stranger):
                with pytest.raises(RelayRefusedError, match="not a delegate") as refused:
                    await device.vouch({OTHER.device_id})
                assert refused.value.reason == RefuseReason.NOT_DELEGATE
                assert not device.closed.is_set()  # refused, not thrown out
            assert f"relay allow --delegate {JOINER.device_id}" in str(refused.value)
            assert SERVERS[-1].vouched == {}


def test_a_damaged_vouched_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "vouched.json"
    assert load_vouched(path) == {}
    for text in ("{", json.dumps({"format": 2}), json.dumps({"format": 1, "vouched": {"x": []}})):
        path.write_text(text)
        with pytest.raises(ConfigError, match="remove the file"):
            load_vouched(path)


def test_delegates_round_trip_in_relay_toml(tmp_path: Path) -> None:
    path = delegating(tmp_path / "relay.toml", ADMIN)
    config = RelayServerConfig.load(path)
    assert config.delegates == [ADMIN.device_id]
    assert config.admits(ADMIN.device_id)  # a delegate is a member itself
    assert not config.admits(MEMBER.device_id)
    assert isinstance(RelayServer(RELAY, config), RelayServer)


# -- strangers: devices that come to join a folder ------------------------------------------


async def test_a_stranger_needs_the_join_feature_and_may_only_ask_for_sessions() -> None:
    async with relay([ADMIN.device_id]) as (server, port, _seen):
        with anyio.fail_after(20):
            with pytest.raises(RelayRefusedError, match="not one of its members"):
                async with connect_relay(HOST, port, JOINER, RELAY.device_id):
                    pass
            async with (
                connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin,
                connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as joiner,
            ):
                await until(lambda: JOINER.device_id in server.strangers)
                assert JOINER.device_id not in server.controls  # never a target
                with pytest.raises(RelayRefusedError, match="only members") as claim:
                    await joiner.claim_code()
                assert claim.value.reason == RefuseReason.NOT_MEMBER
                # Connect to a member: granted, and the member is invited (its handshake
                # decides whether it takes a joiner).
                token = await joiner.request_session(ADMIN.device_id)
                invitation = await first_invitation(admin)
                assert (invitation.requester_id, invitation.token) == (JOINER.device_id, token)
                # A member cannot reach a stranger: it is nobody's target.
                with pytest.raises(RelayRefusedError) as offline:
                    await admin.request_session(JOINER.device_id)
                assert offline.value.reason == RefuseReason.OFFLINE


async def test_strangers_at_once_and_their_lifetime() -> None:
    limits = StrangerLimits(connections=2, lifetime=3.0)
    async with relay([ADMIN.device_id], strangers=limits) as (server, port, _seen):
        with anyio.fail_after(20):
            async with (
                connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as first,
                connect_relay(HOST, port, JOINER2, RELAY.device_id, features=JOIN),
            ):
                await until(lambda: len(server.strangers) == 2)
                async with connect_relay(
                    HOST, port, JOINER3, RELAY.device_id, features=JOIN
                ) as third:
                    refusal = await ended(third)
                    assert refusal.reason == RefuseReason.OVERLOADED
                    assert "try again in a minute" in str(refusal)
                # Members are not counted among strangers.
                async with connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin:
                    await until(lambda: ADMIN.device_id in server.controls)
                    assert not admin.closed.is_set()
                    # A stranger's time is up after its lifetime, whatever it does.
                    refusal = await ended(first)
                    assert refusal.reason == RefuseReason.RATE_LIMITED
                    assert "may stay connected 3 s" in str(refusal)
                    assert not admin.closed.is_set()
            await until(lambda: not server.strangers)


async def test_strangers_requests_are_limited_per_source_not_per_device() -> None:
    limits = StrangerLimits(request_burst=3, requests_per_minute=0.01)
    async with (
        relay([ADMIN.device_id], strangers=limits) as (_server, port, _seen),
        connect_relay(HOST, port, ADMIN, RELAY.device_id),
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as one,
        connect_relay(HOST, port, JOINER2, RELAY.device_id, features=JOIN) as two,
    ):
        with anyio.fail_after(20):
            # Every request counts, refused or not, so nameplates cannot be scanned.
            for nameplate in (1, 2):
                with pytest.raises(RelayRefusedError) as unknown:
                    await one.request_code_session(nameplate)
                assert unknown.value.reason == RefuseReason.UNKNOWN_CODE
            await two.request_session(ADMIN.device_id)  # another device, the same source
            for device in (one, two):
                with pytest.raises(RelayRefusedError) as fast:
                    await device.request_code_session(3)
                assert fast.value.reason == RefuseReason.RATE_LIMITED


async def test_strangers_sessions_are_capped_in_all_and_per_member() -> None:
    per_target = StrangerLimits(sessions_per_target=1)
    async with (
        relay([ADMIN.device_id, MEMBER.device_id], strangers=per_target) as (_s, port, _seen),
        connect_relay(HOST, port, ADMIN, RELAY.device_id),
        connect_relay(HOST, port, MEMBER, RELAY.device_id),
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as one,
        connect_relay(HOST, port, JOINER2, RELAY.device_id, features=JOIN) as two,
    ):
        with anyio.fail_after(20):
            await one.request_session(ADMIN.device_id)
            with pytest.raises(RelayRefusedError, match="busy with other joins") as busy:
                await two.request_session(ADMIN.device_id)
            assert busy.value.reason == RefuseReason.TOO_MANY_SESSIONS
            await two.request_session(MEMBER.device_id)  # another member is free
    in_all = StrangerLimits(sessions=1)
    async with (
        relay([ADMIN.device_id, MEMBER.device_id], strangers=in_all) as (_s, port, _seen),
        connect_relay(HOST, port, ADMIN, RELAY.device_id),
        connect_relay(HOST, port, MEMBER, RELAY.device_id) as member,
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as one,
        connect_relay(HOST, port, JOINER2, RELAY.device_id, features=JOIN) as two,
    ):
        with anyio.fail_after(20):
            await one.request_session(ADMIN.device_id)
            with pytest.raises(RelayRefusedError, match="too many joins") as full:
                await two.request_session(MEMBER.device_id)
            assert full.value.reason == RefuseReason.OVERLOADED
            await member.request_session(ADMIN.device_id)  # members are not held back


async def test_a_strangers_session_is_cut_at_its_byte_cap_and_time() -> None:
    limits = StrangerLimits(session_bytes=1000, session_time=3.0)
    async with (
        relay([ADMIN.device_id], strangers=limits) as (_server, port, seen),
        connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin,
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as joiner,
    ):
        with anyio.fail_after(20):
            invitations = admin.invitations()

            async def spliced() -> tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]:
                token = await joiner.request_session(ADMIN.device_id)
                invitation = await anext(invitations)
                ends: list[anyio.abc.SocketStream] = []

                async def member_side() -> None:
                    ends.append(await join_session(HOST, port, invitation.token))

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(member_side)
                    stranger = await join_session(HOST, port, token)
                return stranger, ends[0]

            stranger, member = await spliced()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stranger.send, b"x" * 5000)
                assert await drain(member) == 1000  # what fits, then the session ends
            for stream in (stranger, member):
                await stream.aclose()
            assert len(seen) == 1000
            # A quiet session ends after its time.
            stranger, member = await spliced()
            await stranger.send(b"hello")
            assert await drain(member) == 5
            for stream in (stranger, member):
                await stream.aclose()


# -- nameplates ----------------------------------------------------------------------------


async def test_claims_give_the_smallest_free_nameplate() -> None:
    async with relay([ADMIN.device_id, MEMBER.device_id]) as (server, port, _seen):
        with anyio.fail_after(20):
            async with connect_relay(HOST, port, MEMBER, RELAY.device_id) as member:
                async with connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin:
                    assert [await admin.claim_code() for _ in range(2)] == [1, 2]
                    assert await member.claim_code() == 3
                    await admin.release_code(1)
                    await member.release_code(2)  # not its own: nothing happens
                    await until(lambda: 1 not in server.claims)
                    assert server.claims[2].device == ADMIN.device_id
                    assert await member.claim_code() == 1
                # Its control connection ended: its nameplates are free again.
                await until(lambda: 2 not in server.claims)
                assert await member.claim_code() == 2
                assert await member.claim_code() == 4
                with pytest.raises(RelayRefusedError, match="holds 4 codes") as limit:
                    await member.claim_code()
                assert limit.value.reason == RefuseReason.INVALID
            await until(lambda: not server.claims)


async def test_a_stranger_reaches_the_holder_of_a_nameplate() -> None:
    async with (
        relay([ADMIN.device_id]) as (_server, port, _seen),
        connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin,
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as joiner,
    ):
        with anyio.fail_after(20):
            nameplate = await admin.claim_code()
            token = await joiner.request_code_session(nameplate)
            invitation = await first_invitation(admin)
            assert (invitation.requester_id, invitation.token) == (JOINER.device_id, token)
            with pytest.raises(RelayRefusedError, match="a session with oneself"):
                await admin.request_code_session(nameplate)
            await admin.release_code(nameplate)
            with pytest.raises(RelayRefusedError, match="no device holds that code") as gone:
                await joiner.request_code_session(nameplate)
            assert gone.value.reason == RefuseReason.UNKNOWN_CODE


async def test_a_relay_that_does_not_take_vouches_is_never_sent_one() -> None:
    """A relay of an older version names no ``relay-vouch`` feature in its handshake (and
    would end the connection on an unknown message type): the client sends it nothing."""
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    received: list[bytes] = []

    async def older_relay(stream: anyio.abc.SocketStream) -> None:
        channel = await accept_channel(stream, RELAY, accept=lambda _d: True)
        with contextlib.suppress(anyio.EndOfStream, *CONNECTION_ERRORS, CommonsyncError):
            while True:
                received.append(await channel.receive())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, older_relay)
        with anyio.fail_after(20):
            async with connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin:
                assert not admin.takes_vouches
                with pytest.raises(RelayError, match="does not take vouches"):
                    await admin.vouch({MEMBER.device_id})
        tasks.cancel_scope.cancel()
    assert received == []


async def test_a_new_vouched_set_leaves_a_strangers_join_alone(tmp_path: Path) -> None:
    """A stranger is never admitted, vouched for or not: a change of the sets must not cut
    the join it is in the middle of (only sessions with a device no longer admitted)."""
    config_file = delegating(tmp_path / "relay.toml", ADMIN)
    async with (
        served(config_file) as port,
        connect_relay(HOST, port, ADMIN, RELAY.device_id) as admin,
        connect_relay(HOST, port, JOINER, RELAY.device_id, features=JOIN) as joiner,
    ):
        with anyio.fail_after(20):
            token = await joiner.request_session(ADMIN.device_id)
            invitation = await first_invitation(admin)
            ends: list[anyio.abc.SocketStream] = []

            async def admin_side() -> None:
                ends.append(await join_session(HOST, port, invitation.token))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(admin_side)
                stranger = await join_session(HOST, port, token)
            assert await admin.vouch({MEMBER.device_id}) == 1
            await stranger.send(b"still here")
            assert await ends[0].receive() == b"still here"
            assert not joiner.closed.is_set()
            for stream in (stranger, ends[0]):
                await stream.aclose()


# -- the devices' side: what an admin's node vouches for ----------------------------------


@pytest.mark.slow
async def test_admin_devices_vouch_for_their_folders_members_until_demoted(
    tmp_path: Path,
) -> None:
    """Library nodes: anna (owner) and ben (invited as admin) are both delegates of the
    relay. Each vouches for every device of the folder's members once its log says it is an
    admin; ben, made a writer, withdraws his set (an empty one), anna's stays."""
    config_file = tmp_path / "relay.toml"
    (tmp_path / "anna").mkdir()
    async with nodes(tmp_path, "anna", "ben") as (anna, ben):
        RelayServerConfig(delegates=[anna.device_id, ben.device_id]).save(config_file)
        async with served(config_file) as port:
            server = SERVERS[-1]
            for node in (anna, ben):
                await node.add_relay(f"{RELAY.device_id}@{HOST}:{port}")
            await node_until(lambda: len(server.controls) == 2, "both reach the relay")
            assert server.vouched == {}  # neither administers a folder yet
            await anna.add_folder(tmp_path / "anna", "choir")
            await node_until(
                lambda: server.vouched.get(anna.device_id) == {anna.device_id}, "anna vouches"
            )
            invited = await anna.invite("choir", role=Role.ADMIN, name="Ben", code=False)
            await ben.join(invited["link"], parent=tmp_path)
            both = frozenset({anna.device_id, ben.device_id})
            await node_until(lambda: server.vouched.get(anna.device_id) == both, "anna: ben")
            await node_until(lambda: server.vouched.get(ben.device_id) == both, "ben vouches")
            await anna.set_role("choir", "Ben", Role.WRITER)
            await node_until(
                lambda: server.vouched.get(ben.device_id) == frozenset(), "ben withdraws"
            )
            assert server.vouched[anna.device_id] == both


@pytest.mark.slow
async def test_a_delegation_given_later_takes_effect_without_a_reconnection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anna's device is a plain member, so the relay refuses her set; once the hoster makes
    her a delegate, her device's next offer (every VOUCH_RETRY seconds) is taken."""
    monkeypatch.setattr(relay_links, "VOUCH_RETRY", 0.5)
    config_file = tmp_path / "relay.toml"
    (tmp_path / "anna").mkdir()
    async with nodes(tmp_path, "anna") as (anna,):
        RelayServerConfig(members=[anna.device_id]).save(config_file)
        async with served(config_file) as port:
            server = SERVERS[-1]
            await anna.add_relay(f"{RELAY.device_id}@{HOST}:{port}")
            await anna.add_folder(tmp_path / "anna", "choir")
            await node_until(lambda: anna.device_id in server.controls, "anna connects")
            await anyio.sleep(1)  # refused meanwhile, at least once
            assert server.vouched == {}
            control = server.controls[anna.device_id]
            RelayServerConfig(members=[anna.device_id], delegates=[anna.device_id]).save(
                config_file
            )
            await node_until(
                lambda: server.vouched.get(anna.device_id) == {anna.device_id}, "anna vouches"
            )
            assert server.controls[anna.device_id] is control  # the same connection
