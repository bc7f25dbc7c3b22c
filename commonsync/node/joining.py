"""Joining a folder with an invitation link: the joiner's side, and a member's (SPEC.md §15.9).

The joiner opens a channel with the ``join`` feature to a member device the link names (a
member accepts such a channel from a device it does not know) and sends ``Join``: its name,
and the admission signed with the invitation's key, which only the holder of the link's secret
can make. The member checks it against its log and writes the admission itself: any member
may, so that the admin who invited can be away. It answers ``Joined`` with the folder's key
and both end the channel; from then on the two know each other, and the joiner syncs the
folder like any device, receiving the log (in which it is now a member) first.

A joiner with a short code (SPEC.md §15.10) opens the same channel to a device that may hold
the code (found at a relay by the code's nameplate, or on the LAN), runs the PAKE in it
(``CodeHello`` both ways, ``CodeProof``, ``CodeAnswer``) and so receives the link; the join
then goes on in that channel as above.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from enum import IntEnum
from typing import TypeVar

import anyio

from ..errors import ChannelError, CommonsyncError, ProtocolError
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..formats.messages import CodeAnswer, CodeHello, CodeProof, Join, Joined, JoinStatus, Message
from ..membership.codes import CodeError, CodePake, JoinCode
from ..membership.invitations import sign_admission
from ..membership.links import JoinLink
from ..relay.client import RelayControl, connect_relay, open_code_channel, open_relayed_channel
from ..relay.wire import DEFAULT_RELAY_PORT
from ..wire.channel import Channel, connect_channel
from ..wire.handshake import JOIN_FEATURE
from ..wire.session import Session
from .config import RelayConfig, parse_address
from .open_codes import OpenCodes

log = logging.getLogger(__name__)

#: The whole join conversation, once the channel is up, on either side.
JOIN_TIMEOUT = 20.0
#: Connecting to one address of a member device, handshake included.
CONNECT_TIMEOUT = 5.0


#: What answers a joiner: its device, its public key, its request → the answer to send.
Admit = Callable[[DeviceId, bytes, Join], Awaitable[Joined]]


class JoinRefusedError(CommonsyncError):
    """A member device refused the join; the message says why, for the person joining."""


class CodeRefusedError(JoinRefusedError):
    """The device holding the code's nameplate refused the code (wrong, void, used up)."""


class CodeNotHereError(CommonsyncError):
    """The device reached holds no code at that nameplate: try the next one."""


class CodeStatus(IntEnum):
    """``CodeAnswer.status``."""

    ACCEPTED = 0
    REFUSED = 1
    #: No code open at that nameplate on this device (no attempt was spent).
    NOT_HERE = 2


#: Opens a ``join`` channel to one device that may hold a code; yields the channel and the
#: addresses at which the device was reached (none through a relay).
ChannelOpener = Callable[[], AbstractAsyncContextManager[tuple[Channel, list[str]]]]


async def ask_to_join(
    identity: DeviceIdentity,
    link: JoinLink,
    name: str,
    extra: dict[DeviceId, list[str]],
    own: Mapping[DeviceId, RelayControl] | None = None,
) -> tuple[DeviceId, list[str], Joined]:
    """Reach a member device the link names (at its addresses, then at those in ``extra``,
    e.g. found on the LAN, then through the link's relays: as a stranger, or through this
    device's ``own`` control connection to a relay, by relay ID, where it is a member) and ask
    it to admit this device as ``name``: the device, the addresses that worked (none through
    a relay), and its answer. :class:`JoinRefusedError` if a member refused,
    :class:`~commonsync.errors.ChannelError` (with every attempt) if none could be reached."""
    request = _join_request(identity, link, name)
    failures: list[str] = []
    found = await _ask_directly(identity, link, request, extra, failures)
    if found is None:
        found = await _ask_through_relays(identity, link, request, failures, own or {})
    if found is not None:
        return found
    raise ChannelError(
        "could not reach any device of the folder's members: "
        + "; ".join(failures or ["none listed"])
    )


