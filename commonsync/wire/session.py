"""A protocol session: typed wire messages over a channel, with flow control.

:class:`Session` sends and receives :mod:`commonsync.formats.messages` values over a
:class:`~commonsync.wire.channel.Channel`, and enforces what the codec alone cannot:

- **Flow control.** At most :data:`MAX_OUTSTANDING_BYTES` of requested chunk data may be
  outstanding each way. :meth:`Session.send` of a :class:`ChunkRequest` waits until the budget
  allows it; a peer that asks for more than the budget is overloading us, and the session ends
  with ``Close(OVERLOADED)``. Within that budget, what we ask for at once follows the link:
  about :data:`TARGET_LATENCY` seconds of the rate measured on it (never less than one
  request), so that a slow link is not asked for minutes of data at once.
- **Progress, not deadlines.** A request is not timed: a peer that sends at 10 KB/s is slow,
  not gone. What counts is whether bytes arrive while the peer owes us data
  (:meth:`Session.stalled_for`); :meth:`Session.wait_progressing` gives up after
  ``stall_timeout`` seconds without a single byte.
- **Request matching.** A response must answer a request that is outstanding.
- **Containment.** A malformed or unknown message ends this session only: the peer is told why
  with a ``Close`` message, the channel is closed, and :class:`ProtocolError` is raised.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import anyio

from ..errors import ChannelError, PeerOverloadError, PeerStalledError, ProtocolError
from ..formats import messages
from ..formats.hashing import blake2b
from ..formats.keys import FolderKey, Purpose
from ..formats.messages import (
    MAX_BATCH_BYTES,
    ChunkBatchRequest,
    ChunkBatchResponse,
    ChunkRequest,
    ChunkResponse,
    Close,
    CloseReason,
    Message,
)
from .channel import Channel

#: The requested chunk bytes that may be outstanding in each direction (SPEC.md, §12).
MAX_OUTSTANDING_BYTES = 64 * 1024 * 1024
#: Seconds without any byte from a peer that owes us requested data before what waits on it
#: is given up (however slow, a link that moves is never given up).
STALL_TIMEOUT = 30.0
#: What we ask for at once aims at this many seconds of the link's measured rate.
TARGET_LATENCY = 4.0
#: What we ask for at once before the link's rate is measured.
INITIAL_WINDOW = 8 * 1024 * 1024
#: Busy time a rate sample spans at least (shorter ones are too noisy on fast links).
_RATE_SAMPLE = 0.05


class SessionClosedError(ChannelError):
    """The peer ended the session with a reason other than a normal close."""

    def __init__(self, reason: int, detail: str) -> None:
        try:
            name = CloseReason(reason).name.lower().replace("_", " ")
        except ValueError:
            name = f"reason {reason}"
        super().__init__(f"the peer closed the session ({name}): {detail}")
        self.reason = reason
        self.detail = detail


class Session:
    """One protocol session with one peer. Iterate it (or call :meth:`receive`) for the peer's
    messages; iteration ends when the peer closes normally."""

    def __init__(
        self,
        channel: Channel,
        *,
        max_outstanding: int = MAX_OUTSTANDING_BYTES,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.channel = channel
        self.max_outstanding = max_outstanding
        self.stall_timeout = stall_timeout
        self._next_request_id = 0
        self._requested: dict[int, _Asked] = {}  # our requests in flight, by ID
        self._requested_bytes = 0
        self._queued_bytes = 0  # requests waiting for room in the window
        self._budget_changed = anyio.Event()
        self._asked: dict[int, _Asked] = {}  # the peer's requests we have not answered
        self._asked_bytes = 0
        self._closed = False
        # Progress: requests on the wire and unanswered, and since when some have been.
        self._written: set[int] = set()
        self._waiting_since = 0.0
        # The receive rate while the peer owes us data: the current busy stretch began at
        # (time, bytes received then); busy time and bytes not yet in a sample.
        self._busy: tuple[float, int] | None = None
        self._sample_time = 0.0
        self._sample_bytes = 0
        self._rate: float | None = None

    @property
    def outstanding_bytes(self) -> int:
        """Chunk bytes we requested and have not received yet."""
        return self._requested_bytes

    @property
    def rate(self) -> float | None:
        """Bytes per second received while the peer owed us data (None: not measured yet)."""
        return self._rate

    @property
    def window(self) -> int:
        """The requested bytes we let be outstanding at once now (SPEC.md §12): about
        :data:`TARGET_LATENCY` seconds at the measured rate, within the budget."""
        if self._rate is None:
            return min(INITIAL_WINDOW, self.max_outstanding)
        return max(1, min(self.max_outstanding, int(self._rate * TARGET_LATENCY)))

    def awaiting(self, request_id: int) -> bool:
        """Whether our request ``request_id`` went out and is still unanswered."""
        return request_id in self._written

    def stalled_for(self) -> float:
        """Seconds the peer has sent nothing at all while it owed us data (0 if it owes us
        nothing): the measure of a silent peer, whatever the link's speed."""
        if not self._written:
            return 0.0
        since = max(self._waiting_since, self.channel.last_received)
        return max(0.0, anyio.current_time() - since)

    def expected_wait(self, size: int) -> float | None:
        """Seconds a new request for ``size`` bytes should take to be answered at the measured
        rate, behind what is already asked for (None: no rate measured yet)."""
        if not self._rate:
            return None
        return (self._requested_bytes + self._queued_bytes + size) / self._rate

    async def wait_progressing(self, event: anyio.Event) -> bool:
        """Wait for ``event`` as long as the peer makes progress: False once it sent nothing
        for :attr:`stall_timeout` seconds while owing us data."""
        while not event.is_set():
            remaining = self.stall_timeout - self.stalled_for()
            if remaining <= 0:
                return False
            with anyio.move_on_after(remaining):
                await event.wait()
        return True

    def new_request_id(self) -> int:
        self._next_request_id = (self._next_request_id + 1) % 2**32
        return self._next_request_id

    # -- sending -----------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send one message; a chunk request first waits for room in the window (raising
        :class:`PeerStalledError` if the peer stalls meanwhile). A request whose send fails
        or is cancelled before it went out is not counted as outstanding."""
        if self._closed:
            raise anyio.ClosedResourceError
        if isinstance(message, ChunkRequest | ChunkBatchRequest):
            await self._reserve(message.request_id, _asked_for(message))
            try:
                await self.channel.send(messages.encode(message))
            except BaseException:
                self._release(message.request_id)
                raise
            if message.request_id in self._requested:  # else answered already
                if not self._written:
                    self._waiting_since = anyio.current_time()
                    self._busy = (self._waiting_since, self.channel.bytes_received)
                self._written.add(message.request_id)
            return
        if isinstance(message, ChunkResponse | ChunkBatchResponse):
            asked = self._asked.pop(message.request_id, None)
            if asked is None or (type(message) is ChunkResponse) != (asked.sizes is None):
                raise ProtocolError(f"no such request {message.request_id} to answer")
            self._asked_bytes -= asked.total
        await self.channel.send(messages.encode(message))

    async def _reserve(self, request_id: int, asked: _Asked) -> None:
        if request_id in self._requested:
            raise ProtocolError(f"request {request_id} is already in flight")
        self._queued_bytes += asked.total
        try:
            while self._over_window(asked.total):
                if self._budget_changed.is_set():
                    self._budget_changed = anyio.Event()
                if not await self.wait_progressing(self._budget_changed):
                    raise PeerStalledError(
                        f"{self.channel.peer.short_str} sent nothing for "
                        f"{self.stall_timeout:g} s while it owed us "
                        f"{self._requested_bytes} bytes"
                    )
        finally:
            self._queued_bytes -= asked.total
        self._requested[request_id] = asked
        self._requested_bytes += asked.total

    def _over_window(self, size: int) -> bool:
        total = self._requested_bytes + size
        if total > self.max_outstanding:
            return True
        return bool(self._requested_bytes) and total > self.window

    def _release(self, request_id: int) -> None:
        """Forget a request that is over (answered, or never sent): its bytes are free."""
        asked = self._requested.pop(request_id, None)
        if asked is not None:
            self._requested_bytes -= asked.total
            self._budget_changed.set()
        self._written.discard(request_id)

    async def close(self, reason: CloseReason = CloseReason.NORMAL, detail: str = "") -> None:
        """Tell the peer we are done (and why), and close the channel."""
        if not self._closed:
            self._closed = True
            close = messages.encode(Close(int(reason), _truncate(detail, 256)))
            # If the channel is already broken, closing it is all that is left to do.
            with (
                anyio.move_on_after(1, shield=True),
                contextlib.suppress(ChannelError, anyio.ClosedResourceError),
            ):
                await self.channel.send(close)
        await self.channel.aclose()

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self) -> Message:
        """The peer's next message. Raises :class:`anyio.EndOfStream` after a normal close,
        :class:`SessionClosedError` after any other, :class:`ProtocolError` (having closed
        the session) if the peer broke the protocol."""
        if self._closed:
            raise anyio.EndOfStream
        data = await self.channel.receive()
        try:
            message = messages.decode(data)
            self._account(message)
        except ProtocolError as exc:
            overload = isinstance(exc, PeerOverloadError)
            reason = CloseReason.OVERLOADED if overload else CloseReason.PROTOCOL_ERROR
            await self.close(reason, str(exc))
            raise
        if isinstance(message, Close):
            self._closed = True
            await self.channel.aclose()
            if message.reason == CloseReason.NORMAL:
                raise anyio.EndOfStream
            raise SessionClosedError(message.reason, message.detail)
        return message

    def _account(self, message: Message) -> None:
        if isinstance(message, ChunkResponse | ChunkBatchResponse):
            asked = self._requested.get(message.request_id)
            if asked is None:
                raise ProtocolError(f"response to request {message.request_id}, never sent")
            if (type(message) is ChunkResponse) != (asked.sizes is None):
                raise ProtocolError(
                    f"request {message.request_id} answered with the wrong kind of response, "
                    f"{type(message).__name__}"
                )
            _check_answer(message, asked)
            self._measure()
            self._release(message.request_id)
            if not self._written:
                self._busy = None
        elif isinstance(message, ChunkRequest | ChunkBatchRequest):
            if message.request_id in self._asked:
                raise ProtocolError(f"request {message.request_id} is already in flight")
            asked = _asked_for(message)
            if self._asked_bytes + asked.total > self.max_outstanding:
                raise PeerOverloadError(
                    f"the peer requested over the budget of {self.max_outstanding} bytes "
                    "outstanding"
                )
            self._asked[message.request_id] = asked
            self._asked_bytes += asked.total

    def _measure(self) -> None:
        """Add the busy stretch up to this response to the rate (bytes received while the
        peer owed us data, over that time), once enough of it is gathered."""
        if self._busy is None:
            return
        now, received = anyio.current_time(), self.channel.bytes_received
        started, received_then = self._busy
        self._sample_time += now - started
        self._sample_bytes += received - received_then
        self._busy = (now, received)
        if self._sample_time >= _RATE_SAMPLE:
            sample = self._sample_bytes / self._sample_time
            self._rate = sample if self._rate is None else (self._rate + sample) / 2
            self._sample_time, self._sample_bytes = 0.0, 0

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


@dataclass(frozen=True)
class _Asked:
    """What a request in flight asked for: its bytes in all, and each chunk's size for a
    batch (None for a single :class:`ChunkRequest`)."""

    total: int
    sizes: tuple[int, ...] | None


def _asked_for(request: ChunkRequest | ChunkBatchRequest) -> _Asked:
    if isinstance(request, ChunkRequest):
        return _Asked(request.size, None)
    sizes = tuple(size for _chunk_id, size in request.chunks)
    if sum(sizes) > MAX_BATCH_BYTES:
        raise ProtocolError(f"a chunk batch asks for over {MAX_BATCH_BYTES} bytes")
    return _Asked(sum(sizes), sizes)


def _check_answer(response: ChunkResponse | ChunkBatchResponse, asked: _Asked) -> None:
    """A response holds exactly what was asked for: one entry per chunk, each found chunk
    of the requested size."""
    if isinstance(response, ChunkResponse):
        answers = [(response.status, response.data)]
        sizes: tuple[int, ...] = (asked.total,)
    else:
        answers = [(status, data) for status, data in response.chunks]
        sizes = asked.sizes or ()
    if len(answers) != len(sizes):
        raise ProtocolError(
            f"response to request {response.request_id} has {len(answers)} chunks, "
            f"{len(sizes)} were asked for"
        )
    for (status, data), size in zip(answers, sizes, strict=True):
        if status == 0 and len(data) != size:
            raise ProtocolError(
                f"response to request {response.request_id} has a chunk of {len(data)} bytes, "
                f"{size} were asked for"
            )


def folder_proof(key: FolderKey, handshake_hash: bytes, *, sender_is_initiator: bool) -> bytes:
    """The proof that the sender holds ``key``, bound to this channel (SPEC.md, §12)."""
    role = b"I" if sender_is_initiator else b"R"
    return blake2b(role + handshake_hash, key=key.subkey(Purpose.MEMBERSHIP_PROOF), size=32)


def _truncate(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")
