"""The community relay: lets two member devices that cannot reach each other sync through it.

``commonsync relay serve`` runs it (SPEC.md §14 is the protocol). One TCP port takes two
kinds of connection, told apart by their first byte:

- **control**: a member device's authenticated channel (the same handshake as between
  devices: the relay proves its ID, the device its own, and the relay admits only members,
  or anyone when it is open). Over it a device asks for a session with another connected
  device (``Connect``); the relay answers with a random single-use token (``Granted``) and
  invites the other device with the same token (``Invitation``).
- **codes**: a member may claim a few small numbers, *nameplates* (``ClaimCode``), the first
  part of a short code it reads out to someone joining a folder; whoever asks for a session
  with a nameplate (``ConnectCode``) reaches the member that holds it. The relay sees only the
  nameplate, never the rest of the code (the devices' PAKE uses that).
- **delegates**: the hoster may name members (``relay allow --delegate ID``, an association's
  admin devices) that vouch for other devices (``Vouch``): the relay admits every device some
  delegate currently vouches for, as if the hoster had added it, and closes the connections
  and sessions of a device no delegate vouches for any more. It learns device IDs only: not
  which folder, member or role they belong to. The sets are kept in the state file
  (:data:`VOUCHED_FILE`), so that members still get in after a restart while no admin is
  online.
- **strangers**: a device that is not a member, but names the ``join`` feature in its
  handshake, is admitted for one thing: reaching a member to join a folder (``ConnectCode``,
  or ``Connect`` to a connected member, whose own handshake decides). Strangers are bounded
  hard (:class:`StrangerLimits`): few at once, short-lived, their requests rate-limited per
  source address, their sessions cut after a minute or a mebibyte, since a join is a few KiB
  and the relay is not free transport.
- **session**: a fresh connection that presents a token. When both devices of a token have
  joined, the relay answers each with one byte and then copies bytes between them. It never
  decrypts anything: the devices run the channel handshake end to end through the splice,
  so what passes here is ciphertext, and each device checks the other's identity itself.

Every resource a device can make the relay spend is bounded (limits in
:class:`~commonsyncd.relay.config.RelayLimits`, constants below): connections still greeting,
control connections, sessions in all and per device, session requests per device (a token
bucket), how long a token waits, and optionally each session's bandwidth. The relay logs (one
JSON object per line, or text on a terminal: :mod:`commonsyncd.logs`) who connected, sessions
and their byte counts, never contents.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from commonsync import Channel, DeviceId, DeviceIdentity, accept_channel
from commonsync.errors import CommonsyncError, IdentityError, RelayProtocolError
from commonsync.formats.whole_files import write_whole
from commonsync.node import inbound
from commonsync.node.inbound import Admission, Ticket
from commonsync.node.lograte import LogRate
from commonsync.relay import wire as wire
from commonsync.relay.wire import (
    ClaimCode,
    CodeClaimed,
    Connect,
    ConnectCode,
    Granted,
    Invitation,
    JoinStatus,
    Ping,
    Pong,
    Refused,
    RefuseReason,
    RelayMessage,
    ReleaseCode,
    Vouch,
    Vouched,
)
from commonsync.wire.handshake import JOIN_FEATURE, PeerRefusedError

from ..config import ConfigError, format_address, parse_address, remote_address
from ..home import Home
from ..logs import setup_logging
from ..output import plural
from .config import RelayLimits, RelayServerConfig

log = logging.getLogger(__name__)

#: Connections still in their first phase (handshake or preamble) at once, in all and from
#: one source (an IPv4 address or an IPv6 /64: :mod:`commonsync.node.inbound`); more are closed
#: at once, so that a flood of idle sockets cannot crowd out the members, and one source
#: cannot take every place (16 leaves room for a small office's devices behind one NAT).
MAX_GREETING = 256
MAX_GREETING_PER_SOURCE = 16
#: Seconds a new connection has to send its first byte, then its whole preamble.
GREETING_TIMEOUT = 10.0
#: A control connection on which nothing arrived for this long is closed (devices ping every
#: 20 s: :data:`commonsync.relay.client.PING_INTERVAL`).
IDLE_TIMEOUT = 60.0
#: Messages waiting to be written to one device; a device that does not read gets no more.
OUTBOX = 64
#: Bytes read at once from one side of a session.
COPY_SIZE = 64 * 1024
#: Session requests remembered per device for rate limiting, at most.
MAX_BUCKETS = 10_000
#: Tokens waiting for their devices per (requester, target) pair: a device needs one at a
#: time, and a member that asks without joining cannot fill its target's sessions.
MAX_WAITING_PER_PAIR = 2
#: Nameplates one member's control connection may hold at once (more is refused INVALID:
#: waiting does not help, releasing one does), and all members' together (OVERLOADED).
#: The smallest free number is handed out, so codes stay short while few are held.
MAX_CLAIMS_PER_CONNECTION = 4
MAX_CLAIMS = 1000
#: The delegates' vouched sets, in the relay's data directory (beside ``relay.key``).
VOUCHED_FILE = "relay-vouched.json"
#: The largest vouched-sets file read back: room for about a hundred delegates' full sets
#: (MAX_VOUCHED IDs of 63 characters each); a larger one is refused at start.
MAX_VOUCHED_FILE = 64 * 1024 * 1024
#: Seconds between two looks at relay.toml (a delegation withdrawn takes effect within it).
CONFIG_POLL = 1.0

#: Called with every chunk of bytes the relay forwards (tests: check that it is ciphertext).
Tap = Callable[[bytes], None]
_CONNECTION_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


@dataclass(frozen=True)
class StrangerLimits:
    """What devices that are not members (they come to join a folder) may cost the relay.

    Fixed policy rather than configuration (SPEC.md §14.3): a join is one short conversation
    (a few KiB in a few seconds), so these are generous for it and useless for anything else.
    Strangers make fresh device IDs at will, so their session requests are limited per source
    address (an IPv4 address or an IPv6 /64), not per device."""

    #: Stranger control connections at once; one more is refused OVERLOADED.
    connections: int = 32
    #: Seconds a stranger's control connection may last.
    lifetime: float = 60.0
    #: Session requests (``ConnectCode`` or ``Connect``) per source: on average per minute,
    #: and in a burst. Every request counts, refused or not, so nameplates cannot be scanned.
    requests_per_minute: float = 10.0
    request_burst: int = 5
    #: Sessions a stranger is part of, in all and towards one member (so strangers cannot
    #: take a member's sessions: it has ``max_sessions_per_device`` for its peers).
    sessions: int = 32
    sessions_per_target: int = 4
    #: A session a stranger is part of ends after this many seconds, or bytes copied one way.
    session_time: float = 60.0
    session_bytes: int = 1024 * 1024


class TokenBucket:
    """``rate`` events per second on average, up to ``burst`` at once (pure: the caller
    passes the clock)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass
class _Control:
    """A device's control connection: a member's, or a stranger's (admitted to join)."""

    device: DeviceId
    channel: Channel
    outbox: MemoryObjectSendStream[RelayMessage]
    pending: MemoryObjectReceiveStream[RelayMessage]
    #: Where it connected from (the source key of :mod:`commonsync.node.inbound`).
    source: str = ""
    #: Not a member: it came with the ``join`` feature, and may only ask for sessions.
    stranger: bool = False
    #: The nameplates this connection holds.
    claims: set[int] = field(default_factory=set)
    #: A delegate's vouched set being sent, batch by batch (``Vouch`` with ``final`` false).
    vouching: set[DeviceId] = field(default_factory=set)
    #: Why the relay ends this connection itself (told to the device as it closes).
    closing: tuple[RefuseReason, str] | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    @property
    def log_key(self) -> str:
        """Whose refusals a log line counts against: a stranger's source (its device IDs
        are free to make), a member's device."""
        return f"stranger at {self.source}" if self.stranger else self.device.short_str

    def queue(self, message: RelayMessage) -> bool:
        try:
            self.outbox.send_nowait(message)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True


@dataclass
class _Pending:
    """A token handed out, waiting for its two devices to join."""

    requester: DeviceId
    target: DeviceId
    deadline: float
    created: float
    #: A stranger asked for it: the session is cut short (:class:`StrangerLimits`).
    stranger: bool = False
    first: anyio.abc.ByteStream | None = None
    second: anyio.abc.ByteStream | None = None
    joined: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def names(self) -> str:
        return f"{self.requester.short_str} → {self.target.short_str}"