async def _ask_directly(
    identity: DeviceIdentity,
    link: JoinLink,
    request: Join,
    extra: dict[DeviceId, list[str]],
    failures: list[str],
) -> tuple[DeviceId, list[str], Joined] | None:
    for device, listed in link.devices:
        addresses = list(dict.fromkeys([*listed, *extra.get(device, [])]))
        for address in addresses:
            try:
                channel = await _join_channel(identity, address, device.__eq__)
            except CommonsyncError as exc:
                failures.append(f"{device.short_str} at {address}: {exc}")
                continue
            answer = await _ask_on(channel, request, failures, f"{device.short_str} at {address}")
            if answer is not None:
                return device, [address], answer
    return None


async def _ask_on(
    channel: Channel, request: Join, failures: list[str], where: str
) -> Joined | None:
    """Ask for admission on an open channel, closed after: the answer, or None with why
    added to ``failures`` (the next device may answer); a refusal ends the join."""
    try:
        return await _ask(Session(channel), request)
    except JoinRefusedError:
        raise
    except CommonsyncError as exc:
        failures.append(f"{where}: {exc}")
        return None
    finally:
        await _close(channel)


async def _ask_through_relays(
    identity: DeviceIdentity,
    link: JoinLink,
    request: Join,
    failures: list[str],
    own: Mapping[DeviceId, RelayControl],
) -> tuple[DeviceId, list[str], Joined] | None:
    """The link's member devices through the link's relays, this device connecting to each
    relay as a stranger that comes to join (SPEC.md §14.1, §15.9)."""
    for text in link.relays:
        try:
            relay = RelayConfig.parse(text)
        except CommonsyncError as exc:
            failures.append(f"relay {text}: {exc}")
            continue
        try:
            async with stranger_at_relay(identity, relay, own.get(relay.relay_id)) as control:
                for device, _ in link.devices:
                    where = f"{device.short_str} through relay {relay.relay_id.short_str}"
                    try:
                        channel = await open_relayed_channel(
                            control,
                            identity,
                            device,
                            features=[JOIN_FEATURE],
                            timeout=CONNECT_TIMEOUT,
                        )
                    except CommonsyncError as exc:
                        failures.append(f"{where}: {exc}")
                        continue
                    answer = await _ask_on(channel, request, failures, where)
                    if answer is not None:
                        return device, [], answer
        except JoinRefusedError:
            raise
        except CommonsyncError as exc:
            failures.append(f"relay {relay.relay_id.short_str} at {relay.address}: {exc}")
    return None


async def _join_channel(
    identity: DeviceIdentity, address: str, accept: Callable[[DeviceId], bool]
) -> Channel:
    host, port = parse_address(address)
    return await connect_channel(
        host, port, identity, accept=accept, features=[JOIN_FEATURE], timeout=CONNECT_TIMEOUT
    )


@asynccontextmanager
async def code_channel_on_lan(
    identity: DeviceIdentity, addresses: list[str]
) -> AsyncIterator[tuple[Channel, list[str]]]:
    """A join channel to a device seen on the LAN, whoever it proves to be: the code's PAKE
    decides whether it is the inviter."""
    failures: list[str] = []
    for address in addresses:
        try:
            channel = await _join_channel(identity, address, lambda _device: True)
        except CommonsyncError as exc:
            failures.append(f"{address}: {exc}")
            continue
        yield channel, [address]
        return
    raise ChannelError("a device on the LAN: " + "; ".join(failures))


@asynccontextmanager
async def stranger_at_relay(
    identity: DeviceIdentity, relay: RelayConfig, own: RelayControl | None = None
) -> AsyncIterator[RelayControl]:
    """A control connection to ``relay`` naming the ``join`` feature: a relay admits a
    device that is not one of its members so, for a short while, to reach a member device
    (by its ID, or by a code's nameplate) and join a folder (SPEC.md §14.1).

    ``own`` is this device's control connection to that relay, if it is one of its members
    and connected: it is used instead (and left open), since the relay takes a second
    connection with the same device ID for a reconnection and closes the first, and with it
    the codes this device holds there."""
    if own is not None and not own.closed.is_set():
        yield own
        return
    host, port = parse_address(relay.address, default_port=DEFAULT_RELAY_PORT)
    features = [JOIN_FEATURE]
    async with connect_relay(host, port, identity, relay.relay_id, features=features) as control:
        yield control


