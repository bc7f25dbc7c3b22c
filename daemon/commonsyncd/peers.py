"""Connections to other devices: at most one session per device, whoever dialled.

Known devices are dialled at their configured addresses and at those LAN discovery found,
with exponential backoff; any device may dial us, but the handshake accepts only known
devices, and a stranger that tries is listed as *pending* so that a person can accept it
(``commonsync device add``). Each session is a :class:`~commonsync.exchange.PeerExchange`
over the folders configured as shared with that device.

A known device that no address reaches is reached through a community relay this device is
connected to (:mod:`commonsyncd.relay_links`, SPEC.md §14): the relay splices two fresh
connections and the session runs over them end to end, exactly as over a direct one. A relay's
invitation is always joined, and the handshake decides as for an inbound connection: a known
device gets its session, a stranger is refused and listed as pending (its identity proven by
the handshake, not taken from the relay's word).

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
from typing import Any, Protocol

import anyio
import anyio.abc

from commonsync import Channel, DeviceId, DeviceIdentity, Session, accept_channel, connect_channel
from commonsync.errors import CommonsyncError, RelayRefusedError
from commonsync.exchange import OfferHandler, PeerExchange
from commonsync.messages import Offer
from commonsync.relay_client import accept_relayed_channel, open_relayed_channel
from commonsync.relaywire import Invitation, RefuseReason

from .config import Config, parse_address, remote_address
from .events import EventBus
from .folders import FolderRunner
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
#: Relay invitations being joined at once (each is a connection and a handshake).
MAX_RELAYED_JOINS = 8


class PeerHost(Protocol):
    """What the connections need from the daemon."""

    identity: DeviceIdentity
    config: Config
    events: EventBus

    @property
    def device_name(self) -> str: ...

    def runner(self, folder_id: bytes) -> FolderRunner | None: ...

    async def on_offer(self, device: DeviceId, offer: Offer) -> None: ...


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
        self.discovered: dict[DeviceId, list[str]] = {}
        self._dialers: set[DeviceId] = set()
        self._wake: dict[DeviceId, anyio.Event] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        #: Bytes sent and received in sessions that ended, per device.
        self._ended_traffic: dict[DeviceId, tuple[int, int]] = {}
        self.relays = RelayLinks(
            host.identity,
            host.config.relays,
            on_connected=lambda _link: self._wake_all(),
            on_invitation=self._on_invitation,
        )
        self._relayed_joins = 0

    @property
    def me(self) -> DeviceId:
        return self._host.identity.device_id

    async def run(self, listener: anyio.abc.Listener[Any] | None) -> None:
        """Serve ``listener`` and dial every known device, until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            if listener is not None:
                tasks.start_soon(listener.serve, self._handle_inbound)
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
            while (device := self._host.config.device(device_id)) is not None:
                link = self.links.get(device_id)
                if link is not None:
                    await link.closed.wait()
                    await anyio.sleep(RECONNECT_DELAY)
                    continue
                addresses = device.addresses + self.discovered.get(device_id, [])
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
                continue
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
                offline = isinstance(exc, RelayRefusedError) and exc.reason == RefuseReason.OFFLINE
                level = logging.DEBUG if offline else logging.INFO
                target = device_id.short_str
                log.log(level, "cannot reach %s through %s: %s", target, link.name, exc)
                continue
            await self._run_session(channel, _relayed(link), initiator=True, relay=link.relay_id)
            return True
        return False

    # -- accepting -----------------------------------------------------------------------------

    async def _handle_inbound(self, stream: anyio.abc.SocketStream) -> None:
        address = remote_address(stream)
        try:
            channel = await accept_channel(
                stream, self._host.identity, accept=self._accept_from([address], "connected")
            )
        except CommonsyncError as exc:
            log.info("refused a connection from %s: %s", address, exc)
            return
        await self._run_session(channel, address, initiator=False)

    def _on_invitation(self, link: RelayLink, invitation: Invitation) -> None:
        """A relay says a device wants a session: join it (bounded), and let the handshake
        decide, as for an inbound connection."""
        if self._tasks is None:
            return
        if self._relayed_joins >= MAX_RELAYED_JOINS:
            log.info("%s: too many invitations at once; ignored one", link.name)
            return
        self._relayed_joins += 1
        self._tasks.start_soon(self._join_relayed, link, invitation)

    async def _join_relayed(self, link: RelayLink, invitation: Invitation) -> None:
        try:
            control = link.control
            if control is None:
                return
            channel = await accept_relayed_channel(
                control,
                self._host.identity,
                invitation,
                accept=self._accept_from([], f"invited through {link.name}"),
            )
        except CommonsyncError as exc:
            requester = invitation.requester_id.short_str
            log.info("no session with %s through %s: %s", requester, link.name, exc)
            return
        finally:
            self._relayed_joins -= 1
        await self._run_session(channel, _relayed(link), initiator=False, relay=link.relay_id)

    def _accept_from(self, addresses: list[str], how: str) -> Callable[[DeviceId], bool]:
        def accept(device_id: DeviceId) -> bool:
            if self._host.config.device(device_id) is not None:
                return True
            self.note_pending(device_id, addresses, how=how)
            return False

        return accept

    def note_pending(
        self, device_id: DeviceId, addresses: list[str], *, how: str, name: str = ""
    ) -> None:
        if device_id == self.me:
            return
        known = self.pending.get(device_id)
        if known is None:
            if len(self.pending) >= MAX_PENDING:
                oldest = min(self.pending.values(), key=lambda p: p.last_seen)
                del self.pending[oldest.device_id]
            self.pending[device_id] = PendingDevice(device_id, addresses, name, how=how)
            self._host.events.publish("", "device pending", peer=str(device_id), detail=how)
            log.info("unknown device %s (%s) is pending", device_id, how)
        else:
            known.addresses, known.last_seen = addresses, time.time()

    # -- discovery ---------------------------------------------------------------------------------

    def on_sighting(self, device_id: DeviceId, addresses: list[str]) -> None:
        """A device announced itself on the LAN at ``addresses`` (``host:port``)."""
        if device_id == self.me:
            return
        # Kept for strangers too: once a person accepts one, it is dialled there.
        if self.discovered.get(device_id) != addresses:
            self.discovered[device_id] = addresses
            log.info("found %s on the LAN at %s", device_id.short_str, ", ".join(addresses))
        if self._host.config.device(device_id) is None:
            self.note_pending(device_id, addresses, how="discovered on the LAN")
            return
        self.dial(device_id)

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
        exchange = PeerExchange(
            Session(channel),
            folders,
            device_name=self._host.device_name,
            offers=offers,
            on_offer=on_offer,
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
        log.info(
            "connected to %s (%s, %s)",
            peer.short_str,
            address,
            "we dialled" if initiator else "it dialled",
        )
        self._host.events.publish("", "peer connected", peer=str(peer), detail=address)
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
            if self.links.get(peer) is link:
                del self.links[peer]
                self._host.events.publish("", "peer disconnected", peer=str(peer))
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

    def status(self) -> list[dict[str, Any]]:
        config = self._host.config
        out = []
        for device in config.devices:
            link = self.links.get(device.device_id)
            sent, received = self.traffic(device.device_id)
            out.append(
                {
                    "id": str(device.device_id),
                    "name": device.name,
                    "addresses": device.addresses,
                    "discovered": self.discovered.get(device.device_id, []),
                    "connected": link is not None,
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


def _relayed(link: RelayLink) -> str:
    """The "address" of a session through a relay, as status shows it."""
    return f"{link.name} at {link.config.address}"
