"""Connections to other devices: at most one session per device, whoever dialled.

Known devices are dialled at their configured addresses and at those LAN discovery found,
with exponential backoff; any device may dial us, but the handshake accepts only known
devices, and a stranger that tries is listed as *pending* so that a person can accept it
(``commonsync device add``). Each session is a :class:`~commonsync.sync.exchange.PeerExchange`
over the folders configured as shared with that device.

A known device that no address reaches is reached through a community relay this device is
connected to (:mod:`commonsync.node.relay_links`, SPEC.md §14): the relay splices two fresh
connections and the session runs over them end to end, exactly as over a direct one. A relay's
invitation is always joined, and the handshake decides as for an inbound connection: a known
device gets its session, a stranger is refused and listed as pending (its identity proven by
the handshake, not taken from the relay's word), unless it names the ``join`` feature: then,
as on a direct connection, it gets the join conversation (:func:`serve_join`) and nothing else.

When both devices dial each other at once, both end up keeping the same connection: a direct
one over a relayed one, then the one dialled by the device with the smaller ID (then the newer
one), so neither keeps closing the other's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.abc

from ..errors import CommonsyncError, RefusedByPeerError, RelayRefusedError
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..formats.messages import Join, Joined, Offer
from ..relay.client import accept_relayed_channel, open_relayed_channel
from ..relay.wire import Invitation, RefuseReason
from ..sync.exchange import OfferHandler, PeerExchange
from ..wire.channel import Channel, accept_channel, connect_channel
from ..wire.handshake import JOIN_FEATURE
from ..wire.session import Session
from . import inbound
from .config import NodeConfig, parse_address, remote_address
from .events import EventBus
from .folders import FolderRunner
from .inbound import Admission, Ticket
from .joining import serve_join
from .limits import RateLimits
from .lograte import LogRate
from .open_codes import OpenCodes
from .relay_links import RelayLink, RelayLinks

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 60.0
#: Pause before dialling again after a session ended (the peer may be restarting).
RECONNECT_DELAY = 0.3
#: Unknown devices remembered for a person to accept.
MAX_PENDING = 64
#: Bytes of a folder label sent in an offer (the wire format's limit).
MAX_LABEL_BYTES = 256
#: Relay invitations being joined at once (each is a connection and a handshake) ...
MAX_RELAYED_JOINS = 8
#: ... for one requester (as the relay names it), so that a member that joins sessions and
#: stays silent cannot take every slot ...
MAX_JOINS_PER_REQUESTER = 2
#: ... and for all the requesters this device does not know, together.
MAX_STRANGER_JOINS = 2
#: Seconds a relayed join may take in all: the relay splicing it (up to its join timeout,
#: 10 s by default) and the handshake.
RELAYED_JOIN_TIMEOUT = 20.0
#: Inbound connections still in their handshake, from one source (an IPv4 address or an
#: IPv6 /64) and in all (fewer when the process may open few files:
#: :func:`~commonsync.node.inbound.greeting_capacity`); beyond, a connection is closed at once.
MAX_HANDSHAKES_PER_SOURCE = 8
MAX_HANDSHAKES = 128
#: Seconds an inbound connection (direct or relayed) has for its handshake: two round trips
#: and a few signatures take far less; a stranger that says nothing frees its place sooner.
INBOUND_HANDSHAKE_TIMEOUT = 5.0
#: LAN-discovered addresses remembered per device (the newest and the ones that worked) ...
MAX_DISCOVERED_ADDRESSES = 8
#: ... and devices whose discovered addresses are remembered (known ones first).
MAX_DISCOVERED_DEVICES = 256


class PeerHost(Protocol):
    """What the connections need from their :class:`~commonsync.node.node.Node`."""

    identity: DeviceIdentity
    config: NodeConfig
    event_bus: EventBus
    limits: RateLimits

    @property
    def device_name(self) -> str: ...

    def runner(self, folder_id: bytes) -> FolderRunner | None: ...

    async def on_offer(self, device: DeviceId, offer: Offer) -> None: ...

    async def admit(self, exchange: PeerExchange, folder_id: bytes) -> bool: ...

    def device_named(self, device: DeviceId, name: str) -> None: ...

    async def admit_joiner(self, device: DeviceId, public_key: bytes, join: Join) -> Joined: ...

    @property
    def codes(self) -> OpenCodes: ...


@dataclass
class Link:
    """One live session with a device."""

    device_id: DeviceId
    exchange: PeerExchange
    address: str
    initiator: bool
    #: The relay the session runs through; None for a direct connection.
    relay: DeviceId | None = None
    since: float = field(default_factory=time.time)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    closed: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class PendingDevice:
    """A device we do not know that dialled us or announced itself on the LAN."""

    device_id: DeviceId
    addresses: list[str]
    name: str = ""
    last_seen: float = field(default_factory=time.time)
    how: str = "connected"


class Peers:
    def __init__(self, host: PeerHost) -> None:
        self._host = host
        self.links: dict[DeviceId, Link] = {}
        self.pending: dict[DeviceId, PendingDevice] = {}
        self.discovered: dict[DeviceId, DiscoveredAddresses] = {}
        self._dialers: set[DeviceId] = set()
        self._wake: dict[DeviceId, anyio.Event] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        #: Bytes sent and received in sessions that ended, per device.
        self._ended_traffic: dict[DeviceId, tuple[int, int]] = {}
        #: The devices whose last answer was a refusal of this device (it does not accept
        #: it), with what they said: a problem status shows until a session runs.
        self.refused_by: dict[DeviceId, str] = {}
        #: When each device's last session ended (seconds since the epoch), since this node
        #: started: what "last seen" says of a device not connected now.
        self._last_session_end: dict[DeviceId, float] = {}
        self.relays = RelayLinks(
            host.identity,
            host.config.relays,
            on_connected=lambda _link: self._wake_all(),
            on_invitation=self._on_invitation,
        )
        self._relayed_joins = 0
        self._joins_by_requester: dict[DeviceId, int] = {}
        self._stranger_joins = 0
        self.admission = Admission(
            MAX_HANDSHAKES_PER_SOURCE, inbound.greeting_capacity(MAX_HANDSHAKES)
        )
        #: What strangers cause is logged a few times per source and minute, then summed up.
        self._refusals = LogRate(log, "connections refused")
        self._strangers = LogRate(log, "unknown devices")
        self._ignored = LogRate(log, "invitations ignored")

    @property
    def me(self) -> DeviceId:
        return self._host.identity.device_id

    async def run(self, listener: anyio.abc.Listener[Any] | None) -> None:
        """Serve ``listener`` and dial every known device, until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            if listener is not None:
                tasks.start_soon(
                    partial(
                        inbound.serve,
                        listener,
                        self._handle_inbound,
                        self.admission,
                        on_refused=self._refused_at_once,
                    )
                )
            for rate in (self._refusals, self._strangers, self._ignored):
                tasks.start_soon(rate.run)
            tasks.start_soon(self.relays.run)
            for device in self._host.config.devices:
                self.dial(device.device_id)

    # -- dialling ------------------------------------------------------------------------------

    def dial(self, device_id: DeviceId) -> None:
        """Keep a connection to a known device (starts its dialler once; wakes it if it is
        waiting for an address or a retry)."""
        if device_id in self._dialers:
            self._wake_dialer(device_id)
            return
        if self._tasks is None:
            return
        self._dialers.add(device_id)
        self._tasks.start_soon(self._dial_loop, device_id)

    def _wake_dialer(self, device_id: DeviceId) -> None:
        event = self._wake.pop(device_id, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        """A relay connected: every device waiting for a way to reach it may try it."""
        for device_id in list(self._wake):
            self._wake_dialer(device_id)

    async def _sleep_unless_woken(self, device_id: DeviceId, seconds: float) -> bool:
        """Sleep; True if woken before the time was up."""
        event = self._wake.setdefault(device_id, anyio.Event())
        with anyio.move_on_after(seconds):
            await event.wait()
            return True
        return False

    async def _dial_loop(self, device_id: DeviceId) -> None:
        backoff = MIN_BACKOFF
        try:
            while (device := self._host.config.device(device_id)) is not None and not (
                device.paused
            ):
                link = self.links.get(device_id)
                if link is not None:
                    await link.closed.wait()
                    await anyio.sleep(RECONNECT_DELAY)
                    continue
                addresses = device.addresses + [
                    a for a in self.discovered_addresses(device_id) if a not in device.addresses
                ]
                relays = self.relays.connected()
                if not addresses and not relays:
                    await self._sleep_unless_woken(device_id, math.inf)
                    backoff = MIN_BACKOFF
                    continue
                if await self._dial_once(device_id, addresses) or await self._dial_relayed(
                    device_id, relays
                ):
                    backoff = MIN_BACKOFF
                    await anyio.sleep(RECONNECT_DELAY)
                elif await self._sleep_unless_woken(device_id, backoff):
                    backoff = MIN_BACKOFF
                else:
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            self._dialers.discard(device_id)

    async def _dial_once(self, device_id: DeviceId, addresses: list[str]) -> bool:
        """Try each address in turn; True if a session ran."""
        for address in addresses:
            if device_id in self.links:  # it dialled us meanwhile
                return True
            try:
                host, port = parse_address(address)
                channel = await connect_channel(
                    host, port, self._host.identity, accept=lambda d: d == device_id
                )
            except (OSError, CommonsyncError) as exc:
                log.debug("cannot reach %s at %s: %s", device_id.short_str, address, exc)
                if isinstance(exc, RefusedByPeerError) and "does not accept" in str(exc):
                    self.refused_by[device_id] = str(exc)  # not a peer that was stopping
                continue
            found = self.discovered.get(device_id)
            if found is not None:
                found.worked(address)
            await self._run_session(channel, address, initiator=True)
            return True
        return False

    async def _dial_relayed(self, device_id: DeviceId, relays: list[RelayLink]) -> bool:
        """Ask each connected relay in turn for a session; True if a session ran."""
        for link in relays:
            control = link.control
            if control is None:
                continue
            if device_id in self.links:  # it reached us meanwhile
                return True
            try:
                channel = await open_relayed_channel(control, self._host.identity, device_id)
            except CommonsyncError as exc:
                if isinstance(exc, RefusedByPeerError) and "does not accept" in str(exc):
                    self.refused_by[device_id] = str(exc)
                offline = isinstance(exc, RelayRefusedError) and exc.reason == RefuseReason.OFFLINE
                level = logging.DEBUG if offline else logging.INFO
                target = device_id.short_str
                log.log(level, "cannot reach %s through %s: %s", target, link.name, exc)
                continue
            await self._run_session(channel, _relayed(link), initiator=True, relay=link.relay_id)
            return True
        return False

    # -- accepting -----------------------------------------------------------------------------

    async def _handle_inbound(self, stream: anyio.abc.SocketStream, ticket: Ticket) -> None:
        address = remote_address(stream)
        try:
            channel = await accept_channel(
                stream,
                self._host.identity,
                accept=self._accept_from([address], "connected", ticket.source),
                timeout=INBOUND_HANDSHAKE_TIMEOUT,
                accept_joiners=True,
            )
        except CommonsyncError as exc:
            self._refusals.log(
                logging.INFO, ticket.source, "refused a connection from %s: %s", address, exc
            )
            return
        finally:
            ticket.release()
        if JOIN_FEATURE in channel.features:
            await self._serve_join(channel)
            return
        await self._run_session(channel, address, initiator=False)

    async def _serve_join(self, channel: Channel) -> None:
        """A channel whose initiator named the join feature, direct or through a relay: it
        comes with an invitation (SPEC.md §15.9), so that conversation and nothing else."""
        await serve_join(channel, self._host.admit_joiner, self._host.codes)

    def _refused_at_once(self, source: str, why: str) -> None:
        self._refusals.log(
            logging.INFO,
            source,
            "closed a connection from %s at once: %s still in their handshake",
            source,
            why,
        )

    def _on_invitation(self, link: RelayLink, invitation: Invitation) -> None:
        """A relay says a device wants a session: join it (bounded in all, per requester and
        for strangers together), and let the handshake decide, as for an inbound
        connection."""
        if self._tasks is None:
            return
        requester = invitation.requester_id
        known = self._host.config.device(requester) is not None
        why = ""
        if self._relayed_joins >= MAX_RELAYED_JOINS:
            why = "too many invitations at once"
        elif self._joins_by_requester.get(requester, 0) >= MAX_JOINS_PER_REQUESTER:
            why = f"{requester.short_str} already has {MAX_JOINS_PER_REQUESTER} being joined"
        elif not known and self._stranger_joins >= MAX_STRANGER_JOINS:
            why = "too many invitations from unknown devices at once"
        if why:
            key = f"{link.name}/{requester.short_str}"
            self._ignored.log(logging.INFO, key, "%s: ignored an invitation: %s", link.name, why)
            return
        self._relayed_joins += 1
        self._joins_by_requester[requester] = self._joins_by_requester.get(requester, 0) + 1
        self._stranger_joins += not known
        self._tasks.start_soon(self._join_relayed, link, invitation, known)

    async def _join_relayed(self, link: RelayLink, invitation: Invitation, known: bool) -> None:
        """Join a relay's session and let the handshake decide. A requester that names the
        join feature (a stranger with an invitation link or a short code, through a relay it
        is not a member of) is accepted for the join conversation and nothing else, exactly
        as on a direct connection; it keeps its join slot meanwhile, so strangers cannot
        hold more than :data:`MAX_STRANGER_JOINS` conversations at once."""
        requester = invitation.requester_id
        try:
            control = link.control
            if control is None:
                return
            with anyio.fail_after(RELAYED_JOIN_TIMEOUT):
                channel = await accept_relayed_channel(
                    control,
                    self._host.identity,
                    invitation,
                    accept=self._accept_from([], f"invited through {link.name}", link.name),
                    timeout=INBOUND_HANDSHAKE_TIMEOUT,
                    accept_joiners=True,
                )
            if JOIN_FEATURE in channel.features:
                await self._serve_join(channel)
                return
        except (CommonsyncError, TimeoutError) as exc:
            why = str(exc) or f"not done within {RELAYED_JOIN_TIMEOUT:g} s"
            self._ignored.log(
                logging.INFO,
                f"{link.name}/{requester.short_str}",
                "no session with %s through %s: %s",
                requester.short_str,
                link.name,
                why,
            )
            return
        finally:
            self._relayed_joins -= 1
            self._stranger_joins -= not known
            left = self._joins_by_requester.pop(requester, 0) - 1
            if left > 0:
                self._joins_by_requester[requester] = left
        await self._run_session(channel, _relayed(link), initiator=False, relay=link.relay_id)

    def _accept_from(
        self, addresses: list[str], how: str, source: str
    ) -> Callable[[DeviceId], bool]:
        def accept(device_id: DeviceId) -> bool:
            known = self._host.config.device(device_id)
            if known is not None:
                return not known.paused  # paused by a person: refused, and not waiting
            self.note_pending(device_id, addresses, how=how, source=source)
            return False

        return accept

    def note_pending(
        self,
        device_id: DeviceId,
        addresses: list[str],
        *,
        how: str,
        name: str = "",
        source: str = "",
    ) -> None:
        """Remember a device nobody accepted yet, for a person to accept; ``source`` (where
        it came from) bounds how often this is logged and published."""
        if device_id == self.me:
            return
        known = self.pending.get(device_id)
        if known is None:
            if len(self.pending) >= MAX_PENDING:
                oldest = min(self.pending.values(), key=lambda p: p.last_seen)
                del self.pending[oldest.device_id]
            self.pending[device_id] = PendingDevice(device_id, addresses, name, how=how)
            if self._strangers.log(
                logging.INFO,
                source or how,
                "unknown device %s (%s) is pending",
                device_id,
                how,
            ):
                self._host.event_bus.publish("", "device pending", peer=str(device_id), detail=how)
        else:
            known.addresses, known.last_seen = addresses, time.time()

    # -- discovery ---------------------------------------------------------------------------------

    def on_sighting(self, device_id: DeviceId, addresses: list[str]) -> None:
        """A device announced itself on the LAN at ``addresses`` (``host:port``).

        Anyone on the LAN can announce any device ID, so an announcement only adds
        addresses to try: it never replaces a configured one or one that worked, and what
        is remembered is bounded (:data:`MAX_DISCOVERED_ADDRESSES` per device,
        :data:`MAX_DISCOVERED_DEVICES` devices). The handshake proves who answers."""
        if device_id == self.me:
            return
        known = self._host.config.device(device_id) is not None
        found = self.discovered.get(device_id)
        if found is None:
            if len(self.discovered) >= MAX_DISCOVERED_DEVICES and not self._forget_a_sighting(
                known
            ):
                return  # full of known devices, and this one is a stranger
            found = self.discovered[device_id] = DiscoveredAddresses()
        # Kept for strangers too: once a person accepts one, it is dialled there.
        if found.add(addresses):
            self._strangers.log(
                logging.INFO,
                f"the LAN/{device_id.short_str}" if known else "the LAN",
                "found %s on the LAN at %s",
                device_id.short_str,
                ", ".join(addresses),
            )
        if not known:
            self.note_pending(device_id, addresses, how="discovered on the LAN", source="the LAN")
            return
        self.dial(device_id)

    def _forget_a_sighting(self, for_known: bool) -> bool:
        """Make room for one device: forget the stalest stranger, or (to make room for a
        known device) the stalest known one; False if there is nothing it may forget."""
        config = self._host.config
        candidates = [d for d in self.discovered if config.device(d) is None]
        if not candidates and for_known:
            candidates = list(self.discovered)
        if not candidates:
            return False
        stalest = min(candidates, key=lambda d: self.discovered[d].last_seen)
        del self.discovered[stalest]
        return True

    def discovered_addresses(self, device_id: DeviceId) -> list[str]:
        """Where LAN discovery says a device is, those that worked first, then the newest."""
        found = self.discovered.get(device_id)
        return found.in_order() if found is not None else []

    # -- sessions ----------------------------------------------------------------------------

    async def _run_session(
        self, channel: Channel, address: str, *, initiator: bool, relay: DeviceId | None = None
    ) -> None:
        peer = channel.peer
        config = self._host.config
        shared = config.folders_shared_with(peer)
        folders = []
        offers = []
        for folder_config in shared:
            runner = self._host.runner(folder_config.folder_id)
            if runner is None or runner.folder is None:
                continue
            folders.append(runner.folder)
            label = folder_config.label.encode()[:MAX_LABEL_BYTES].decode(errors="ignore")
            offers.append(Offer(folder_config.folder_id, label, runner.key.to_bytes()))
        on_offer: OfferHandler = self._host.on_offer
        # Its bytes keep to this device's limits and the overall ones (changed live).
        channel.throttle(*self._host.limits.buckets(peer))
        exchange = PeerExchange(
            Session(channel),
            folders,
            device_name=self._host.device_name,
            offers=offers,
            on_offer=on_offer,
            admit=self._host.admit,
            on_hello=lambda hello: self._host.device_named(peer, hello.device_name),
        )
        link = Link(peer, exchange, address, initiator, relay)
        existing = self.links.get(peer)
        if existing is not None:
            if not self._prefer(link, existing):
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await channel.aclose()
                return
            existing.scope.cancel()
        self.links[peer] = link
        self.pending.pop(peer, None)
        self.refused_by.pop(peer, None)
        log.info(
            "connected to %s (%s, %s)",
            peer.short_str,
            address,
            "we dialled" if initiator else "it dialled",
        )
        self._host.event_bus.publish("", "peer connected", peer=str(peer), detail=address)
        try:
            with link.scope:
                await exchange.run()
        except CommonsyncError as exc:
            log.info("session with %s ended: %s", peer.short_str, exc)
        finally:
            sent, received = self._ended_traffic.get(peer, (0, 0))
            self._ended_traffic[peer] = (
                sent + channel.bytes_sent,
                received + channel.bytes_received,
            )
            self._last_session_end[peer] = time.time()
            if self.links.get(peer) is link:
                del self.links[peer]
                self._host.event_bus.publish("", "peer disconnected", peer=str(peer))
            link.closed.set()

    def _prefer(self, new: Link, old: Link) -> bool:
        """Which of two sessions with the same device to keep (the same answer on both)."""
        if (new.relay is None) != (old.relay is None):
            return new.relay is None  # a direct connection beats a relayed one
        smaller_dials = self.me.digest < new.device_id.digest
        new_good, old_good = new.initiator == smaller_dials, old.initiator == smaller_dials
        if new_good != old_good:
            return new_good
        return True  # same direction: the newer one (the old one is likely dead)

    def restart(self, device_id: DeviceId) -> None:
        """End the session with a device so that it starts again with the current folders
        and offers (the dialling side reconnects at once)."""
        link = self.links.get(device_id)
        if link is not None:
            link.scope.cancel()
        self._wake_dialer(device_id)

    def forget(self, device_id: DeviceId) -> None:
        self.discovered.pop(device_id, None)
        self.restart(device_id)

    # -- status ------------------------------------------------------------------------------------

    def traffic(self, device_id: DeviceId) -> tuple[int, int]:
        """Bytes sent to and received from a device since the daemon started."""
        sent, received = self._ended_traffic.get(device_id, (0, 0))
        link = self.links.get(device_id)
        if link is not None:
            channel = link.exchange.session.channel
            sent, received = sent + channel.bytes_sent, received + channel.bytes_received
        return sent, received

    def last_seen(self, device: DeviceId) -> float | None:
        """When this node last had a session with ``device`` (now, if it has one); None if
        not since it started."""
        if device in self.links:
            return time.time()
        return self._last_session_end.get(device)

    def status(self) -> list[dict[str, Any]]:
        config = self._host.config
        out = []
        for device in config.devices:
            link = self.links.get(device.device_id)
            sent, received = self.traffic(device.device_id)
            out.append(
                {
                    "id": str(device.device_id),
                    "name": device.display_name,
                    "reported_name": device.reported_name,
                    "addresses": device.addresses,
                    "discovered": self.discovered_addresses(device.device_id),
                    "connected": link is not None,
                    "paused": device.paused,
                    "address": link.address if link else "",
                    "via": "" if link is None else "relay" if link.relay else "direct",
                    "relay": str(link.relay) if link and link.relay else "",
                    "since": link.since if link else None,
                    "folders": [f.label for f in config.folders_shared_with(device.device_id)],
                    "bytes_sent": sent,
                    "bytes_received": received,
                }
            )
        return out

    def pending_status(self) -> list[dict[str, Any]]:
        return [
            {
                "id": str(p.device_id),
                "addresses": p.addresses,
                "how": p.how,
                "last_seen": p.last_seen,
            }
            for p in self.pending.values()
        ]


@dataclass
class DiscoveredAddresses:
    """The addresses LAN announcements gave for one device: a bounded set, in which the
    ones that led to a session are kept over new ones (a forged announcement cannot push
    them out)."""

    #: address → when it was last announced (monotonic seconds).
    seen: dict[str, float] = field(default_factory=dict)
    working: set[str] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)

    def add(self, addresses: list[str]) -> bool:
        """Remember ``addresses`` as just announced; True if one of them is new."""
        now = self.last_seen = time.monotonic()
        new = False
        for address in addresses[:MAX_DISCOVERED_ADDRESSES]:
            new |= address not in self.seen
            self.seen.pop(address, None)
            self.seen[address] = now  # newest last
        while len(self.seen) > MAX_DISCOVERED_ADDRESSES:
            # The stalest that never worked goes (the just-announced are the newest).
            others = [a for a in self.seen if a not in self.working] or list(self.seen)
            stale = min(others, key=self.seen.__getitem__)
            del self.seen[stale]
            self.working.discard(stale)
        return new

    def worked(self, address: str) -> None:
        if address in self.seen:
            self.working = {address}  # the one that works now; the others are ordinary again

    def in_order(self) -> list[str]:
        newest_first = sorted(self.seen, key=self.seen.__getitem__, reverse=True)
        return [a for a in newest_first if a in self.working] + [
            a for a in newest_first if a not in self.working
        ]


def _relayed(link: RelayLink) -> str:
    """The "address" of a session through a relay, as status shows it."""
    return f"{link.name} at {link.config.address}"