@asynccontextmanager
async def code_channel_at_relay(
    identity: DeviceIdentity, relay: RelayConfig, nameplate: int, own: RelayControl | None = None
) -> AsyncIterator[tuple[Channel, list[str]]]:
    """A join channel, through ``relay``, to the device holding ``nameplate`` there (this
    device need not be one of the relay's members to ask that; if it is, ``own`` is its
    control connection there, :func:`stranger_at_relay`)."""
    async with stranger_at_relay(identity, relay, own) as control:
        channel = await open_code_channel(
            control, identity, nameplate, features=[JOIN_FEATURE], timeout=CONNECT_TIMEOUT
        )
        yield channel, []


def _join_request(identity: DeviceIdentity, link: JoinLink, name: str) -> Join:
    signature = sign_admission(
        link.secret, link.folder_id, link.invitation, name, [identity.public_key]
    )
    return Join(link.folder_id, link.invitation, name, signature)


async def _ask(session: Session, request: Join) -> Joined:
    """Send the join request and read the answer (:class:`JoinRefusedError` if refused)."""
    try:
        with anyio.fail_after(JOIN_TIMEOUT):
            await session.send(request)
            answer = await _expect(session, Joined, "an answer to the join")
    except TimeoutError:
        raise ProtocolError(f"no answer to the join within {JOIN_TIMEOUT:g} s") from None
    if answer.status != JoinStatus.ADMITTED:
        raise JoinRefusedError(answer.detail or "the member device refused the join")
    return answer


_M = TypeVar("_M", bound=Message)


async def _expect(session: Session, kind: type[_M], what: str) -> _M:
    try:
        message = await session.receive()
    except anyio.EndOfStream:
        raise ProtocolError(f"the other device closed the channel instead of {what}") from None
    if not isinstance(message, kind):
        raise ProtocolError(f"expected {what}, got {type(message).__name__}")
    return message


async def _close(channel: Channel) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
        await channel.aclose()


async def ask_to_join_with_code(
    identity: DeviceIdentity,
    code: JoinCode,
    name: str,
    openers: Sequence[ChannelOpener],
    *,
    default_name: str,
) -> tuple[DeviceId, list[str], JoinLink, Joined]:
    """Find the device holding ``code`` among those ``openers`` reach (in their order), run
    the PAKE with it, and join with the link it hands over, in the same channel, as ``name``
    (else the link's, else ``default_name``): the device, the addresses that worked, the link
    and the answer. :class:`CodeRefusedError` if the code was refused,
    :class:`JoinRefusedError` if the join was; :class:`ChannelError` (with what every attempt
    said) if no device reached holds the code."""
    failures: list[str] = []
    for opener in openers:
        try:
            async with opener() as (channel, addresses):
                try:
                    session = Session(channel)
                    with anyio.fail_after(JOIN_TIMEOUT):
                        link = await _redeem(session, channel.handshake_hash, code)
                    as_name = name or link.name or default_name
                    answer = await _ask(session, _join_request(identity, link, as_name))
                    return channel.peer, addresses, link, answer
                finally:
                    await _close(channel)
        except JoinRefusedError:
            raise
        except (CommonsyncError, TimeoutError) as exc:  # not there: the next one may hold it
            failures.append(str(exc) or "no answer in time")
            continue
    raise ChannelError(
        f"no device holding code {code.nameplate} could be reached: "
        + "; ".join(failures or ["no relay is configured and no device was found on the LAN"])
    )


