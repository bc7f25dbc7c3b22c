"""Joining a folder with an invitation link: the joiner's side, and a member's (SPEC.md §15.9).

The joiner opens a channel with the ``join`` feature to a member device the link names (a
member accepts such a channel from a device it does not know) and sends ``Join``: its name,
and the admission signed with the invitation's key, which only the holder of the link's secret
can make. The member checks it against its log and writes the admission itself: any member
may, so that the admin who invited can be away. It answers ``Joined`` with the folder's key
and both end the channel; from then on the two know each other, and the joiner syncs the
folder like any device, receiving the log (in which it is now a member) first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from ..errors import ChannelError, CommonsyncError, ProtocolError
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..formats.messages import Join, Joined, JoinStatus
from ..membership.invitations import sign_admission
from ..membership.links import JoinLink
from ..wire.channel import Channel, connect_channel
from ..wire.handshake import JOIN_FEATURE
from ..wire.session import Session
from .config import parse_address

log = logging.getLogger(__name__)

#: The whole join conversation, once the channel is up, on either side.
JOIN_TIMEOUT = 20.0
#: Connecting to one address of a member device, handshake included.
CONNECT_TIMEOUT = 5.0


#: What answers a joiner: its device, its public key, its request → the answer to send.
Admit = Callable[[DeviceId, bytes, Join], Awaitable[Joined]]


class JoinRefusedError(CommonsyncError):
    """A member device refused the join; the message says why, for the person joining."""


async def ask_to_join(
    identity: DeviceIdentity, link: JoinLink, name: str, extra: dict[DeviceId, list[str]]
) -> tuple[DeviceId, list[str], Joined]:
    """Reach a member device the link names (at its addresses, then at those in ``extra``,
    e.g. found on the LAN) and ask it to admit this device as ``name``: the device, the
    addresses that worked, and its answer. :class:`JoinRefusedError` if a member refused,
    :class:`~commonsync.errors.ChannelError` (with every attempt) if none could be reached."""
    signature = sign_admission(
        link.secret, link.folder_id, link.invitation, name, [identity.public_key]
    )
    request = Join(link.folder_id, link.invitation, name, signature)
    failures: list[str] = []
    for device, listed in link.devices:
        addresses = list(dict.fromkeys([*listed, *extra.get(device, [])]))
        for address in addresses:
            try:
                host, port = parse_address(address)
                channel = await connect_channel(
                    host,
                    port,
                    identity,
                    accept=device.__eq__,
                    features=[JOIN_FEATURE],
                    timeout=CONNECT_TIMEOUT,
                )
            except CommonsyncError as exc:
                failures.append(f"{device.short_str} at {address}: {exc}")
                continue
            try:
                answer = await _exchange(channel, request)
            except CommonsyncError as exc:
                failures.append(f"{device.short_str} at {address}: {exc}")
                continue
            if answer.status != JoinStatus.ADMITTED:
                raise JoinRefusedError(answer.detail or "the member device refused the join")
            return device, [address], answer
    raise ChannelError(
        "could not reach any device of the folder's members: "
        + "; ".join(failures or ["none listed"])
    )


async def _exchange(channel: Channel, request: Join) -> Joined:
    session = Session(channel)
    try:
        with anyio.fail_after(JOIN_TIMEOUT):
            await session.send(request)
            async for message in session:
                if isinstance(message, Joined):
                    return message
                raise ProtocolError(f"expected an answer to the join, got {type(message).__name__}")
        raise ProtocolError("the member device closed the channel without answering")
    except TimeoutError:
        raise ProtocolError(f"no answer to the join within {JOIN_TIMEOUT:g} s") from None
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await channel.aclose()


async def serve_join(channel: Channel, admit: Admit) -> None:
    """A member's side: read one ``Join``, answer it (``admit`` decides), end the channel."""
    session = Session(channel)
    try:
        with anyio.move_on_after(JOIN_TIMEOUT):
            async for message in session:
                if not isinstance(message, Join):
                    break  # nothing else is spoken on a join channel
                answer = await admit(channel.peer, channel.peer_public_key, message)
                await session.send(answer)
                break
    except CommonsyncError as exc:
        log.info("join from %s ended: %s", channel.peer.short_str, exc)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await channel.aclose()


def refused(detail: str) -> Joined:
    return Joined(int(JoinStatus.REFUSED), detail[:256], "", b"")
