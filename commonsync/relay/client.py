"""A device's side of a community relay: the control connection, and sessions through it.

Two devices that cannot reach each other directly (behind NAT, no address known) both keep a
control connection to a relay they are members of. To reach the other, a device asks the
relay for a session (:meth:`RelayControl.request_session`); the relay invites the other
device, both open a fresh connection to the relay with the single-use token
(:func:`join_session`), and the relay splices the two byte streams. The ordinary channel
handshake then runs end to end through the splice, so the relay forwards only ciphertext and
cannot impersonate either device: each side pins the other's device ID, exactly as on a
direct connection. SPEC.md §14 is the protocol; this module is its anyio client (trio or
asyncio)::

    async with connect_relay(host, port, me, relay_id) as relay:
        channel = await open_relayed_channel(relay, me, target)   # as the initiator
        ...
        async for invitation in relay.invitations():              # as the responder
            channel = await accept_relayed_channel(relay, me, invitation, accept=known)

The control connection is the same authenticated channel as between devices: the device
pins the relay's ID, the relay admits only its members. It carries only small messages
(:mod:`commonsync.relay.wire`), so it accepts only small frames. Keep-alives go both ways:
the device pings every :data:`PING_INTERVAL` seconds and gives up on a relay silent for
:data:`IDLE_TIMEOUT`, so a dead relay is noticed even when TCP says nothing.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.abc

from ..errors import (
    CommonsyncError,
    RefusedByPeerError,
    RelayError,
    RelayJoinError,
    RelayProtocolError,
    RelayRefusedError,
)
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..wire.channel import HANDSHAKE_TIMEOUT, Channel, connect_channel, open_channel
from ..wire.handshake import AcceptPolicy, PeerRefusedError
from . import wire as relaywire
from .wire import Connect, Granted, Invitation, Ping, Pong, Refused, RefuseReason

log = logging.getLogger(__name__)

#: Seconds between the device's pings on an idle control connection.
PING_INTERVAL = 20.0
#: A control connection on which nothing arrived for this long is dead (3 missed pongs).
IDLE_TIMEOUT = 60.0
#: How long the relay has to answer a ``Connect``.
REQUEST_TIMEOUT = 10.0
#: The relay's default join timeout (SPEC.md §14): how long it keeps a token for the second
#: device. A joining device waits this long plus a margin for the relay's answer.
JOIN_TIMEOUT = 10.0
JOIN_WAIT = JOIN_TIMEOUT + 5.0
#: Invitations buffered while the device is busy joining others; more are dropped (their
#: tokens expire at the relay, and the requester asks again).
MAX_WAITING_INVITATIONS = 16
_CONNECTION_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

_JOIN_TEXT = {
    relaywire.JoinStatus.UNKNOWN_TOKEN: "the relay does not know this session token (unknown, "
    "expired or already used)",
    relaywire.JoinStatus.TIMEOUT: "the other device did not join the session in time",
    relaywire.JoinStatus.UNSUPPORTED: "the relay does not speak this relay protocol version",
}


@dataclass
class _Request:
    done: anyio.Event = field(default_factory=anyio.Event)
    token: bytes = b""
    error: CommonsyncError | None = None


class RelayControl:
    """A live control connection to one relay (see :func:`connect_relay`)."""

    def __init__(
        self,
        channel: Channel,
        host: str,
        port: int,
        *,
        ping_interval: float = PING_INTERVAL,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.channel = channel
        #: The relay's ID, as proven in the handshake.
        self.relay_id: DeviceId = channel.peer
        #: Where session connections go: the relay's control address.
        self.host = host
        self.port = port
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._requests: dict[int, _Request] = {}
        self._next_request = 0
        send, receive = anyio.create_memory_object_stream[Invitation](MAX_WAITING_INVITATIONS)
        self._invitations_in, self._invitations_out = send, receive
        #: Why the connection ended (None while it runs, or after a clean close).
        self.error: CommonsyncError | None = None
        self.closed = anyio.Event()

    # -- what a device does --------------------------------------------------------------

    async def request_session(self, target: DeviceId, *, timeout: float = REQUEST_TIMEOUT) -> bytes:
        """Ask the relay for a session with ``target``; its single-use token.

        Raises :class:`RelayRefusedError` if the relay refuses (the target is not connected,
        a limit was reached, ...), :class:`RelayError` if the relay does not answer or the
        control connection ends first."""
        if self.closed.is_set():
            raise self.error or RelayError(f"the connection to relay {self._name} is closed")
        self._next_request = self._next_request % relaywire.U32 + 1
        request_id = self._next_request
        request = self._requests[request_id] = _Request()
        try:
            await self.channel.send(relaywire.encode(Connect(request_id, target.digest)))
            with anyio.fail_after(timeout):
                await request.done.wait()
        except TimeoutError:
            raise RelayError(
                f"relay {self._name} did not answer a session request within {timeout:g} s"
            ) from None
        finally:
            self._requests.pop(request_id, None)
        if request.error is not None:
            raise request.error
        return request.token

    async def invitations(self) -> AsyncIterator[Invitation]:
        """The relay's invitations, as they come. Ends when the connection ends: quietly if
        it was closed on purpose, else with the error that ended it."""
        async with self._invitations_out:
            async for invitation in self._invitations_out:
                yield invitation
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self._finish(None)
        with anyio.CancelScope(shield=True):
            await self.channel.aclose()

    # -- the connection ------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return self.relay_id.short_str

    async def run(self) -> None:
        """Read the relay's messages and keep the connection alive, until it ends. A
        connection's error is not raised: it lands in :attr:`error` and ends
        :meth:`invitations` (and any waiting :meth:`request_session`)."""
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._keep_alive)
                self._finish(await self._read())
                tasks.cancel_scope.cancel()
        finally:
            self._finish(None)
            with anyio.CancelScope(shield=True):
                await self.channel.aclose()

    async def _read(self) -> CommonsyncError:
        """Serve the relay's messages; the error that ended the connection."""
        try:
            while True:
                await self._receive_one()
        except CommonsyncError as exc:
            return exc
        except anyio.EndOfStream:
            return RelayError(f"relay {self._name} closed the control connection")
        except _CONNECTION_ERRORS as exc:
            return RelayError(f"the connection to relay {self._name} broke: {exc}")

    async def _receive_one(self) -> None:
        with anyio.move_on_after(self._idle_timeout) as idle:
            data = await self.channel.receive()
        if idle.cancelled_caught:
            raise RelayError(f"relay {self._name} has not answered for {self._idle_timeout:g} s")
        message = relaywire.decode(data)
        if isinstance(message, Granted | Refused) and message.request_id != 0:
            request = self._requests.get(message.request_id)
            if request is None:
                return  # an answer to a request we gave up on
            if isinstance(message, Granted):
                request.token = message.token
            else:
                request.error = _refusal(self._name, message)
            request.done.set()
        elif isinstance(message, Refused):
            raise _refusal(self._name, message, closing=True)
        elif isinstance(message, Invitation):
            try:
                self._invitations_in.send_nowait(message)
            except anyio.WouldBlock:
                log.info("relay %s: too many invitations waiting; one dropped", self._name)
        elif isinstance(message, Ping):
            await self.channel.send(relaywire.encode(Pong(message.nonce)))
        elif not isinstance(message, Pong):
            raise RelayProtocolError(
                f"relay {self._name} sent {type(message).__name__}, which only devices send"
            )

    async def _keep_alive(self) -> None:
        # A failed ping needs no action here: the reader meets the same broken connection
        # (or, at worst, the silence) and says why the connection ended.
        with contextlib.suppress(CommonsyncError, *_CONNECTION_ERRORS):
            while True:
                await anyio.sleep(self._ping_interval)
                await self.channel.send(relaywire.encode(Ping(secrets.randbelow(relaywire.U32))))

    def _finish(self, error: CommonsyncError | None) -> None:
        if self.closed.is_set():
            return
        self.error = error
        self.closed.set()
        self._invitations_in.close()
        ended = error or RelayError(f"the connection to relay {self._name} was closed")
        for request in self._requests.values():
            request.error = ended
            request.done.set()


