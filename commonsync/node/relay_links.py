"""This device's control connections to its community relays (SPEC.md §14).

One connection per configured relay (``commonsync relay add RELAYID@HOST:PORT``), pinned to
the relay's ID and kept with exponential backoff. While one is up,
:class:`~commonsync.node.peers.Peers` can ask that relay for a session with a device it cannot
reach directly, and the relay's invitations are handed to it to join. Why a relay is not
connected (unreachable, not a member, wrong ID) stays in :meth:`RelayLinks.status`, which
``commonsync status`` and ``commonsync relay list`` show.

A device that is an admin or owner of a folder with a membership log also *vouches*, at each
relay that takes vouches, for every device its folders' logs name (SPEC.md §14.1): at
connect, and again whenever a log changes. A relay whose hoster made it a delegate
(``commonsync relay allow --delegate``) then admits those devices and drops the removed
ones; another relay refuses, and is asked again every five minutes (a delegation given
meanwhile takes effect). The relay learns device IDs only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from ..errors import CommonsyncError, RelayError, RelayRefusedError
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..relay.client import RelayControl, connect_relay
from ..relay.wire import DEFAULT_RELAY_PORT, Invitation
from .config import RelayConfig, parse_address

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 60.0
#: A connection that lasted this long was good: the next attempt starts at MIN_BACKOFF.
STABLE_AFTER = 10.0
#: Seconds after which the set to vouch for is looked at again even if no log said it changed.
VOUCH_RECHECK = 30.0
#: Seconds before a set the relay refused is offered again (a delegation given meanwhile).
VOUCH_RETRY = 300.0


@dataclass
class RelayLink:
    """One configured relay and its control connection, when there is one."""

    config: RelayConfig
    control: RelayControl | None = None
    since: float | None = None
    error: str = ""
    #: The relay refused this device (it is not a member there): a problem for status.
    refused: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    @property
    def relay_id(self) -> DeviceId:
        return self.config.relay_id

    @property
    def name(self) -> str:
        return f"relay {self.relay_id.short_str}"


class RelayLinks:
    def __init__(
        self,
        identity: DeviceIdentity,
        relays: list[RelayConfig],
        *,
        on_connected: Callable[[RelayLink], None],
        on_invitation: Callable[[RelayLink, Invitation], None],
        vouches: Callable[[], frozenset[DeviceId] | None] = lambda: None,
    ) -> None:
        self._identity = identity
        self._configs = relays  # the daemon's list: relays added later appear here too
        self._on_connected = on_connected
        self._on_invitation = on_invitation
        #: The devices to vouch for at the relays (None: this device is no admin anywhere).
        self.vouches = vouches
        self._vouches_changed = anyio.Event()
        self.links: dict[DeviceId, RelayLink] = {}
        self._tasks: anyio.abc.TaskGroup | None = None

    async def run(self) -> None:
        """Keep a connection to every configured relay, until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            for relay in self._configs:
                self.update(relay)
            await anyio.sleep_forever()

    def update(self, relay: RelayConfig) -> None:
        """Connect to a relay just added, or again to one whose address changed."""
        link = self.links.get(relay.relay_id)
        if link is not None:
            link.scope.cancel()  # its loop ends; a new one starts below
        if self._tasks is None:
            return
        link = self.links[relay.relay_id] = RelayLink(relay)
        self._tasks.start_soon(self._keep, link)

    def vouches_changed(self) -> None:
        """The set of devices to vouch for may have changed (a membership log did): send it
        again to every connected relay where it differs from what was sent."""
        self._vouches_changed.set()
        self._vouches_changed = anyio.Event()

    def connected(self) -> list[RelayLink]:
        return [link for link in self.links.values() if link.control is not None]

    async def _keep(self, link: RelayLink) -> None:
        backoff = MIN_BACKOFF
        with link.scope:
            while True:
                started = time.monotonic()
                await self._connect_once(link)
                if time.monotonic() - started > STABLE_AFTER:
                    backoff = MIN_BACKOFF
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _connect_once(self, link: RelayLink) -> None:
        try:
            host, port = parse_address(link.config.address, default_port=DEFAULT_RELAY_PORT)
            async with connect_relay(host, port, self._identity, link.relay_id) as control:
                link.control, link.since, link.error = control, time.time(), ""
                link.refused = False
                log.info("connected to %s at %s", link.name, link.config.address)
                self._on_connected(link)
                ended: CommonsyncError = RelayError(f"{link.name} closed the control connection")
                async with anyio.create_task_group() as tasks:
                    if control.takes_vouches:
                        tasks.start_soon(self._vouch, link, control)
                    try:
                        async for invitation in control.invitations():
                            self._on_invitation(link, invitation)
                    except CommonsyncError as exc:
                        # Raised below, as it is: from inside the task group it would come
                        # out wrapped in an exception group, which nothing here catches (the
                        # whole node stopped when a relay closed the connection).
                        ended = exc
                    tasks.cancel_scope.cancel()
                raise ended
        except CommonsyncError as exc:
            was_connected = link.control is not None
            changed = str(exc) != link.error
            link.error = str(exc)
            link.refused = isinstance(exc, RelayRefusedError) and not was_connected
            if isinstance(exc, RelayRefusedError | RelayError) and not was_connected and changed:
                log.warning("cannot use %s at %s: %s", link.name, link.config.address, exc)
            elif was_connected:
                log.info("lost %s: %s", link.name, exc)
            else:
                log.debug("cannot reach %s at %s: %s", link.name, link.config.address, exc)
        finally:
            link.control, link.since = None, None

    async def _vouch(self, link: RelayLink, control: RelayControl) -> None:
        """Keep the relay's copy of the set of devices this one vouches for current, while
        the connection lasts. A refusal (the relay's hoster did not make this device a
        delegate) is logged once; the set is offered again every :data:`VOUCH_RETRY`
        seconds, so that a delegation given later takes effect without a reconnection."""
        sent: frozenset[DeviceId] | None = None
        refused = False
        while True:
            changed = self._vouches_changed
            wanted = self.vouches()
            if wanted is None and sent is not None:
                wanted = frozenset()  # no longer an admin: withdraw what we vouched for
            if wanted is not None and wanted != sent:
                try:
                    held = await control.vouch(wanted)
                except RelayRefusedError as exc:
                    if not refused:
                        log.info("%s takes no vouches from this device: %s", link.name, exc)
                    refused = True
                    await anyio.sleep(VOUCH_RETRY)
                    continue
                except CommonsyncError as exc:
                    log.debug("vouching at %s failed: %s", link.name, exc)
                    return  # the connection ends; the next one sends the set again
                log.info("%s: vouched for %d devices", link.name, held)
                sent, refused = wanted, False
            with anyio.move_on_after(VOUCH_RECHECK):  # a folder started or stopped, too
                await changed.wait()

    def status(self) -> list[dict[str, Any]]:
        out = []
        for relay in self._configs:
            link = self.links.get(relay.relay_id)
            connected = link is not None and link.control is not None
            out.append(
                {
                    "id": str(relay.relay_id),
                    "address": relay.address,
                    "connected": connected,
                    "since": link.since if link else None,
                    "error": link.error if link and not connected else "",
                }
            )
        return out
