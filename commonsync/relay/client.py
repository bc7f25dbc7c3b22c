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

A relay also lets someone join a folder with a short code (SPEC.md §14.1, §15.9): the
inviting member claims a *nameplate* (:meth:`RelayControl.claim_code`) and waits for
invitations; the joiner, who need not be a member of the relay, connects naming the ``join``
feature (``connect_relay(..., features=[JOIN_FEATURE])``) and opens a channel to whoever holds
the nameplate (:func:`open_code_channel`), in which the code's PAKE then runs::

    async with connect_relay(host, port, joiner, relay_id, features=[JOIN_FEATURE]) as relay:
        channel = await open_code_channel(relay, joiner, nameplate)

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
from collections.abc import AsyncIterator, Callable, Collection, Sequence
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
from ..wire.handshake import JOIN_FEATURE, AcceptPolicy, PeerRefusedError
from . import wire as relaywire
from .wire import (
    ClaimCode,
    CodeClaimed,
    Connect,
    ConnectCode,
    Granted,
    Invitation,
    Ping,
    Pong,
    Refused,
    RefuseReason,
    RelayMessage,
    ReleaseCode,
    Vouch,
    Vouched,
)

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
    """A request waiting for its answer: a token (``Granted``), a nameplate
    (``CodeClaimed``) or an error (``Refused``, or the connection ended)."""

    #: The message that grants it: Granted for a session, CodeClaimed for a claim.
    answer: type[RelayMessage]
    done: anyio.Event = field(default_factory=anyio.Event)
    token: bytes = b""
    nameplate: int = 0
    #: ``Vouched``: the size of the set now in force.
    vouched: int = 0
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
        self._vouch_lock = anyio.Lock()
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
        request = await self._ask(
            lambda request_id: Connect(request_id, target.digest),
            Granted,
            "a session request",
            timeout,
        )
        return request.token

    async def claim_code(self, *, timeout: float = REQUEST_TIMEOUT) -> int:
        """Reserve a nameplate on the relay for a short join code (SPEC.md §14.1, §15.9):
        the number, held until :meth:`release_code` or until this connection ends. Whoever
        asks for a session with it (:meth:`request_code_session`) reaches this device, as an
        :meth:`invitations` item like any other.

        Raises :class:`RelayRefusedError` if the relay refuses (this device is not a member,
        it holds as many nameplates as the relay allows, the relay is full), and
        :class:`RelayError` as :meth:`request_session` does."""
        request = await self._ask(ClaimCode, CodeClaimed, "a code claim", timeout)
        return request.nameplate

    async def release_code(self, nameplate: int) -> None:
        """Give a nameplate back (the join is done or abandoned), so that the next claim may
        get the same short number. Best effort and unanswered: on a closed or broken
        connection it does nothing (the relay releases a connection's nameplates when it
        ends anyway). A nameplate out of 1 … 9999 is a :class:`RelayProtocolError`."""
        message = relaywire.encode(ReleaseCode(nameplate))
        if self.closed.is_set():
            return
        with contextlib.suppress(CommonsyncError, *_CONNECTION_ERRORS):
            await self.channel.send(message)

    async def request_code_session(
        self, nameplate: int, *, timeout: float = REQUEST_TIMEOUT
    ) -> bytes:
        """Ask the relay for a session with whichever device holds ``nameplate``; its
        single-use token (join it with :func:`join_session`, or use
        :func:`open_code_channel`). Who that device is, only the handshake that follows
        tells, and only the code's PAKE authenticates it.

        Raises :class:`RelayRefusedError` with reason ``UNKNOWN_CODE`` when no device holds
        that nameplate (the code was mistyped, or its giver stopped waiting), with another
        reason for the relay's limits, and :class:`RelayError` as :meth:`request_session`."""
        request = await self._ask(
            lambda request_id: ConnectCode(request_id, nameplate),
            Granted,
            "a code session request",
            timeout,
        )
        return request.token

    @property
    def takes_vouches(self) -> bool:
        """Whether the relay named :data:`~commonsync.relay.wire.VOUCH_FEATURE` in its
        handshake (an older relay would end the connection on a ``Vouch``)."""
        return relaywire.VOUCH_FEATURE in self.channel.features

    async def vouch(
        self, devices: Collection[DeviceId], *, timeout: float = REQUEST_TIMEOUT
    ) -> int:
        """Tell the relay the whole set of devices this device vouches for, replacing the
        set it sent before (SPEC.md §14.1); the number of devices the relay now holds for
        it. Only a delegate of the relay's hoster may: :class:`RelayRefusedError` with
        reason ``NOT_DELEGATE`` otherwise. :class:`RelayError` if the relay does not take
        vouches (:attr:`takes_vouches`) or as :meth:`request_session`."""
        if not self.takes_vouches:
            raise RelayError(f"relay {self._name} does not take vouches (an older version)")
        if len(devices) > relaywire.MAX_VOUCHED:
            raise RelayError(
                f"{len(devices)} devices to vouch for; a relay takes at most "
                f"{relaywire.MAX_VOUCHED}"
            )
        digests = sorted({d.digest for d in devices})
        step = relaywire.MAX_VOUCH_BATCH
        batches = [digests[i : i + step] for i in range(0, len(digests), step)] or [[]]
        async with self._vouch_lock:  # one set at a time: batches must not interleave
            for batch in batches[:-1]:
                await self._send(Vouch(self._new_request_id(), False, batch))
            request = await self._ask(
                lambda request_id: Vouch(request_id, True, batches[-1]),
                Vouched,
                "a vouch",
                timeout,
            )
        return request.vouched

    async def _send(self, message: RelayMessage) -> None:
        if self.closed.is_set():
            raise self.error or RelayError(f"the connection to relay {self._name} is closed")
        try:
            await self.channel.send(relaywire.encode(message))
        except _CONNECTION_ERRORS as exc:
            raise RelayError(f"the connection to relay {self._name} broke: {exc}") from None

    def _new_request_id(self) -> int:
        self._next_request = self._next_request % relaywire.U32 + 1
        return self._next_request

    async def _ask(
        self,
        make: Callable[[int], RelayMessage],
        answer: type[RelayMessage],
        what: str,
        timeout: float,
    ) -> _Request:
        """Send the request ``make(request_id)`` builds and wait for its one answer
        (``answer`` or ``Refused``)."""
        if self.closed.is_set():
            raise self.error or RelayError(f"the connection to relay {self._name} is closed")
        request_id = self._new_request_id()
        message = relaywire.encode(make(request_id))
        request = self._requests[request_id] = _Request(answer)
        try:
            await self.channel.send(message)
            with anyio.fail_after(timeout):
                await request.done.wait()
        except TimeoutError:
            raise RelayError(
                f"relay {self._name} did not answer {what} within {timeout:g} s"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise RelayError(f"the connection to relay {self._name} broke: {exc}") from None
        finally:
            self._requests.pop(request_id, None)
        if request.error is not None:
            raise request.error
        return request

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
        if isinstance(message, Granted | CodeClaimed | Vouched | Refused) and message.request_id:
            request = self._requests.get(message.request_id)
            if request is None:
                return  # an answer to a request we gave up on
            if not isinstance(message, request.answer | Refused):
                raise RelayProtocolError(
                    f"relay {self._name} answered a request with {type(message).__name__}, "
                    f"not {request.answer.__name__}"
                )
            if isinstance(message, Granted):
                request.token = message.token
            elif isinstance(message, CodeClaimed):
                request.nameplate = message.nameplate
            elif isinstance(message, Vouched):
                request.vouched = message.devices
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
        elif isinstance(message, Granted | CodeClaimed | Vouched):
            raise RelayProtocolError(
                f"relay {self._name} sent {type(message).__name__} with request ID 0, which "
                "no request has"
            )
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
    what = "closed the control connection" if closing else "refused the request"
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
    features: Sequence[str] = (),
) -> AsyncIterator[RelayControl]:
    """Open the control connection to the relay ``relay_id`` at ``host:port``, and keep it
    (reading, pinging) while the block runs; it is closed when the block ends. The block is
    not interrupted when the connection ends: :meth:`RelayControl.invitations` ends then
    (and :attr:`RelayControl.closed` is set).

    ``features`` go into the channel handshake. A device that is not a member of the relay
    names :data:`~commonsync.wire.handshake.JOIN_FEATURE`: the relay then admits it for a
    short while to join a folder, and nothing else (SPEC.md §14.1: ``ConnectCode`` and
    ``Connect`` to a member, no claims, no invitations for it).

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
            features=features,
            timeout=timeout,
            max_message_size=relaywire.MAX_RELAY_MESSAGE,
        )
    except PeerRefusedError as exc:
        raise RelayError(
            f"the relay at {host}:{port} is {exc.device_id}, not the configured relay "
            f"{relay_id}; check the relay's ID (`commonsync relay id` on the relay)"
        ) from None
    except RefusedByPeerError:
        if JOIN_FEATURE in features:
            # Asking for `relay allow` would be no help: a joiner has no business as a member.
            raise RelayRefusedError(
                f"relay {relay_id.short_str} does not let devices that are not its members "
                "join a folder through it; try another device or relay of the invitation, or "
                "join from a network where a member device is reachable",
                RefuseReason.NOT_MEMBER,
            ) from None
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
    features: Sequence[str] = (),
) -> Channel:
    """A channel to ``target`` through ``relay``, as the initiator: only ``target`` is
    accepted at the other end, proven by the handshake (the relay cannot stand in).
    ``features`` go into the handshake: a joiner holding an invitation link names
    :data:`~commonsync.wire.handshake.JOIN_FEATURE` to reach a member device through a relay
    it is not a member of."""
    token = await relay.request_session(target)
    stream = await join_session(relay.host, relay.port, token)
    return await open_channel(
        stream,
        identity,
        initiator=True,
        accept=lambda d: d == target,
        features=features,
        timeout=timeout,
    )


async def open_code_channel(
    relay: RelayControl,
    identity: DeviceIdentity,
    nameplate: int,
    *,
    features: Sequence[str] = (JOIN_FEATURE,),
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Channel:
    """A channel, through ``relay``, to the device that holds ``nameplate`` (the first part
    of a short join code), as the initiator naming ``features``.

    Any responder is accepted: whoever holds a nameplate is not known in advance, so the
    handshake only proves *which* device answered (:attr:`Channel.peer`); the PAKE over the
    rest of the code, run next on this channel, is what shows it is the one that gave the
    code. Raises :class:`RelayRefusedError` (reason ``UNKNOWN_CODE``: nobody holds it),
    :class:`RelayJoinError` and the handshake's errors."""
    token = await relay.request_code_session(nameplate)
    stream = await join_session(relay.host, relay.port, token)
    return await open_channel(
        stream, identity, initiator=True, accept=lambda _d: True, features=features, timeout=timeout
    )


async def accept_relayed_channel(
    relay: RelayControl,
    identity: DeviceIdentity,
    invitation: Invitation,
    *,
    accept: AcceptPolicy,
    timeout: float = HANDSHAKE_TIMEOUT,
    accept_joiners: bool = False,
) -> Channel:
    """Join the session an invitation offers and run the handshake as the responder;
    ``accept`` decides on the requester's proven ID, as for a direct connection.
    ``accept_joiners`` also accepts a requester that names
    :data:`~commonsync.wire.handshake.JOIN_FEATURE` (see
    :class:`~commonsync.wire.handshake.ChannelHandshake`): the caller must then speak nothing
    but the join with it (look at :attr:`Channel.features`)."""
    stream = await join_session(relay.host, relay.port, invitation.token)
    return await open_channel(
        stream,
        identity,
        initiator=False,
        accept=accept,
        timeout=timeout,
        accept_joiners=accept_joiners,
    )


__all__ = [
    "IDLE_TIMEOUT",
    "JOIN_TIMEOUT",
    "PING_INTERVAL",
    "REQUEST_TIMEOUT",
    "RelayControl",
    "accept_relayed_channel",
    "connect_relay",
    "join_session",
    "open_code_channel",
    "open_relayed_channel",
]
