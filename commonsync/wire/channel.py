"""The secure channel over any anyio byte stream: handshake, then encrypted messages.

:func:`open_channel` runs the sans-IO :class:`~commonsync.wire.handshake.ChannelHandshake` over
a stream (TCP by default: :func:`connect_channel` and :func:`accept_channel`), and returns a
:class:`Channel`: an ``anyio`` object stream of ``bytes`` messages, each sealed by the
transport core. It works under trio and asyncio alike, since it only awaits anyio's streams.

Back-pressure is the stream's: :meth:`Channel.send` returns once the kernel took the bytes, so a
peer that stops reading stalls the sender instead of filling its memory, and
:meth:`Channel.receive` reads at most one frame ahead.

Cancellation never leaves half a frame on the wire: a send cancelled while it waits for its
turn sends nothing, and once its frame has started the frame is finished first (the
cancellation takes effect when it returns). Only a frame that the peer does not take within
:data:`SEND_GRACE` seconds after the cancellation (it stopped reading), or that
:meth:`Channel.aclose` cuts short, leaves the channel unable to send.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import ChannelError, HandshakeError, HandshakeTimeoutError
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from .handshake import AcceptPolicy, ChannelHandshake, Established, State
from .ratelimit import Bucket, ThrottledStream
from .transport import END_OF_STREAM, MAX_MESSAGE_SIZE

#: Seconds a handshake may take before it is abandoned.
HANDSHAKE_TIMEOUT = 10.0
_MIN_READ = 64 * 1024
_MAX_READ = 4 * 1024 * 1024
#: Below this, a frame's length and ciphertext go out in one write; above, copying the
#: ciphertext to join them costs more than a second write.
_COALESCE = 64 * 1024
_CONNECTION_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
#: Seconds a frame already started may still take after its sender was cancelled (by a
#: deadline) before it is cut short and the channel can no longer send.
SEND_GRACE = 5.0


class Channel(anyio.abc.ObjectStream[bytes]):
    """An established, authenticated, encrypted channel to one peer device.

    Messages are ``bytes`` of up to :data:`~commonsync.wire.transport.MAX_MESSAGE_SIZE`.
    :meth:`receive` raises :class:`anyio.EndOfStream` after the peer's authenticated end of
    stream, and a :class:`ChannelError` subclass (after closing the connection) on anything a
    peer must not send: a tampered, reordered, replayed, oversized or truncated frame.
    """

    def __init__(self, stream: anyio.abc.ByteStream, established: Established) -> None:
        self._stream = stream
        self._core = established.transport
        self.peer: DeviceId = established.peer
        self.peer_public_key = established.peer_public_key
        self.handshake_hash = established.handshake_hash
        self.version = established.version
        self.features = established.features
        self.initiator = established.initiator
        self._send_lock = anyio.Lock()
        self._receive_lock = anyio.Lock()
        self._eof_sent = False
        self._send_broken = False
        self._closed = False
        #: The scope of the frame being written (shielded), so that closing can cut it short.
        self._frame: anyio.CancelScope | None = None
        #: Bytes written to and read from the connection (frames, headers and tags included),
        #: for a daemon's counters and benchmarks.
        self.bytes_sent = 0
        self.bytes_received = 0
        #: When bytes last arrived (``anyio.current_time()``): a peer's progress, also in
        #: the middle of a long frame.
        self.last_received = anyio.current_time()

    def throttle(self, send: Sequence[Bucket], receive: Sequence[Bucket]) -> None:
        """Keep this channel's bytes to bandwidth limits from now on: every bucket of
        ``send`` for what it writes, of ``receive`` for what it reads (a limit changed on a
        bucket applies at once). Call it before the channel is used by several tasks (a
        session's start): it puts a :class:`~commonsync.wire.ratelimit.ThrottledStream`
        under the channel."""
        self._stream = ThrottledStream(self._stream, send, receive)

    async def send(self, item: bytes) -> None:
        """Send one message.

        Cancelled while it waits for an earlier send, it sends nothing. Once its frame has
        started it is shielded: the frame is written whole and the cancellation takes effect
        at the caller's next checkpoint, so that other senders can go on (a requester that
        gives up must not break the channel for everyone). A frame that the peer does not
        take within :data:`SEND_GRACE` seconds past the caller's deadline, or that
        :meth:`aclose` cuts short, leaves part of a frame on the wire: the channel then
        refuses to send (like trio's ``SSLStream``): close it and open a new one."""
        async with self._send_lock:
            if self._eof_sent or self._closed:
                raise anyio.ClosedResourceError
            if self._send_broken:
                raise ChannelError("an earlier send was interrupted; this channel cannot send")
            # Read before the shield hides it: -inf when the caller is cancelled already.
            deadline = anyio.current_effective_deadline()
            head, sealed = self._core.seal_parts(item)
            self._send_broken = True
            with anyio.CancelScope(shield=True) as frame:
                if deadline != math.inf:
                    frame.deadline = max(deadline, anyio.current_time()) + SEND_GRACE
                self._frame = frame
                try:
                    if len(sealed) < _COALESCE:
                        await self._stream.send(head + sealed)
                    else:
                        await self._stream.send(head)
                        await self._stream.send(sealed)
                except _CONNECTION_ERRORS as exc:
                    raise ChannelError(f"the connection to {self.peer} broke: {exc}") from exc
                finally:
                    self._frame = None
            if frame.cancelled_caught:
                # The caller's cancellation (if any) wins; else the channel was closed.
                await anyio.lowlevel.checkpoint()
                raise ChannelError(
                    f"a message to {self.peer} was cut short (the peer stopped reading, or "
                    "the channel was closed); this channel cannot send"
                )
            self._send_broken = False
            self.bytes_sent += len(head) + len(sealed)

    async def receive(self) -> bytes:
        async with self._receive_lock:
            if self._closed:
                raise anyio.ClosedResourceError
            while True:
                try:
                    message = self._core.next_message()
                except ChannelError:
                    await self.aclose()
                    raise
                if message is END_OF_STREAM:
                    raise anyio.EndOfStream
                if message is not None:
                    assert isinstance(message, bytes)
                    return message
                wanted = min(max(self._core.bytes_wanted, _MIN_READ), _MAX_READ)
                try:
                    data = await self._stream.receive(wanted)
                except anyio.EndOfStream:
                    data = b""
                except _CONNECTION_ERRORS as exc:
                    await self.aclose()
                    raise ChannelError(f"the connection to {self.peer} broke: {exc}") from exc
                if data:
                    self.bytes_received += len(data)
                    self.last_received = anyio.current_time()
                self._core.receive_data(data)

    async def send_eof(self) -> None:
        """End our direction with the authenticated final frame; the peer can still send."""
        async with self._send_lock:
            if self._eof_sent or self._closed or self._send_broken:
                return
            self._eof_sent = True
            data = self._core.close()
            # If the peer is gone or the stream cannot half-close, there is nothing to tell.
            with contextlib.suppress(*_CONNECTION_ERRORS, NotImplementedError):
                await self._stream.send(data)
                await self._stream.send_eof()

    async def aclose(self) -> None:
        """Send our end of stream if we have not, and close the connection."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await self.send_eof()
        self._closed = True
        if self._frame is not None:
            self._frame.cancel()  # a frame the peer does not take holds the stream no longer
        await self._stream.aclose()

    def __repr__(self) -> str:
        return f"<Channel to {self.peer}>"


async def open_channel(
    stream: anyio.abc.ByteStream,
    identity: DeviceIdentity,
    *,
    initiator: bool,
    accept: AcceptPolicy,
    features: Sequence[str] = (),
    timeout: float = HANDSHAKE_TIMEOUT,
    max_message_size: int = MAX_MESSAGE_SIZE,
    accept_joiners: bool = False,
) -> Channel:
    """Run the handshake over ``stream`` and return the channel.

    ``accept`` decides whether a peer's (proven) device ID is welcome. On any failure the
    stream is closed and a :class:`HandshakeError` subclass says why:
    :class:`PeerRefusedError` when we refused the peer, :class:`RefusedByPeerError` when it
    refused us, :class:`HandshakeTimeoutError` when it took longer than ``timeout`` seconds.
    ``max_message_size`` is the largest message the peer may send (frames announcing more are
    refused before they are buffered). ``accept_joiners``: see :class:`ChannelHandshake`.
    """
    core = ChannelHandshake(
        identity,
        initiator=initiator,
        accept=accept,
        features=features,
        max_message_size=max_message_size,
        accept_joiners=accept_joiners,
    )
    try:
        with anyio.fail_after(timeout):
            await _run_handshake(core, stream)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        if isinstance(exc, TimeoutError):
            raise HandshakeTimeoutError(
                f"the peer did not complete the handshake within {timeout:g} s"
            ) from None
        if isinstance(exc, _CONNECTION_ERRORS):
            raise HandshakeError(f"the connection broke during the handshake: {exc}") from exc
        raise
    return Channel(stream, core.result())


async def _run_handshake(core: ChannelHandshake, stream: anyio.abc.ByteStream) -> None:
    while True:
        if out := core.data_to_send():
            await stream.send(out)
        if core.state is State.ESTABLISHED:
            return
        try:
            data = await stream.receive(max(core.bytes_wanted, _MIN_READ))
        except anyio.EndOfStream:
            data = b""
        try:
            core.receive_data(data)
        except HandshakeError:
            # Tell the peer why (a refusal verdict) before giving up, if we can.
            if out := core.data_to_send():
                with anyio.move_on_after(1), contextlib.suppress(*_CONNECTION_ERRORS):
                    await stream.send(out)
            raise


async def connect_channel(
    host: str,
    port: int,
    identity: DeviceIdentity,
    *,
    accept: AcceptPolicy,
    features: Sequence[str] = (),
    timeout: float = HANDSHAKE_TIMEOUT,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> Channel:
    """Open a TCP connection to a peer and the channel over it, as the initiator."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        message = f"no connection to {host}:{port} within {timeout:g} s"
        raise HandshakeTimeoutError(message) from None
    except OSError as exc:
        raise ChannelError(f"cannot connect to {host}:{port}: {exc}") from exc
    return await open_channel(
        stream,
        identity,
        initiator=True,
        accept=accept,
        features=features,
        timeout=timeout,
        max_message_size=max_message_size,
    )


async def accept_channel(
    stream: anyio.abc.ByteStream,
    identity: DeviceIdentity,
    *,
    accept: AcceptPolicy,
    features: Sequence[str] = (),
    timeout: float = HANDSHAKE_TIMEOUT,
    max_message_size: int = MAX_MESSAGE_SIZE,
    accept_joiners: bool = False,
) -> Channel:
    """The responder's side over an accepted connection (e.g. from ``listener.serve``)."""
    return await open_channel(
        stream,
        identity,
        initiator=False,
        accept=accept,
        features=features,
        timeout=timeout,
        max_message_size=max_message_size,
        accept_joiners=accept_joiners,
    )