class RelayServer:
    def __init__(
        self,
        identity: DeviceIdentity,
        config: RelayServerConfig,
        *,
        config_file: Path | None = None,
        open_override: bool = False,
        tap: Tap | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_timeout: float = IDLE_TIMEOUT,
        strangers: StrangerLimits = StrangerLimits(),
        vouched_file: Path | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self._config_file = config_file
        self._config_stamp = _stamp(config_file)
        self._open_override = open_override
        self._tap = tap
        self._clock = clock
        self._idle_timeout = idle_timeout
        self.stranger_limits = strangers
        #: Members' control connections, and strangers' (never invited, never targets).
        self.controls: dict[DeviceId, _Control] = {}
        self.strangers: dict[DeviceId, _Control] = {}
        #: nameplate → the control connection that holds it.
        self.claims: dict[int, _Control] = {}
        self._pending: dict[bytes, _Pending] = {}
        #: Sessions (waiting or spliced) each device takes part in.
        self._sessions: dict[DeviceId, int] = {}
        self._session_total = 0
        #: Sessions strangers asked for, in all and per target member.
        self._stranger_sessions = 0
        self._stranger_targets: dict[DeviceId, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._admission = Admission(
            MAX_GREETING_PER_SOURCE, inbound.greeting_capacity(MAX_GREETING)
        )
        #: What strangers cause is logged a few times per source and minute, then summed up.
        self._refusals = LogRate(log, "connections refused")
        self._refused_requests = LogRate(log, "session requests refused")
        self._stranger_log = LogRate(log, "connections of devices that are not members")
        #: Each delegate's vouched set (SPEC.md §14.1), and their union for the current
        #: delegates; the sets survive a restart in ``vouched_file``.
        self._vouched_file = vouched_file
        self.vouched: dict[DeviceId, frozenset[DeviceId]] = load_vouched(vouched_file)
        self._vouched_all: frozenset[DeviceId] = frozenset()
        self._update_vouched()
        #: Spliced sessions: each one's cancel scope, and its devices.
        self._spliced: dict[anyio.CancelScope, _Pending] = {}
        self._saving = anyio.Lock()

    @property
    def _greeting(self) -> int:
        """Connections still greeting."""
        return self._admission.greeting

    @property
    def limits(self) -> RelayLimits:
        return self.config.limits

    def admits(self, device: DeviceId) -> bool:
        return self._open_override or self.config.admits(device) or device in self._vouched_all

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Serve ``listener`` until cancelled (surviving a lack of file descriptors)."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._refusals.run)
            tasks.start_soon(self._refused_requests.run)
            tasks.start_soon(self._stranger_log.run)
            if self._config_file is not None:
                tasks.start_soon(self._watch_config)
            await inbound.serve(
                listener, self._handle, self._admission, on_refused=self._refused_at_once
            )

    # -- a new connection ------------------------------------------------------------------

    def _refused_at_once(self, source: str, why: str) -> None:
        self._refusals.log(
            logging.WARNING,
            source,
            "closed a connection from %s at once: %s greeting at once",
            source,
            why,
        )

    async def _handle(self, stream: anyio.abc.SocketStream, ticket: Ticket) -> None:
        address = remote_address(stream)
        source = ticket.source
        try:
            _tcp_keepalive(stream)
            try:
                greeted = await self._greet(stream, source)
            finally:
                ticket.release()
            if isinstance(greeted, bytes):
                await self._join(stream, greeted, address, source)
            elif greeted is not None:
                await self._control(greeted, address, source)
        except TimeoutError:
            log.debug("a connection from %s said nothing in time", address)
        except (anyio.EndOfStream, *_CONNECTION_ERRORS):
            pass
        except PeerRefusedError as exc:
            # Logged here rather than in the accept callback: a stranger that names the
            # join feature is refused by the callback and admitted all the same.
            self._refusals.log(
                logging.INFO,
                source,
                "refused device %s: not a member of this relay",
                exc.device_id,
            )
        except CommonsyncError as exc:
            self._refusals.log(logging.INFO, source, "connection from %s ended: %s", address, exc)
        except Exception:
            log.exception("unexpected error with a connection from %s", address)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _greet(self, stream: anyio.abc.SocketStream, source: str) -> bytes | Channel | None:
        """A connection's first phase: a session connection's token, a control connection's
        channel, or None after a malformed preamble (answered already)."""
        with anyio.fail_after(GREETING_TIMEOUT):
            first = await stream.receive(1)
        if wire.is_session_start(first[0]):
            with anyio.fail_after(GREETING_TIMEOUT):
                return await self._read_preamble(stream, first, source)
        await self._reload_if_changed()
        # A device that is not a member gets in only with the join feature, and then only
        # as a stranger (see _control).
        return await accept_channel(
            _Replayed(stream, first),
            self.identity,
            accept=self.admits,
            features=[wire.VOUCH_FEATURE],
            max_message_size=wire.MAX_RELAY_MESSAGE,
            accept_joiners=True,
        )

    async def _watch_config(self) -> None:
        """Look at relay.toml every :data:`CONFIG_POLL` seconds: a member removed or a
        delegation withdrawn takes effect on connected devices too, not only on new ones."""
        while True:
            await anyio.sleep(CONFIG_POLL)
            await self._reload_if_changed()

    async def _reload_if_changed(self) -> None:
        """Read the configuration again if it changed (``commonsync relay allow``)."""
        if self._config_file is None:
            return
        stamp = _stamp(self._config_file)
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            config = await anyio.to_thread.run_sync(RelayServerConfig.load, self._config_file)
        except ConfigError as exc:
            log.warning("kept the previous configuration: %s", exc)
            return
        self.config.members, self.config.open = config.members, config.open
        self.config.delegates = config.delegates
        log.info("configuration read again: %s", _membership(self.config, self._open_override))
        withdrawn = [d for d in self.vouched if d not in self.config.delegates]
        for delegate in withdrawn:
            del self.vouched[delegate]
            log.info("delegation of %s withdrawn: its vouches are forgotten", delegate.short_str)
        self._update_vouched()
        if withdrawn:
            await self._save_vouched()
        self._enforce()

    # -- control connections ---------------------------------------------------------------

    async def _control(self, channel: Channel, address: str, source: str) -> None:
        device = channel.peer
        stranger = not self.admits(device)
        if stranger and JOIN_FEATURE not in channel.features:
            # Admitted in the handshake, no longer a member now (the configuration changed).
            await self._goodbye(channel, RefuseReason.NOT_MEMBER, "not a member of the relay")
            return
        registry = self.strangers if stranger else self.controls
        connected = len(registry)
        if stranger and device not in registry and connected >= self.stranger_limits.connections:
            self._stranger_log.log(
                logging.WARNING,
                source,
                "refused a device that is not a member from %s: %d such devices connected",
                source,
                connected,
            )
            await self._goodbye(
                channel,
                RefuseReason.OVERLOADED,
                "too many devices that are not members are connected; try again in a minute",
            )
            return
        if (
            not stranger
            and device not in registry
            and (connected >= self.limits.max_control_connections)
        ):
            log.warning("refused device %s: %d devices connected", device.short_str, connected)
            await self._goodbye(channel, RefuseReason.OVERLOADED, "too many devices connected")
            return
        outbox, pending = anyio.create_memory_object_stream[RelayMessage](OUTBOX)
        control = _Control(device, channel, outbox, pending, source, stranger)
        old = registry.get(device)
        if old is not None:
            old.scope.cancel()  # the device reconnected: the old connection is dead or stale
        registry[device] = control
        if stranger:
            self._stranger_log.log(
                logging.INFO,
                source,
                "device %s connected from %s to join a folder (not a member)",
                device.short_str,
                address,
            )
        else:
            log.info("device %s connected from %s", device.short_str, address)
        lifetime = self.stranger_limits.lifetime if stranger else float("inf")
        error: RelayProtocolError | None = None
        try:
            with control.scope:
                with anyio.move_on_after(lifetime) as alive:
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._write, control, tasks.cancel_scope)
                        error = await self._read(control)
                        tasks.cancel_scope.cancel()
                if alive.cancelled_caught:
                    log.debug("device %s (not a member): its time is up", device.short_str)
                    await self._goodbye(
                        channel,
                        RefuseReason.RATE_LIMITED,
                        f"a device that is not a member may stay connected {lifetime:g} s",
                    )
                elif error is not None:
                    log.info("device %s broke the relay protocol: %s", device.short_str, error)
                    await self._goodbye(channel, RefuseReason.PROTOCOL_ERROR, str(error))
            if control.closing is not None:
                await self._goodbye(channel, *control.closing)
        finally:
            if registry.get(device) is control:
                del registry[device]
            self._release_all(control)
            outbox.close()
            with anyio.CancelScope(shield=True):
                await channel.aclose()
            if stranger:
                log.debug("device %s (not a member) disconnected", device.short_str)
            else:
                log.info("device %s disconnected", device.short_str)

    async def _read(self, control: _Control) -> RelayProtocolError | None:
        """Serve a device's messages until its connection ends; a protocol error is
        returned (to be told to the device), the connection's own errors end it quietly."""
        try:
            while True:
                with anyio.move_on_after(self._idle_timeout) as idle:
                    data = await control.channel.receive()
                if idle.cancelled_caught:
                    log.info(
                        "device %s silent for %g s; closed",
                        control.device.short_str,
                        self._idle_timeout,
                    )
                    return None
                message = wire.decode(data)
                if isinstance(message, Ping):
                    control.queue(Pong(message.nonce))
                elif isinstance(message, Connect):
                    self._on_connect(control, message)
                elif isinstance(message, ConnectCode):
                    self._on_connect_code(control, message)
                elif isinstance(message, ClaimCode):
                    self._on_claim(control, message)
                elif isinstance(message, ReleaseCode):
                    self._release(control, message.nameplate)
                elif isinstance(message, Vouch):
                    await self._on_vouch(control, message)
                elif not isinstance(message, Pong):
                    raise RelayProtocolError(
                        f"{type(message).__name__} is sent by relays, not by devices"
                    )
        except RelayProtocolError as exc:
            return exc
        except (CommonsyncError, anyio.EndOfStream, *_CONNECTION_ERRORS) as exc:
            log.debug("control connection of %s ended: %s", control.device.short_str, exc)
            return None

    async def _write(self, control: _Control, scope: anyio.CancelScope) -> None:
        try:
            async for message in control.pending:
                await control.channel.send(wire.encode(message))
        except (CommonsyncError, *_CONNECTION_ERRORS):
            scope.cancel()  # the device is gone: end its connection

    async def _goodbye(self, channel: Channel, reason: RefuseReason, detail: str) -> None:
        with anyio.move_on_after(1, shield=True):
            try:
                text = detail.encode()[:256].decode(errors="ignore")
                await channel.send(wire.encode(Refused(0, int(reason), text)))
            except (CommonsyncError, *_CONNECTION_ERRORS):
                pass
            await channel.aclose()

    # -- session requests ------------------------------------------------------------------

    def _refuse(
        self,
        control: _Control,
        request_id: int,
        reason: RefuseReason,
        detail: str = "",
        *,
        names: str = "",
    ) -> None:
        """Answer a request with ``Refused``, and log it a few times per device (or, for
        strangers, per source) and minute. Never with a nameplate: the log must not tie a
        code to who used it."""
        # Devices keep asking for peers that are offline, joiners mistype codes: that is no
        # news for the log; one that keeps asking past a limit is told once in a while.
        quiet = reason in (RefuseReason.OFFLINE, RefuseReason.UNKNOWN_CODE)
        self._refused_requests.log(
            logging.DEBUG if quiet else logging.INFO,
            control.log_key,
            "%s refused: %s",
            f"session {names}" if names else f"request of {control.device.short_str}",
            detail or reason.text,
        )
        control.queue(Refused(request_id, int(reason), detail or reason.text))

    def _on_connect(self, control: _Control, request: Connect) -> None:
        requester, target = control.device, DeviceId(request.target)
        now = self._clock()
        self._sweep(now)
        names = f"{requester.short_str} → {target.short_str}"
        refuse = partial(self._refuse, control, request.request_id, names=names)
        if request.request_id == 0:
            return refuse(RefuseReason.INVALID, "request ID 0 is reserved")
        if not control.stranger and not self.admits(requester):
            return refuse(RefuseReason.NOT_MEMBER, "this device is no longer a member")
        # A stranger pays for every request (its probes for who is online included).
        if control.stranger and not self._take(control, now):
            return refuse(RefuseReason.RATE_LIMITED)
        if target == requester:
            return refuse(RefuseReason.INVALID, "a session with oneself")
        target_control = self.controls.get(target)  # strangers are never targets
        if target_control is None:
            return refuse(RefuseReason.OFFLINE)
        if not self.admits(target):
            return refuse(RefuseReason.NOT_MEMBER, "the device is not a member of the relay")
        self._invite(control, request.request_id, target_control, now, paid=control.stranger)

    def _on_connect_code(self, control: _Control, request: ConnectCode) -> None:
        """A session with whoever holds a nameplate. Every request costs its sender a token
        of its rate (members and strangers), found or not: nameplates are few and short, so
        trying them in turn must be slow."""
        now = self._clock()
        self._sweep(now)
        refuse = partial(self._refuse, control, request.request_id)
        if request.request_id == 0:
            return refuse(RefuseReason.INVALID, "request ID 0 is reserved")
        if not control.stranger and not self.admits(control.device):
            return refuse(RefuseReason.NOT_MEMBER, "this device is no longer a member")
        if not self._take(control, now):
            return refuse(RefuseReason.RATE_LIMITED)
        holder = self.claims.get(request.nameplate)
        if holder is None:
            return refuse(RefuseReason.UNKNOWN_CODE)
        if holder.device == control.device:
            return refuse(RefuseReason.INVALID, "a session with oneself (this device holds it)")
        if not self.admits(holder.device):
            return refuse(RefuseReason.UNKNOWN_CODE)  # its holder is no longer a member
        self._invite(control, request.request_id, holder, now, paid=True)

    def _invite(
        self,
        control: _Control,
        request_id: int,
        target_control: _Control,
        now: float,
        *,
        paid: bool,
    ) -> None:
        """Grant a session between ``control``'s device and ``target_control``'s, within the
        limits; ``paid``: the request already took its token of the rate."""
        requester, target = control.device, target_control.device
        limits = self.limits
        refuse = partial(
            self._refuse, control, request_id, names=f"{requester.short_str} → {target.short_str}"
        )
        per_device = limits.max_sessions_per_device
        if max(self._sessions.get(requester, 0), self._sessions.get(target, 0)) >= per_device:
            return refuse(RefuseReason.TOO_MANY_SESSIONS)
        waiting = sum(
            p.requester == requester and p.target == target for p in self._pending.values()
        )
        if waiting >= MAX_WAITING_PER_PAIR:
            return refuse(RefuseReason.TOO_MANY_SESSIONS, "sessions with that device are waiting")
        if self._session_total >= limits.max_sessions:
            return refuse(RefuseReason.OVERLOADED, "too many sessions")
        if control.stranger:
            if self._stranger_sessions >= self.stranger_limits.sessions:
                return refuse(RefuseReason.OVERLOADED, "too many joins through the relay")
            if self._stranger_targets.get(target, 0) >= self.stranger_limits.sessions_per_target:
                return refuse(
                    RefuseReason.TOO_MANY_SESSIONS, "that device is busy with other joins"
                )
        # Only invitations count against a member's rate: they are what costs the target and
        # the relay something (a device asking for many offline peers gets cheap refusals).
        if not paid and not self._take(control, now):
            return refuse(RefuseReason.RATE_LIMITED)
        token = os.urandom(wire.TOKEN_SIZE)
        if not target_control.queue(Invitation(requester.digest, token)):
            return refuse(RefuseReason.OVERLOADED, "the device is not reading its invitations")
        pending = _Pending(requester, target, now + limits.join_timeout, now, control.stranger)
        self._pending[token] = pending
        self._count(pending, +1)
        control.queue(Granted(request_id, token))
        log.info("session %s: invited%s", pending.names, " (a join)" if pending.stranger else "")

    def _take(self, control: _Control, now: float) -> bool:
        """One token of the requester's rate: a member's own bucket, or its source's for a
        stranger (a stranger's device IDs cost nothing to make)."""
        if control.stranger:
            key = f"source {control.source}"
            rate = self.stranger_limits.requests_per_minute / 60
            burst = self.stranger_limits.request_burst
        else:
            key = f"device {control.device}"
            rate, burst = self.limits.connects_per_minute / 60, self.limits.connect_burst
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:  # forget those that are full again
                for old in [k for k, b in self._buckets.items() if b.full(now)]:
                    del self._buckets[old]
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
        return bucket.take(now)

    # -- delegated admission ---------------------------------------------------------------

    async def _on_vouch(self, control: _Control, request: Vouch) -> None:
        """A batch of a delegate's vouched set; the final one puts the set in force,
        replacing the previous one, and closes what it no longer admits."""
        refuse = partial(self._refuse, control, request.request_id)
        if request.request_id == 0:
            control.vouching.clear()
            return refuse(RefuseReason.INVALID, "request ID 0 is reserved")
        if control.stranger or control.device not in self.config.delegates:
            control.vouching.clear()
            return refuse(
                RefuseReason.NOT_DELEGATE,
                "this device is not a delegate of the relay: its hoster may make it one with "
                f"`commonsync relay allow --delegate {control.device}`",
            )
        control.vouching.update(DeviceId(d) for d in request.devices)
        if len(control.vouching) > wire.MAX_VOUCHED:
            control.vouching.clear()
            return refuse(
                RefuseReason.INVALID,
                f"a delegate vouches for at most {wire.MAX_VOUCHED} devices at this relay",
            )
        if not request.final:
            return
        vouched, control.vouching = frozenset(control.vouching), set()
        previous = self.vouched.get(control.device, frozenset())
        self.vouched[control.device] = vouched
        self._update_vouched()
        if vouched != previous:
            log.info(
                "delegate %s vouches for %d devices (%d added, %d withdrawn)",
                control.device.short_str,
                len(vouched),
                len(vouched - previous),
                len(previous - vouched),
            )
            await self._save_vouched()
            self._enforce()
        # Answered once the set is in force and kept.
        control.queue(Vouched(request.request_id, len(vouched)))

    def _update_vouched(self) -> None:
        delegates = set(self.config.delegates)
        self._vouched_all = frozenset().union(
            *(devices for delegate, devices in self.vouched.items() if delegate in delegates)
        )

    def _enforce(self) -> None:
        """Close the control connections and sessions of the devices no longer admitted
        (removed from relay.toml, or no delegate vouches for them any more)."""
        for device, control in list(self.controls.items()):
            if not self.admits(device) and control.closing is None:
                log.info("device %s is no longer a member: closing its connection", device)
                control.closing = (RefuseReason.NOT_MEMBER, "no longer a member of the relay")
                control.scope.cancel()
        for token, pending in list(self._pending.items()):
            if not self._session_admitted(pending):  # its token is forgotten: never spliced
                del self._pending[token]
                self._count(pending, -1)
        for scope, session in list(self._spliced.items()):
            if not self._session_admitted(session):
                scope.cancel()

    def _session_admitted(self, pending: _Pending) -> bool:
        """Whether both devices of a session may still use the relay (a stranger's join
        needs only its target to)."""
        return self.admits(pending.target) and (pending.stranger or self.admits(pending.requester))

    async def _save_vouched(self) -> None:
        if self._vouched_file is None:
            return
        try:
            async with self._saving:  # one write at a time, each of the sets as they are then
                await anyio.to_thread.run_sync(save_vouched, self._vouched_file, dict(self.vouched))
        except OSError as exc:
            log.warning(
                "could not keep the vouched devices in %s (%s): after a restart, they get in "
                "again once their delegates are online",
                self._vouched_file,
                exc.strerror,
            )

    # -- nameplates ------------------------------------------------------------------------

    def _on_claim(self, control: _Control, request: ClaimCode) -> None:
        """Hand out the smallest free nameplate. Only members may: a code's giver waits for
        the joiner as a member device of the folder does. A stranger is refused, and may go
        on with what it came for."""
        refuse = partial(self._refuse, control, request.request_id)
        if request.request_id == 0:
            return refuse(RefuseReason.INVALID, "request ID 0 is reserved")
        if control.stranger:
            return refuse(RefuseReason.NOT_MEMBER, "only members of the relay may give codes")
        if not self.admits(control.device):
            return refuse(RefuseReason.NOT_MEMBER, "this device is no longer a member")
        if len(control.claims) >= MAX_CLAIMS_PER_CONNECTION:
            return refuse(
                RefuseReason.INVALID,
                f"this device holds {MAX_CLAIMS_PER_CONNECTION} codes already; release one",
            )
        if len(self.claims) >= MAX_CLAIMS:
            return refuse(RefuseReason.OVERLOADED, "too many codes are held on this relay")
        nameplate = next(n for n in itertools.count(1) if n not in self.claims)
        self.claims[nameplate] = control
        control.claims.add(nameplate)
        control.queue(CodeClaimed(request.request_id, nameplate))
        # The number is left out at INFO: with the session lines it would tie a code to
        # the device that used it.
        log.info("device %s holds a code (%d in all)", control.device.short_str, len(self.claims))
        log.debug("device %s claimed nameplate %d", control.device.short_str, nameplate)

    def _release(self, control: _Control, nameplate: int) -> None:
        """``ReleaseCode``: forget a nameplate this connection holds (another's, or a free
        one, is left alone: the message has no answer)."""
        if self.claims.get(nameplate) is control:
            del self.claims[nameplate]
            control.claims.discard(nameplate)
            log.info("device %s gave a code back", control.device.short_str)

    def _release_all(self, control: _Control) -> None:
        for nameplate in control.claims:
            if self.claims.get(nameplate) is control:
                del self.claims[nameplate]
        control.claims.clear()

    def _count(self, pending: _Pending, delta: int) -> None:
        for device in (pending.requester, pending.target):
            _add(self._sessions, device, delta)
        self._session_total += delta
        if pending.stranger:
            _add(self._stranger_targets, pending.target, delta)
            self._stranger_sessions += delta

    def _sweep(self, now: float) -> None:
        """Forget the tokens that expired before anyone joined (a waiting joiner forgets
        its own)."""
        expired = [t for t, p in self._pending.items() if p.deadline <= now and p.first is None]
        for token in expired:
            pending = self._pending.pop(token)
            self._count(pending, -1)
            log.info(
                "session %s: nobody joined within %g s", pending.names, self.limits.join_timeout
            )

    # -- session connections ---------------------------------------------------------------

    async def _read_preamble(
        self, stream: anyio.abc.SocketStream, first: bytes, source: str
    ) -> bytes | None:
        data = bytearray(first)
        while len(data) < wire.PREAMBLE_SIZE:
            data += await stream.receive(wire.PREAMBLE_SIZE - len(data))
        try:
            return wire.parse_preamble(bytes(data))
        except RelayProtocolError as exc:
            self._refusals.log(
                logging.INFO, source, "bad session preamble from %s: %s", source, exc
            )
            await stream.send(bytes([JoinStatus.UNSUPPORTED]))
            return None

    async def _join(
        self, stream: anyio.abc.SocketStream, token: bytes, address: str, source: str
    ) -> None:
        now = self._clock()
        self._sweep(now)
        pending = self._pending.get(token)
        if pending is None or pending.deadline <= now:
            self._refusals.log(
                logging.INFO,
                source,
                "a session connection from %s presented an unknown token",
                address,
            )
            await stream.send(bytes([JoinStatus.UNKNOWN_TOKEN]))
            return
        if pending.first is None:
            pending.first = stream
            try:
                with anyio.move_on_after(pending.deadline - now):
                    await pending.joined.wait()
            finally:
                if pending.second is None and self._pending.pop(token, None) is pending:
                    self._count(pending, -1)
            if pending.second is None:  # the other device did not come
                log.info(
                    "session %s: only one device joined within %g s",
                    pending.names,
                    self.limits.join_timeout,
                )
                await stream.send(bytes([JoinStatus.TIMEOUT]))
                return
            await pending.done.wait()  # the second joiner's task splices both
            return
        del self._pending[token]  # single use: a third connection finds nothing
        pending.second = stream
        pending.joined.set()
        try:
            await self._splice(pending)
        finally:
            self._count(pending, -1)
            pending.done.set()

    async def _splice(self, pending: _Pending) -> None:
        a, b = pending.first, pending.second
        assert a is not None
        assert b is not None
        joined = bytes([JoinStatus.JOINED])
        await a.send(joined)
        await b.send(joined)
        started = self._clock()
        log.info("session %s: spliced after %.2f s", pending.names, started - pending.created)
        counts = [0, 0]
        # A stranger's session is a join: a few KiB in a few seconds. Anything longer is
        # someone using the relay as free transport.
        strangers = self.stranger_limits
        cap = strangers.session_bytes if pending.stranger else 0
        capped: list[str] = []
        with anyio.move_on_after(strangers.session_time if pending.stranger else math.inf) as ttl:
            self._spliced[ttl] = pending
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._pump, a, b, counts, 0, tasks.cancel_scope, cap, capped)
                    tasks.start_soon(self._pump, b, a, counts, 1, tasks.cancel_scope, cap, capped)
            finally:
                del self._spliced[ttl]
        if ttl.cancelled_caught and not self._session_admitted(pending):
            capped.append("cut: a device is no longer a member")
        elif ttl.cancelled_caught:
            capped.append(f"cut after {strangers.session_time:g} s")
        log.info(
            "session %s ended after %.1f s: %d bytes forwarded one way, %d the other%s",
            pending.names,
            self._clock() - started,
            counts[0],
            counts[1],
            "".join(f" ({why})" for why in capped[:1]),
        )

    async def _pump(
        self,
        source: anyio.abc.ByteStream,
        sink: anyio.abc.ByteStream,
        counts: list[int],
        i: int,
        session: anyio.CancelScope,
        cap: int,
        capped: list[str],
    ) -> None:
        """Copy one direction; its end is passed on as a half-close, a broken side ends the
        whole session, and so does reaching ``cap`` bytes (0: no cap)."""
        try:
            if await self._copy(source, sink, counts, i, cap):
                capped.append(f"cut at {cap} bytes")
                session.cancel()
        except _CONNECTION_ERRORS:
            session.cancel()

    async def _copy(
        self,
        source: anyio.abc.ByteStream,
        sink: anyio.abc.ByteStream,
        counts: list[int],
        i: int,
        cap: int = 0,
    ) -> bool:
        """Copy until the end of ``source``; True if it stopped at ``cap`` bytes instead."""
        rate = self.limits.session_bytes_per_second
        started = self._clock()
        while True:
            try:
                data = await source.receive(COPY_SIZE)
            except anyio.EndOfStream:
                try:
                    await sink.send_eof()
                except (NotImplementedError, *_CONNECTION_ERRORS):
                    pass
                return False
            if cap and counts[i] + len(data) > cap:
                data = data[: cap - counts[i]]  # what fits, then the session ends
            if self._tap is not None:
                self._tap(data)
            await sink.send(data)
            counts[i] += len(data)
            if cap and counts[i] >= cap:
                return True
            if rate:
                ahead = counts[i] / rate - (self._clock() - started)
                if ahead > 0:
                    await anyio.sleep(ahead)