async def _redeem(session: Session, handshake_hash: bytes, code: JoinCode) -> JoinLink:
    pake = CodePake(code)
    await session.send(CodeHello(code.nameplate, pake.message))
    try:
        first = await session.receive()
    except anyio.EndOfStream:
        raise ProtocolError("the device closed the channel instead of answering the code") from None
    if isinstance(first, CodeAnswer):
        # Before any proof, a refusal proves nothing about the code (any device can send
        # one): whatever it says, the next device may hold the code.
        raise CodeNotHereError(first.detail or f"no code {code.nameplate} here")
    if not isinstance(first, CodeHello) or first.nameplate != code.nameplate:
        raise ProtocolError(f"expected the code's answer, got {type(first).__name__}")
    try:
        keys = pake.finish(first.pake, handshake_hash)
    except CodeError as exc:
        raise ProtocolError(str(exc)) from None
    await session.send(CodeProof(keys.proof("joiner")))
    answer = await _expect(session, CodeAnswer, "the code's answer")
    if answer.status != CodeStatus.ACCEPTED:
        raise CodeRefusedError(answer.detail or "the code was refused")
    if not keys.check("member", answer.proof):
        # Only a device that knows the code can prove it: this one is in the middle.
        raise ProtocolError("the device's proof of the code is wrong: it is not the inviter")
    try:
        return JoinLink.parse(answer.link)
    except CommonsyncError as exc:
        raise ProtocolError(f"the inviting device sent a malformed link: {exc}") from None


async def serve_join(channel: Channel, admit: Admit, codes: OpenCodes | None = None) -> None:
    """A member's side: a code's PAKE first if the joiner opens with one (``codes`` are the
    device's open codes), then one ``Join``, answered (``admit`` decides); then the channel
    ends. Nothing else is spoken on a join channel."""
    session = Session(channel)
    try:
        with anyio.move_on_after(JOIN_TIMEOUT):
            message = await session.receive()
            if isinstance(message, CodeHello):
                if codes is None or not await _serve_code(session, channel, message, codes):
                    return
                message = await session.receive()
            if isinstance(message, Join):
                answer = await admit(channel.peer, channel.peer_public_key, message)
                await session.send(answer)
    except anyio.EndOfStream:
        pass
    except CommonsyncError as exc:
        log.info("join from %s ended: %s", channel.peer.short_str, exc)
    finally:
        await _close(channel)


async def _serve_code(
    session: Session, channel: Channel, hello: CodeHello, codes: OpenCodes
) -> bool:
    """Run the PAKE for the code at ``hello``'s nameplate; True once the joiner proved it
    (and received the link). Every attempt is reserved before our PAKE message goes out."""
    opened = codes.begin(hello.nameplate)
    if opened is None:
        what = (
            f"the code at {hello.nameplate} has no attempt left (it is void, or being tried)"
            if codes.holds(hello.nameplate)
            else f"no code {hello.nameplate} is open on this device"
        )
        await session.send(CodeAnswer(int(CodeStatus.NOT_HERE), what, b"", ""))
        return False
    outcome = "abandoned"
    try:
        pake = CodePake(opened.code)
        await session.send(CodeHello(hello.nameplate, pake.message))
        keys = pake.finish(hello.pake, channel.handshake_hash)
        proof = await _expect(session, CodeProof, "the code's proof")
        if not keys.check("joiner", proof.proof):
            folder, outcome = opened.folder, "wrong"
            left = codes.end(opened, outcome)
            opened = None
            detail = (
                "wrong code: check it with the person who gave it "
                f"({left} {'attempt' if left == 1 else 'attempts'} left)"
                if left
                else "wrong code, for the last time: the code is now void; ask for a new one"
            )
            log.warning(
                "a wrong code for folder %s was tried from %s (attempts left: %d)",
                folder,
                channel.peer.short_str,
                left,
            )
            await session.send(CodeAnswer(int(CodeStatus.REFUSED), detail, b"", ""))
            return False
        outcome = "right"
        await session.send(
            CodeAnswer(int(CodeStatus.ACCEPTED), "", keys.proof("member"), opened.link)
        )
        log.info("code %d redeemed by %s", hello.nameplate, channel.peer.short_str)
        return True
    except CodeError as exc:
        log.info("code attempt from %s ended: %s", channel.peer.short_str, exc)
        return False
    finally:
        if opened is not None:
            codes.end(opened, outcome)


def refused(detail: str) -> Joined:
    return Joined(int(JoinStatus.REFUSED), detail[:256], "", b"")