def _refusal(name: str, message: Refused, *, closing: bool = False) -> RelayRefusedError:
    try:
        reason_text = RefuseReason(message.reason).text
    except ValueError:
        reason_text = f"reason {message.reason}"
    what = "closed the control connection" if closing else "refused the session"
    detail = f": {message.detail}" if message.detail and message.detail != reason_text else ""
    return RelayRefusedError(f"relay {name} {what} ({reason_text}){detail}", message.reason)


@contextlib.asynccontextmanager
async def connect_relay(
    host: str,
    port: int,
    identity: DeviceIdentity,
    relay_id: DeviceId,
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
    ping_interval: float = PING_INTERVAL,
    idle_timeout: float = IDLE_TIMEOUT,
) -> AsyncIterator[RelayControl]:
    """Open the control connection to the relay ``relay_id`` at ``host:port``, and keep it
    (reading, pinging) while the block runs; it is closed when the block ends. The block is
    not interrupted when the connection ends: :meth:`RelayControl.invitations` ends then
    (and :attr:`RelayControl.closed` is set).

    Raises :class:`RelayRefusedError` when the relay does not admit this device,
    :class:`RelayError` when the relay at that address is not ``relay_id``, and the
    channel's errors (:class:`~commonsync.errors.ChannelError`, ...) when it cannot be
    reached."""
    try:
        channel = await connect_channel(
            host,
            port,
            identity,
            accept=lambda d: d == relay_id,
            timeout=timeout,
            max_message_size=relaywire.MAX_RELAY_MESSAGE,
        )
    except PeerRefusedError as exc:
        raise RelayError(
            f"the relay at {host}:{port} is {exc.device_id}, not the configured relay "
            f"{relay_id}; check the relay's ID (`commonsync relay id` on the relay)"
        ) from None
    except RefusedByPeerError:
        raise RelayRefusedError(
            f"relay {relay_id.short_str} refused this device ({identity.device_id}): it is not "
            "one of its members; ask its hoster to run "
            f"`commonsync relay allow {identity.device_id}`",
            RefuseReason.NOT_MEMBER,
        ) from None
    control = RelayControl(
        channel, host, port, ping_interval=ping_interval, idle_timeout=idle_timeout
    )
    error: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(control.run)
        try:
            yield control
        except Exception as exc:
            error = exc  # raised below, as it is, not wrapped in the task group's group
        finally:
            tasks.cancel_scope.cancel()
            await control.aclose()
    if error is not None:
        raise error