class _Replayed(anyio.abc.ByteStream):
    """A stream whose first bytes were already read: they are returned again first (the
    relay peeks at a connection's first byte to tell control from session)."""

    def __init__(self, stream: anyio.abc.ByteStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return out
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


def _add(counts: dict[DeviceId, int], device: DeviceId, delta: int) -> None:
    """Add to a per-device count, forgetting the devices at zero."""
    left = counts.get(device, 0) + delta
    if left > 0:
        counts[device] = left
    else:
        counts.pop(device, None)


def _tcp_keepalive(stream: anyio.abc.SocketStream) -> None:
    """TCP keep-alives, so that a device whose host vanished frees its slot in minutes."""
    try:
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except (OSError, anyio.TypedAttributeLookupError):
        pass


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _membership(config: RelayServerConfig, open_override: bool) -> str:
    if open_override or config.open:
        return "open to any device"
    delegates = f", {plural(len(config.delegates), 'delegate')}" if config.delegates else ""
    return f"members only ({plural(len(config.members), 'member')}{delegates})"


def load_vouched(path: Path | None) -> dict[DeviceId, frozenset[DeviceId]]:
    """The delegates' vouched sets kept by :func:`save_vouched` (none if there is no file).
    A file that cannot be read is a :class:`ConfigError` saying which and why."""
    if path is None:
        return {}
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_VOUCHED_FILE + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if len(data) > MAX_VOUCHED_FILE:
            raise ValueError(f"larger than {MAX_VOUCHED_FILE} bytes")
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != 1:
            raise ValueError("not a vouched-devices file of format 1")
        sets = raw.get("vouched")
        if not isinstance(sets, dict):
            raise ValueError("`vouched` is not a table")
        out: dict[DeviceId, frozenset[DeviceId]] = {}
        for delegate, devices in sets.items():
            if not isinstance(devices, list) or len(devices) > wire.MAX_VOUCHED:
                raise ValueError(f"the set of {delegate} is not a list of device IDs")
            out[DeviceId.parse(delegate)] = frozenset(DeviceId.parse(d) for d in devices)
    except (ValueError, TypeError, CommonsyncError) as exc:
        raise ConfigError(
            f"{path}: {exc}; remove the file to start without vouched devices (delegates "
            "send their sets again when they connect)"
        ) from None
    return out


def save_vouched(path: Path, vouched: Mapping[DeviceId, frozenset[DeviceId]]) -> None:
    """Write the vouched sets anew, then rename the file into place."""
    data = {
        "format": 1,
        "vouched": {str(d): sorted(str(v) for v in devices) for d, devices in vouched.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_whole(path, (json.dumps(data, indent=1) + "\n").encode())


# -- the relay's home and process -----------------------------------------------------------


def load_or_create(home: Home) -> tuple[DeviceIdentity, RelayServerConfig, bool]:
    """The relay's identity and configuration, created on first use (a new key, 0600, and a
    configuration with the defaults); the flag says whether they were just created."""
    created = False
    if not home.relay_identity_file.exists():
        home.make_dirs()
        try:
            DeviceIdentity.generate().save(home.relay_identity_file)
        except IdentityError:
            if not home.relay_identity_file.exists():  # not another command racing us
                raise
        created = True
    identity = DeviceIdentity.load(home.relay_identity_file)
    if not home.relay_config_file.exists():
        RelayServerConfig().save(home.relay_config_file)
        created = True
    return identity, RelayServerConfig.load(home.relay_config_file), created


async def run_relay(
    home: Home, *, listen: str = "", open_override: bool = False, tap: Tap | None = None
) -> None:
    """Run the relay of ``home`` until SIGTERM or SIGINT."""
    identity, config, _ = load_or_create(home)
    if listen:
        config.listen = listen
    host, port = parse_address(config.listen, default_port=wire.DEFAULT_RELAY_PORT)
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {format_address(host, port)}: {exc.strerror}; another program "
            f"may use that port: pass --listen or change `listen` in {home.relay_config_file}"
        ) from None
    server = RelayServer(
        identity,
        config,
        config_file=home.relay_config_file,
        open_override=open_override,
        tap=tap,
        vouched_file=home.data_dir / VOUCHED_FILE,
    )
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, listener)
        log.info(
            "relay %s listening on %s, %s",
            identity.device_id,
            format_address(host, bound),
            _membership(config, open_override),
        )
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                break
        tasks.cancel_scope.cancel()


def run_relay_process(
    home: Home, listen: str, open_override: bool, log_level: str, *, tap: Tap | None = None
) -> int:
    """``commonsync relay serve``: the relay in the foreground; its exit code (0 after
    SIGTERM or SIGINT, 2 if it cannot start)."""
    from ..__main__ import run_process

    setup_logging(log_level)
    if listen:
        try:
            parse_address(listen, default_port=wire.DEFAULT_RELAY_PORT)
        except ConfigError as exc:
            print(f"commonsync relay: {exc}", file=sys.stderr)
            return 2
    main = partial(run_relay, home, listen=listen, open_override=open_override, tap=tap)
    return run_process(main, "commonsync relay")
