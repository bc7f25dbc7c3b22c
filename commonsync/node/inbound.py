"""Serving a TCP port that anyone may connect to: bounded greetings, and an accept loop that
survives running out of file descriptors.

A connection costs a file descriptor from the moment it is accepted, and until its handshake
is done nobody knows who is on the other side. So the connections still greeting (handshake,
relay preamble) are bounded per source and in all (:class:`Admission`); one beyond a bound
is closed at once, before any work. A source is an IPv4 address, or an IPv6 /64 network
(one host commonly holds a whole /64). A stranger with one address then holds a few
descriptors at most, and one with many addresses at most the total, which is also kept well
below the process's file limit (:func:`greeting_capacity`).

:func:`serve` replaces anyio's ``Listener.serve``, which lets the ``OSError`` of a failed
``accept()`` end the whole server: when the process or the system is out of descriptors or
memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), it logs once, stops accepting for a while (0.1 s,
doubling to 1 s) and tries again, while the established sessions go on.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.stapled import MultiListener

log = logging.getLogger(__name__)

#: accept() errors that mean "no resources now", not "this listener is broken".
CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors about one connection that went away before it was accepted.
TRANSIENT_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN})
MIN_ACCEPT_PAUSE = 0.1
MAX_ACCEPT_PAUSE = 1.0
#: While accept() keeps failing, it is said at most this often (seconds).
STARVED_WARNING_INTERVAL = 60.0


def source_of(host: str) -> str:
    """The source a connection from ``host`` counts against: the IPv4 address, or the IPv6
    /64 network (an IPv4-mapped IPv6 address is its IPv4 address)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def greeting_capacity(limit: int) -> int:
    """``limit``, or fewer when the process may open few files: at most a quarter of its
    file descriptors go to connections still greeting, so that the folders, the peers and
    the control socket keep theirs."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return limit
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(4, min(limit, soft // 4))


@dataclass
class Ticket:
    """One connection's place among those greeting; :meth:`release` it once the greeting is
    over (it is released anyway when the connection's handler ends)."""

    admission: Admission
    source: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._leave(self.source)


@dataclass
class Admission:
    """Connections still greeting, per source and in all (pure: no I/O)."""

    per_source: int
    total: int
    by_source: dict[str, int] = field(default_factory=dict)
    greeting: int = 0

    def enter(self, source: str) -> Ticket | None:
        """A ticket for a new connection from ``source``, or None if a bound is reached."""
        held = self.by_source.get(source, 0)
        if held >= self.per_source or self.greeting >= self.total:
            return None
        self.by_source[source] = held + 1
        self.greeting += 1
        return Ticket(self, source)

    def _leave(self, source: str) -> None:
        held = self.by_source.get(source, 0) - 1
        if held > 0:
            self.by_source[source] = held
        else:
            self.by_source.pop(source, None)
        self.greeting -= 1


Handler = Callable[[anyio.abc.SocketStream, Ticket], Awaitable[None]]
OnRefused = Callable[[str, str], None]


async def serve(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    handler: Handler,
    admission: Admission,
    *,
    on_refused: OnRefused | None = None,
) -> None:
    """Accept connections until cancelled; each gets ``handler(stream, ticket)`` in its own
    task, unless its source or everyone is at the :class:`Admission` bound: then it is
    closed at once and ``on_refused(source, why)`` told (for rate-limited logging)."""
    listeners = list(listener.listeners) if isinstance(listener, MultiListener) else [listener]
    async with anyio.create_task_group() as tasks:
        for one in listeners:
            if not isinstance(one, anyio.abc.SocketListener):
                raise TypeError(f"cannot accept from {one!r}: not a socket listener")
            tasks.start_soon(_accept_loop, one, handler, admission, on_refused, tasks)


async def _accept_loop(
    listener: anyio.abc.SocketListener,
    handler: Handler,
    admission: Admission,
    on_refused: OnRefused | None,
    tasks: anyio.abc.TaskGroup,
) -> None:
    pause = MIN_ACCEPT_PAUSE
    starved_since: float | None = None
    warned_at = -STARVED_WARNING_INTERVAL
    while True:
        try:
            stream = await listener.accept()
        except (OSError, anyio.BrokenResourceError) as failure:
            # anyio's trio backend wraps the OSError; asyncio's raises it as it is.
            exc = failure if isinstance(failure, OSError) else failure.__cause__
            if not isinstance(exc, OSError):
                raise
            if exc.errno in TRANSIENT_ERRORS:
                continue
            if exc.errno not in CAPACITY_ERRORS:
                raise
            now = anyio.current_time()
            if starved_since is None:
                starved_since = now
            if now - warned_at >= STARVED_WARNING_INTERVAL:
                warned_at = now
                log.warning(
                    "cannot accept connections: %s; trying again every %g s at most, the "
                    "established sessions go on",
                    exc.strerror or errno.errorcode.get(exc.errno or 0, "error"),
                    MAX_ACCEPT_PAUSE,
                )
            await anyio.sleep(pause)
            pause = min(pause * 2, MAX_ACCEPT_PAUSE)
            continue
        if starved_since is not None:
            if warned_at >= starved_since:  # said at the start of this spell: say its end
                took = anyio.current_time() - starved_since
                log.info("accepting connections again after %.1f s", took)
            starved_since, pause = None, MIN_ACCEPT_PAUSE
        source = _source(stream)
        ticket = admission.enter(source)
        if ticket is None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            if on_refused is not None:
                why = "too many from there" if _at_source_bound(admission, source) else "too many"
                on_refused(source, why)
            continue
        tasks.start_soon(_handle, handler, stream, ticket)


def _at_source_bound(admission: Admission, source: str) -> bool:
    return admission.by_source.get(source, 0) >= admission.per_source


async def _handle(handler: Handler, stream: anyio.abc.SocketStream, ticket: Ticket) -> None:
    try:
        await handler(stream, ticket)
    finally:
        ticket.release()


def _source(stream: anyio.abc.SocketStream) -> str:
    try:
        remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except (OSError, anyio.TypedAttributeLookupError):
        return "unknown"
    host = remote[0] if isinstance(remote, tuple) else str(remote)
    return source_of(str(host))