async def join_session(
    host: str, port: int, token: bytes, *, timeout: float = JOIN_WAIT
) -> anyio.abc.SocketStream:
    """Open a session connection to the relay with ``token`` and wait until the other
    device joined; the stream then carries that device's bytes (run the channel handshake
    over it). Raises :class:`RelayJoinError` if the relay does not splice it."""
    preamble = relaywire.preamble(token)
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
            try:
                await stream.send(preamble)
                answer = await stream.receive(1)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                raise
    except TimeoutError:
        raise RelayJoinError(
            f"the relay at {host}:{port} did not start the session within {timeout:g} s"
        ) from None
    except anyio.EndOfStream:
        raise RelayJoinError(f"the relay at {host}:{port} closed the session connection") from None
    except _CONNECTION_ERRORS as exc:
        raise RelayJoinError(f"cannot join a session at the relay {host}:{port}: {exc}") from exc
    try:
        status = relaywire.join_status(answer)
    except RelayProtocolError:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
    if status is not relaywire.JoinStatus.JOINED:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise RelayJoinError(_JOIN_TEXT[status])
    return stream


async def open_relayed_channel(
    relay: RelayControl,
    identity: DeviceIdentity,
    target: DeviceId,
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Channel:
    """A channel to ``target`` through ``relay``, as the initiator: only ``target`` is
    accepted at the other end, proven by the handshake (the relay cannot stand in)."""
    token = await relay.request_session(target)
    stream = await join_session(relay.host, relay.port, token)
    return await open_channel(
        stream, identity, initiator=True, accept=lambda d: d == target, timeout=timeout
    )


async def accept_relayed_channel(
    relay: RelayControl,
    identity: DeviceIdentity,
    invitation: Invitation,
    *,
    accept: AcceptPolicy,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Channel:
    """Join the session an invitation offers and run the handshake as the responder;
    ``accept`` decides on the requester's proven ID, as for a direct connection."""
    stream = await join_session(relay.host, relay.port, invitation.token)
    return await open_channel(stream, identity, initiator=False, accept=accept, timeout=timeout)


__all__ = [
    "IDLE_TIMEOUT",
    "JOIN_TIMEOUT",
    "PING_INTERVAL",
    "RelayControl",
    "accept_relayed_channel",
    "connect_relay",
    "join_session",
    "open_relayed_channel",
]
