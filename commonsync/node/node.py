"""One device at run time: :class:`Node`.

A Node owns what a device is while it runs: its identity, its index, a
:class:`~commonsync.node.folders.FolderRunner` per folder (the engine's Folder with its
watcher and scans), the connections to the devices it knows and to community relays
(:class:`~commonsync.node.peers.Peers`), LAN discovery, the folders other devices offer it, and
the events of all of it. Everything runs in one task group: cancelling it stops the watchers,
abandons a write in progress safely (files are assembled in temporary files and renamed into
place), closes the sessions and, with :meth:`Node.open`, the index.

It runs under anyio, so under trio or asyncio alike. A tool embeds full sync in a few lines::

    async with Node.open(home, NodeConfig(listen="127.0.0.1:0")) as node:
        folder = await node.add_folder(path, "photos")
        await node.add_device(device_id, addresses=["192.0.2.7:22070"])
        await node.share("photos", device_id)
        async for event in node.events():
            ...

Its configuration is data (:class:`~commonsync.node.config.NodeConfig`); when a request
changes it, ``on_config_change`` is called with it, for the tool to keep (the daemon writes its
TOML file). A request that cannot be done raises a :class:`~commonsync.errors.RequestError`
and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import ifaddr

from ..errors import (
    CommonsyncError,
    DeviceIdError,
    EntryRefusedError,
    FolderKeyError,
    InvalidRequestError,
    MembershipError,
    NotFoundError,
    RequestConflictError,
    UnavailableError,
)
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..formats.keys import FolderKey
from ..formats.messages import Join, Joined, JoinStatus, Offer
from ..membership.codes import JoinCode, looks_like_code
from ..membership.entries import (
    Action,
    AddDevice,
    AddMember,
    Entry,
    Invite,
    NewEpoch,
    RemoveDevice,
    RemoveMember,
    RevokeInvitation,
    Role,
    SetRole,
)
from ..membership.epochs import seal_secret, secret_hash
from ..membership.invitations import invitation_key, new_secret
from ..membership.links import JoinLink
from ..membership.log import Member
from ..sync.exchange import PeerExchange
from ..sync.folder import Folder
from ..sync.layout import METADATA_DIR
from ..sync.members import FolderMembers
from ..sync.scanner import ScanReport
from ..sync.space import MinFree
from ..sync.store import IndexStore, open_store
from . import history, ignores, lifecycle
from .config import (
    ConfigError,
    DeviceConfig,
    FolderConfig,
    NodeConfig,
    RelayConfig,
    format_address,
    parse_address,
)
from .devices import matches as device_matches
from .devices import resolve as resolve_device
from .events import EventBus
from .folders import FolderRunner
from .home import NodeHome
from .joining import (
    ChannelOpener,
    CodeRefusedError,
    JoinRefusedError,
    ask_to_join,
    ask_to_join_with_code,
    code_channel_at_relay,
    code_channel_on_lan,
    refused,
)
from .limits import RateLimits
from .open_codes import CODE_LIFETIME, OpenCode, OpenCodes
from .peers import Peers
from .progress import device_problems

log = logging.getLogger(__name__)

#: Folder offers kept pending per offering device.
MAX_OFFERS_PER_DEVICE = 32
#: How long an invitation lasts unless said otherwise (seconds).
DEFAULT_INVITATION_LIFETIME = 7 * 86400
#: How long a joiner with a code waits for LAN discovery to show a device, when none is seen.
LAN_CODE_WAIT = 5.0
#: Seconds between the admin devices' turns to start a key epoch that a removal left
#: missing (SPEC.md §15.7): the first in order writes it, the others find it done.
EPOCH_RENEWAL_TURN = 5.0
#: What a joiner is told when its admission is refused, for the log's reasons.
_JOIN_REFUSALS = {
    "the invitation has expired": "this invitation has expired; ask for a new one",
    "the invitation was already used": "this invitation was already used; ask for a new one",
    "the invitation was revoked": "this invitation was revoked",
    "the member who made the invitation is no longer an admin": (
        "whoever made this invitation may no longer invite (no longer an admin); ask an admin "
        "for a new one"
    ),
    "the member who made the invitation is no longer an owner": (
        "whoever made this invitation may no longer admit owners; ask an owner for a new one"
    ),
    "the joiner did not prove the invitation's secret": (
        "the link's secret does not match the invitation (the link may be mistyped)"
    ),
}


@dataclass
class PendingOffer:
    """A folder another device invited us to; its key stays in memory until accepted."""

    folder_id: bytes
    label: str
    key: FolderKey
    offered_by: set[DeviceId] = field(default_factory=set)


class Node:
    """One device: its folders kept in sync with the devices it knows. Start it with
    :meth:`open` (or, holding an open store, ``await task_group.start(node.run)``)."""

    def __init__(
        self,
        home: NodeHome,
        config: NodeConfig,
        identity: DeviceIdentity,
        store: IndexStore,
        *,
        watch: bool = True,
        on_config_change: Callable[[NodeConfig], None] | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.identity = identity
        self.store = store
        self.event_bus = EventBus()
        #: Bandwidth limits, overall and per device, that every session keeps to.
        self.limits = RateLimits(config)
        self.peers = Peers(self)
        self.peers.relays.vouches = self._vouched_devices
        self.runners: dict[bytes, FolderRunner] = {}
        self.offers: dict[bytes, PendingOffer] = {}
        #: The TCP port it listens on (the one chosen, when configured with port 0).
        self.port = 0
        #: Sentences for a person about something the node did by itself (an index rebuilt).
        self.notices: list[str] = []
        self._watch = watch
        self._on_config_change = on_config_change
        self._lock = anyio.Lock()
        self._tasks: anyio.abc.TaskGroup | None = None
        #: The role to give a device a folder is shared with, until the entry admitting it
        #: is written (at its next session: the entry needs its key). Writer if none.
        self._roles: dict[tuple[bytes, DeviceId], Role] = {}
        #: Devices shared a folder as another device of a member (its ID), not as a new one.
        self._device_of: dict[tuple[bytes, DeviceId], bytes] = {}
        #: The short join codes this device holds open for people it invited.
        self.codes = OpenCodes()
        #: Folders whose missing key epoch this device waits its turn to start.
        self._renewing: set[bytes] = set()
        #: Each folder's runner in a cancel scope of its own: stopped alone when it is
        #: paused, moved or removed (commonsync.node.lifecycle).
        self.folder_tasks = lifecycle.FolderTasks()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        home: Path | NodeHome,
        config: NodeConfig | None = None,
        *,
        watch: bool = True,
        on_config_change: Callable[[NodeConfig], None] | None = None,
    ) -> AsyncIterator[Node]:
        """Run a Node whose identity, folder keys and index are in ``home`` (made on first
        use) until the block ends. ``config`` defaults to :class:`NodeConfig`'s defaults."""
        node_home = home if isinstance(home, NodeHome) else NodeHome(Path(home))
        identity = await anyio.to_thread.run_sync(node_home.load_or_create_identity)
        async with open_store(node_home.state_file) as store, anyio.create_task_group() as tasks:
            node = cls(
                node_home,
                config if config is not None else NodeConfig(),
                identity,
                store,
                watch=watch,
                on_config_change=on_config_change,
            )
            await tasks.start(node.run)
            try:
                yield node
            finally:
                tasks.cancel_scope.cancel()

    # -- who and what --------------------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self.identity.device_id

    @property
    def device_name(self) -> str:
        return self.config.name or self.identity.device_id.short_str

    def runner(self, folder_id: bytes) -> FolderRunner | None:
        return self.runners.get(folder_id)

    def events(self, *, replay: bool = False) -> AsyncIterator[dict[str, Any]]:
        """What happens, as it happens (after the recent events, with ``replay``): one dict
        per event with ``serial``, ``time``, ``folder`` (a label, or "" for a device's
        event), ``kind`` and, where they apply, ``path``, ``peer`` and ``detail``. A
        subscriber that does not keep up loses events rather than slowing the node down."""
        return self.event_bus.subscribe(replay=replay)

    # -- running -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, run every folder, dial every known device and keep at it until cancelled;
        ``task_status`` is told once every folder has run (or failed) and the port is open."""
        await self.prepare()
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            listener = await self._listen()
            for runner in list(self.runners.values()):
                if runner.config.paused:
                    continue  # paused by a person: its runner only says so in status
                await self.folder_tasks.start(tasks, runner, create=False)
                # Its log keeps the address book (and what this device vouches for at its
                # relays) after a restart too, not only for folders added while running.
                tasks.start_soon(self._keep_address_book, runner)
            tasks.start_soon(self.peers.run, listener)
            if self.config.discovery_enabled:
                tasks.start_soon(self._discover)
            log.info(
                "node started: device %s, listening on port %d, %d folders",
                self.identity.device_id,
                self.port,
                len(self.config.folders),
            )
            task_status.started()

    async def prepare(self) -> None:
        """Load every configured folder's key and make its runner, so that :meth:`status`
        lists every folder ("starting") from then on, before :meth:`run` starts them (the
        daemon calls it before it answers its control socket)."""
        for folder in self.config.folders:
            if folder.folder_id not in self.runners:
                await self._make_runner(folder)

    async def _listen(self) -> anyio.abc.Listener[Any]:
        host, port = parse_address(self.config.listen)
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.config.listen}: {exc.strerror}; another program may "
                "use that port: change `listen` in the configuration"
            ) from None
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        return listener

    async def _start_folder(self, config: FolderConfig, *, create: bool = False) -> FolderRunner:
        assert self._tasks is not None, "the node is not running"
        runner = await self._make_runner(config)
        await self.folder_tasks.start(self._tasks, runner, create=create)
        self._tasks.start_soon(self._keep_address_book, runner)
        return runner

    async def _keep_address_book(self, runner: FolderRunner) -> None:
        """The folder's log is its address book: each member's devices are devices this one
        knows, dials and syncs the folder with, without anyone adding them; a device the log
        removed no longer has the folder shared with it."""
        while self.runners.get(runner.config.folder_id) is runner:
            folder = runner.folder
            if folder is None:
                await anyio.sleep(1)  # stopped (its disk away): its log waits with it
                continue
            version = folder.members.version
            self._learn_members(runner, folder)
            self.peers.relays.vouches_changed()
            self._renew_exposed_epoch(folder)
            await self._close_spent_codes(folder)
            with anyio.move_on_after(30):  # the folder may be reopened meanwhile
                await folder.members.wait_for_change(version)

    def _learn_members(self, runner: FolderRunner, folder: Folder) -> None:
        state = folder.members.state
        if state is None:
            return
        me = self.identity.public_key
        removed = {DeviceId.from_public_key(k) for k in folder.members.removed_devices()}
        touched = [d for d in runner.config.devices if d in removed]
        runner.config.devices = [d for d in runner.config.devices if d not in removed]
        for member in state.members.values():
            for key in sorted(member.devices - {me}):
                device = DeviceId.from_public_key(key)
                if self.config.device(device) is None:
                    self.config.devices.append(DeviceConfig(device, member.name))
                    touched.append(device)
                if device not in runner.config.devices:
                    runner.config.devices.append(device)
                    touched.append(device)
        if touched:
            log.info(
                "folder %s: the membership log changes who it is synced with: %s",
                runner.label,
                ", ".join(sorted({d.short_str for d in touched})),
            )
            self._changed()
            for device in set(touched):
                self.peers.restart(device)
                if device not in removed:
                    self.peers.dial(device)

    def _renew_exposed_epoch(self, folder: Folder) -> None:
        """Start a key epoch if a device removed since the current one began may hold its
        secret (a merge voided the epoch that followed the removal, or its author stopped
        between the two entries): admins and owners take turns, in the order of their
        device keys, so that usually one writes it."""
        log_ = folder.members.log
        role = folder.members.my_role
        if (
            log_ is None
            or role is None
            or role < Role.ADMIN
            or folder.folder_id in self._renewing
            or not log_.needs_new_epoch()
        ):
            return
        assert self._tasks is not None, "the node is not running"
        self._renewing.add(folder.folder_id)
        self._tasks.start_soon(self._renew_epoch_in_turn, folder)

    async def _renew_epoch_in_turn(self, folder: Folder) -> None:
        try:
            state = folder.members.state
            assert state is not None
            admins = sorted(
                d for m in state.members.values() if m.role >= Role.ADMIN for d in m.devices
            )
            me = self.identity.public_key
            await anyio.sleep(EPOCH_RENEWAL_TURN * admins.index(me) if me in admins else 0)
            async with self._lock:
                log_ = folder.members.log
                role = folder.members.my_role
                if log_ is None or role is None or role < Role.ADMIN:
                    return
                if log_.needs_new_epoch():
                    entry = await folder.append_log_entry(self._new_epoch(folder), int(time.time()))
                    log.info(
                        "%s: started key epoch %d: a device removed since the last one "
                        "may hold its key",
                        folder.root,
                        entry.action.epoch if isinstance(entry.action, NewEpoch) else -1,
                    )
        except EntryRefusedError as exc:
            log.warning("%s: could not start a new key epoch: %s", folder.root, exc)
        finally:
            self._renewing.discard(folder.folder_id)

    def _vouched_devices(self) -> frozenset[DeviceId] | None:
        """What this device vouches for at relays that delegated admission to it (SPEC.md
        §14.1): every device of every member of the folders whose logs make it an admin or
        owner; None when it is an admin of none. Device IDs only: no folder, name or role."""
        me = self.identity.public_key
        devices: set[DeviceId] | None = None
        for runner in list(self.runners.values()):
            state = runner.folder.members.state if runner.folder is not None else None
            if state is None:
                continue
            if not any(me in m.devices and m.role >= Role.ADMIN for m in state.members.values()):
                continue
            devices = devices or set()
            for member in state.members.values():
                devices.update(DeviceId.from_public_key(k) for k in member.devices)
        return None if devices is None else frozenset(devices)

    async def _make_runner(self, config: FolderConfig) -> FolderRunner:
        try:
            key = await anyio.to_thread.run_sync(self.home.load_folder_key, config.folder_id)
        except (CommonsyncError, OSError) as exc:
            raise ConfigError(f"folder {config.label}: {exc}") from None
        runner = FolderRunner(
            config,
            key,
            self.identity,
            self.store,
            self.event_bus,
            device_name=self.device_name,
            rescan_interval=self.config.rescan_interval,
            max_deleted_share=self.config.max_deleted_share,
            min_free=MinFree.parse(self.config.min_free),
            watch=self._watch,
            on_change=lambda: self._folder_changed(config),
            epoch_keys=lambda: self.home.load_folder_keys(config.folder_id)[1:],
            save_key=partial(self.home.save_folder_key, later_epoch=True),
        )
        self.runners[config.folder_id] = runner
        return runner

    def _folder_changed(self, config: FolderConfig) -> None:
        """A folder stopped (its disk away, its index full) or runs again: the sessions with
        its devices start again, without it or with it."""
        for device in config.devices:
            self.peers.restart(device)

    async def _discover(self) -> None:
        from .discovery import LanDiscovery, Sighting

        interfaces = self.config.discovery_interfaces or _local_addresses()
        discovery = LanDiscovery(self.identity.device_id, self.port, interfaces)
        log.info("LAN discovery on %s", ", ".join(interfaces))

        def seen(sighting: Sighting) -> None:
            addresses = [format_address(a, sighting.port) for a in sighting.addresses]
            self.peers.on_sighting(sighting.device_id, addresses)

        await discovery.run(seen)

    # -- offers from peers ---------------------------------------------------------------------

    async def on_offer(self, device: DeviceId, offer: Offer) -> None:
        """A known device offers a folder: kept pending (key in memory only) until accepted
        with :meth:`accept_folder`."""
        try:
            key = FolderKey.from_bytes(offer.key)
        except (FolderKeyError, CommonsyncError) as exc:
            log.warning("%s offered a folder with a malformed key: %s", device.short_str, exc)
            return
        if key.folder_id != offer.folder_id:
            log.warning("%s offered a folder whose key is another folder's", device.short_str)
            return
        existing = self.config.folder(offer.folder_id)
        if existing is not None and device in existing.devices:
            return
        pending = self.offers.get(offer.folder_id)
        if pending is None:
            if sum(1 for o in self.offers.values() if device in o.offered_by) >= (
                MAX_OFFERS_PER_DEVICE
            ):
                log.warning("%s offers too many folders; ignoring more", device.short_str)
                return
            pending = PendingOffer(offer.folder_id, offer.label, key)
            self.offers[offer.folder_id] = pending
            self.event_bus.publish(offer.label, "folder offered", peer=str(device))
            log.info(
                "%s offers folder %r (%s)", device.short_str, offer.label, offer.folder_id.hex()
            )
        pending.offered_by.add(device)

    async def admit(self, exchange: PeerExchange, folder_id: bytes) -> bool:
        """Make the peer of a session a member of a folder this device shares with it (in
        the role it was shared with, writer by default), if the folder has a membership log
        and the peer is not a member yet. False if this device may not admit it (it is not
        an admin or owner): the folder is then not offered to it."""
        runner = self.runners.get(folder_id)
        if runner is None or runner.folder is None:
            return False
        members = runner.folder.members
        public_key = exchange.session.channel.peer_public_key
        if members.log is None or members.is_member(public_key):
            return True
        device = exchange.peer
        shared = (folder_id, device) in self._roles or (folder_id, device) in self._device_of
        if not shared and members.was_removed(public_key):
            return False  # removed by a member: admitted again only if a person shares again
        role = self._roles.get((folder_id, device), Role.WRITER)
        known = self.config.device(device)
        name = (known.name if known is not None else "") or device.short_str
        member = self._device_of.get((folder_id, device))
        try:
            await runner.folder.append_log_entry(
                AddMember(name, role, (public_key,))
                if member is None
                else AddDevice(member, public_key),
                int(time.time()),
            )
        except CommonsyncError as exc:
            log.warning(
                "cannot admit %s to folder %s (it is not offered it): %s",
                device.short_str,
                runner.label,
                exc,
            )
            return False
        self._roles.pop((folder_id, device), None)
        self._device_of.pop((folder_id, device), None)
        log.info(
            "admitted %s to folder %s as %s", device.short_str, runner.label, role.name.lower()
        )
        return True

    def _check_may_admit(self, config: FolderConfig, role: Role, device: DeviceId) -> None:
        """:class:`RequestConflictError` unless this device may admit ``device`` with
        ``role`` to the folder. Any device may share a folder without a membership log, and
        any member may sync with a device the log names already."""
        runner = self.runners.get(config.folder_id)
        if runner is None or runner.folder is None or runner.folder.members.log is None:
            return
        state = runner.folder.members.state
        assert state is not None
        if any(
            DeviceId.from_public_key(d) == device for m in state.members.values() for d in m.devices
        ):
            return
        mine = runner.folder.members.my_role
        needed = Role.OWNER if role is Role.OWNER else Role.ADMIN
        if mine is None or mine < needed:
            raise RequestConflictError(
                f"only {'owners' if needed is Role.OWNER else 'admins and owners'} of folder "
                f"{config.label} may share it as {role.name.lower()}; this device is "
                f"{'not a member' if mine is None else 'a ' + mine.name.lower()}",
                hint=f"ask an admin of {config.label} to share it (`commonsync members "
                f"{config.label}` lists them)",
            )

    # -- members -------------------------------------------------------------------------------

    def members(self, reference: str) -> dict[str, Any]:
        """A folder's members (names, roles, devices, whether connected), this device's role,
        and the log's size and heads (JSON-ready)."""
        folder = self._running_folder(reference)
        state = folder.members.state
        me = self.identity.public_key
        connected = {
            link.exchange.session.channel.peer_public_key for link in self.peers.links.values()
        }
        listed = []
        for member in (
            sorted(state.members.values(), key=lambda m: (-m.role, m.name)) if state else []
        ):
            devices = []
            for key in sorted(member.devices):
                device = DeviceId.from_public_key(key)
                devices.append(
                    {
                        "id": str(device),
                        "name": self._display_name(device),
                        "this_device": key == me,
                        "connected": key in connected,
                        "last_seen": None if key == me else self.peers.last_seen(device),
                    }
                )
            listed.append(
                {
                    "id": member.id.hex()[:16],
                    "name": member.name,
                    "role": member.role.name.lower(),
                    "devices": devices,
                }
            )
        role = folder.members.my_role
        now = int(time.time())
        invitations = [
            {
                "id": i.id.hex()[:16],
                "role": i.role.name.lower(),
                "expires": i.expires,
                "uses_left": i.uses - i.used,
            }
            for i in (state.invitations.values() if state is not None else ())
            if state is not None and state.admits_with(i, now)
        ]
        label = self._find_folder(reference).label
        return {
            "folder": label,
            "has_log": state is not None,
            "invitations": invitations,
            "codes": [c for c in self.codes.listing() if c["folder"] == label],
            "role": role.name.lower() if role is not None else None,
            "members": listed,
            "entries": len(folder.members),
            "epoch": folder.keyring.current.epoch,
        }

    async def remove_member(
        self, reference: str, member: str, *, force: bool = False
    ) -> dict[str, Any]:
        """Remove a member (by name, member ID prefix, or one of its devices' IDs) from a
        folder: its devices are credited with the versions this device has of them, and a new
        key epoch begins, sealed to the devices that remain. What the removed member had
        stays with it; it can read nothing new, and its new versions are refused.

        A member leaving (this device is one of its) with changes that no other member's
        device is known to have taken is refused unless ``force``: once it has left, no
        member syncs with it, and those changes would stay on this device alone."""
        async with self._lock:
            config = self._find_folder(reference)
            folder = self._running_folder(reference)
            found = self._find_member(folder, member)
            if self.identity.public_key in found.devices and not force:
                await self._refuse_leaving_with_unshared(config.label, folder, found)
            credits = await self._credits(config, found)
            await self._append(folder, RemoveMember(found.id, credits))
            leaving = self.identity.public_key in found.devices
            if not leaving:
                await self._append(folder, self._new_epoch(folder))
            # else this device is no member any more: the first admin device that sees the
            # removal starts the epoch (SPEC.md §15.7, a missing epoch).
            gone = {DeviceId.from_public_key(d) for d in found.devices}
            config.devices = [d for d in config.devices if d not in gone]
            self._changed()
        for device in gone:
            self.peers.restart(device)
        return {
            "folder": config.label,
            "removed": found.name,
            "left": leaving,
            "epoch": folder.keyring.current.epoch,
        }

    async def _refuse_leaving_with_unshared(
        self,
        label: str,
        folder: Folder,
        leaving: Member,
        *,
        after: str = "once you have left, nobody would take them",
    ) -> None:
        """Raise :class:`RequestConflictError` if this device holds versions of its own that
        no device of another member that may write has taken yet (as far as their progress
        reports tell): a reader that took them would keep no copy of one that loses a
        conflict, and would pass it on to nobody once it lost. ``after`` says what would
        become of them."""
        state = folder.members.state
        if state is None or leaving.role < Role.WRITER:
            return  # a reader's changes are shared with nobody anyway
        others = {
            DeviceId.from_public_key(device)
            for other in state.members.values()
            if other.id != leaving.id and other.role >= Role.WRITER
            for device in other.devices
        }
        seen = max(
            (view.seen for device, view in folder.peer_views.items() if device in others),
            default=0,
        )
        unshared = await self.store.authored_after(folder.folder_id, self.identity.public_key, seen)
        if unshared:
            changes = "1 change" if unshared == 1 else f"{unshared} changes"
            raise RequestConflictError(
                f"{changes} of yours in folder {label} "
                f"{'has' if unshared == 1 else 'have'} not reached another member that may "
                f"write yet: {after}",
                hint=f"wait until `commonsync status --wait --folder {label}` returns with "
                "a writer connected, or go on anyway with --force",
            )

    async def set_role(
        self, reference: str, member: str, role: Role, *, force: bool = False
    ) -> dict[str, Any]:
        """Change a member's role; a writer (or more) made a reader is credited with the
        versions this device has of it, as for a removal. An admin making its own member a
        reader is refused, as a member leaving is, while changes of its own reached no other
        member that may write, unless ``force``."""
        async with self._lock:
            config = self._find_folder(reference)
            folder = self._running_folder(reference)
            found = self._find_member(folder, member)
            credits: tuple[tuple[bytes, int], ...] = ()
            if role is Role.READER and found.role >= Role.WRITER:
                if self.identity.public_key in found.devices and not force:
                    await self._refuse_leaving_with_unshared(
                        config.label,
                        folder,
                        found,
                        after="once you are a reader, one that loses a conflict would stay "
                        "on this device alone",
                    )
                credits = await self._credits(config, found)
            await self._append(folder, SetRole(found.id, role, credits))
        return {"folder": config.label, "member": found.name, "role": role.name.lower()}

    def member_devices(self, reference: str, member: str | None = None) -> dict[str, Any]:
        """The devices of a folder's members (of one member, by name, member ID prefix or
        one of its devices' IDs), as :meth:`members` lists them (JSON-ready)."""
        listed = self.members(reference)
        if member is not None:
            found = self._find_member(self._running_folder(reference), member)
            wanted = found.id.hex()[:16]
            listed["members"] = [m for m in listed["members"] if m["id"] == wanted]
        return {"folder": listed["folder"], "role": listed["role"], "members": listed["members"]}

    async def add_member_device(self, reference: str, member: str, device: str) -> dict[str, Any]:
        """Share a folder with a known device as another device of an existing member (a
        person's phone beside their laptop), not as a new member: at its next session, once
        its key is known, this device writes the add device entry and offers it the folder.
        Allowed to the member itself and to admins (owners for an owner's device)."""
        async with self._lock:
            config = self._find_folder(reference)
            folder = self._running_folder(reference)
            found = self._find_member(folder, member)
            known = self._find_device(device)
            state = folder.members.state
            assert state is not None  # _find_member found the member in it
            mine = state.member_of(self.identity.public_key)
            needed = Role.OWNER if found.role is Role.OWNER else Role.ADMIN
            if mine is None or (mine.id != found.id and mine.role < needed):
                being = "not a member" if mine is None else f"a {mine.role.name.lower()}"
                raise RequestConflictError(
                    f"only {found.name} itself and {needed.name.lower()}s of folder "
                    f"{config.label} may add a device to {found.name}; this device is {being}",
                    hint=f"ask an admin of {config.label} (`commonsync members "
                    f"{config.label}` lists them)",
                )
            if known.device_id in config.devices:
                raise RequestConflictError(
                    f"folder {config.label} is already shared with {known.device_id.short_str}",
                    hint=f"`commonsync member devices {config.label}` shows whose device it is",
                )
            self._device_of[config.folder_id, known.device_id] = found.id
            config.devices.append(known.device_id)
            self._changed()
        self.peers.restart(known.device_id)
        return {"folder": config.label, "member": found.name, "device": str(known.device_id)}

    async def device_lost(self, reference: str, device: str) -> dict[str, Any]:
        """Remove one device of a member (a stolen phone) from a folder; the member stays. The
        device is credited with the versions this device has of it, so that what it made
        before stays valid and what it makes after is refused, and a new key epoch begins,
        sealed to the devices that remain (by an admin: a writer's own device leaves that to
        the first admin device that sees the removal, SPEC.md §15.7)."""
        async with self._lock:
            config = self._find_folder(reference)
            folder = self._running_folder(reference)
            member, key = self._find_member_device(folder, device)
            shown = self._device_label(key)
            state = folder.members.state
            assert state is not None  # _find_member_device found a member in it
            mine = state.member_of(self.identity.public_key)
            if key == self.identity.public_key:
                raise RequestConflictError(
                    f"{shown} is this device: it cannot declare itself lost",
                    hint="run `commonsync device lost` on another device of yours, or ask an "
                    f"admin of {config.label}",
                )
            if mine is None or (mine.id != member.id and mine.role < Role.ADMIN):
                being = "not a member" if mine is None else f"a {mine.role.name.lower()}"
                raise RequestConflictError(
                    f"only {member.name} itself, admins and owners of folder {config.label} may "
                    f"remove a device of {member.name}; this device is {being}",
                    hint=f"ask an admin of {config.label} (`commonsync members "
                    f"{config.label}` lists them)",
                )
            if member.devices == {key}:
                # (The last owner's only device: only that owner may remove it, from this
                # very device, refused above.)
                raise RequestConflictError(
                    f"{shown} is the only device of {member.name} in folder {config.label}",
                    hint=f"remove the member instead (`commonsync member remove {config.label} "
                    f"{member.name}`)",
                )
            # A reader's records are taken from nobody: nothing to credit (SPEC.md §15.5).
            last = 0
            if member.role >= Role.WRITER:
                last = await self.store.last_authored(config.folder_id, key)
            await self._append(folder, RemoveDevice(member.id, key, last))
            admin = folder.members.my_role is not None and folder.members.my_role >= Role.ADMIN
            if admin:
                await self._append(folder, self._new_epoch(folder))
            gone = DeviceId.from_public_key(key)
            config.devices = [d for d in config.devices if d != gone]
            self._changed()
        self.peers.restart(gone)
        return {
            "folder": config.label,
            "member": member.name,
            "device": str(gone),
            "device_name": shown,
            "credited": last,
            "epoch": folder.keyring.current.epoch,
            "epoch_pending": not admin,
        }

    def _device_label(self, key: bytes) -> str:
        """A member device as a person knows it: its name here and its short ID."""
        device = DeviceId.from_public_key(key)
        name = self._display_name(device)
        return f"{name} ({device.short_str})" if name else device.short_str

    def _find_member_device(self, folder: Folder, reference: str) -> tuple[Member, bytes]:
        """A member's device by its name here, its device ID or a unique prefix of it (as
        every device reference: :func:`~commonsync.node.devices.resolve`)."""
        state = folder.members.state
        if state is None:
            raise RequestConflictError(
                "the folder has no membership log: it was made before members existed",
                hint="make a new folder to share it with members and roles",
            )
        owners = {
            DeviceId.from_public_key(key): (member, key)
            for member in state.members.values()
            for key in member.devices
        }
        label = self.runners[folder.folder_id].label
        found = resolve_device(
            reference,
            [(device, self._device_names(device)) for device in owners],
            reported=self._reported_names(),
            among=f"among the members of folder {label}",
            hint=f"`commonsync member devices {label}` lists them",
        )
        return owners[found]

    def _device_names(self, device: DeviceId) -> tuple[str, ...]:
        """The names ``device`` was given here (this device: its own), which a person may
        call it by; the names devices give themselves come second (:meth:`_reported_names`,
        :mod:`.devices`)."""
        if device == self.device_id:
            return (self.device_name,)
        known = self.config.device(device)
        return (known.name,) if known is not None and known.name else ()

    def _reported_names(self) -> dict[DeviceId, str]:
        """The names the known devices give themselves (their Hello)."""
        return {d.device_id: d.reported_name for d in self.config.devices if d.reported_name}

    def _display_name(self, device: DeviceId) -> str:
        """The name shown for ``device``: this device's own, or the one given here, else the
        one it gives itself ("" if none)."""
        known = self.config.device(device)
        reported = known.reported_name if known is not None else ""
        return next((name for name in self._device_names(device) if name), reported)

    async def _credits(self, config: FolderConfig, member: Member) -> tuple[tuple[bytes, int], ...]:
        """Per device of ``member``, the last of its versions this device holds: what stays
        credited to it once it may write no more."""
        return tuple(
            [
                (device, await self.store.last_authored(config.folder_id, device))
                for device in sorted(member.devices)
            ]
        )

    def _running_folder(self, reference: str) -> Folder:
        runner = self.runners[self._find_folder(reference).folder_id]
        if runner.folder is None:
            raise UnavailableError(
                f"folder {runner.label} is not running: {runner.status()['summary']}",
                hint="`commonsync status` says why",
            )
        return runner.folder

    def _find_member(self, folder: Folder, reference: str) -> Member:
        state = folder.members.state
        if state is None:
            raise RequestConflictError(
                "the folder has no membership log: it was made before members existed",
                hint="make a new folder to share it with members and roles",
            )
        wanted = reference.strip()
        matches = [
            m
            for m in state.members.values()
            if m.name == wanted
            or (len(wanted) >= 4 and m.id.hex().startswith(wanted.lower()))
            or any(
                device_matches(wanted, device, self._device_names(device))
                for device in map(DeviceId.from_public_key, m.devices)
            )
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(
                f"no member {reference!r} in this folder",
                hint="`commonsync members FOLDER` lists them",
            )
        raise RequestConflictError(
            f"{reference!r} names {len(matches)} members", hint="use its member ID instead"
        )

    async def _append(self, folder: Folder, action: Action) -> Entry:
        try:
            return await folder.append_log_entry(action, int(time.time()))
        except EntryRefusedError as exc:
            raise RequestConflictError(
                str(exc).replace("refused: ", "the folder's members would refuse that: ", 1)
            ) from None

    # -- invitations -----------------------------------------------------------------------------

    async def invite(
        self,
        reference: str,
        *,
        role: Role = Role.WRITER,
        name: str = "",
        expires: float = DEFAULT_INVITATION_LIFETIME,
        uses: int = 1,
        code: bool = True,
    ) -> dict[str, Any]:
        """Invite someone to a folder: an invite entry in its log (any member device can then
        admit the joiner), and a link holding its secret, to send them. ``expires`` is in
        seconds from now; ``name`` is the name suggested for them. With ``code``, also a
        short code that hands the link over while this device runs (SPEC.md §15.10), held
        at the first relay that gives it a nameplate, and on the LAN."""
        async with self._lock:
            config = self._find_folder(reference)
            folder = self._running_folder(reference)
            if not 1 <= uses <= 10_000:
                raise InvalidRequestError("an invitation is good for 1 to 10,000 joins")
            if not 60 <= expires <= 366 * 86400:
                raise InvalidRequestError("an invitation lasts between a minute and a year")
            secret = new_secret()
            until = int(time.time() + expires)
            entry = await self._append(folder, Invite(invitation_key(secret), role, until, uses))
            link = JoinLink(
                config.folder_id,
                entry.hash,
                config.label,
                secret,
                name,
                tuple(self._admitting_devices(folder))[:16],
                tuple(str(r) for r in self.config.relays)[:4],
            )
        answer: dict[str, Any] = {
            "folder": config.label,
            "link": str(link),
            "invitation": entry.hash.hex()[:16],
            "role": role.name.lower(),
            "expires": until,
            "uses": uses,
        }
        if code:
            opened = await self._open_code(config.label, str(link), entry.hash, until)
            answer["code"] = str(opened.code)
            answer["code_until"] = int(opened.expires)
            answer["code_relay"] = opened.relay[0] if opened.relay else None
        return answer

    async def _open_code(self, folder: str, link: str, invitation: bytes, until: float) -> OpenCode:
        """A code for ``link``: its nameplate from a connected relay if one gives it (then
        the code works wherever that relay is reachable), else one free here (LAN only)."""
        await self._release_closed_codes()
        expires = min(until, time.time() + CODE_LIFETIME)
        for link_ in self.peers.relays.connected():
            control = link_.control
            if control is None:
                continue
            try:
                nameplate = await control.claim_code()
            except CommonsyncError as exc:
                log.info("%s gave no nameplate for a code: %s", link_.name, exc)
                continue
            if self.codes.holds(nameplate):  # a LAN-only code has it already
                await control.release_code(nameplate)
                continue
            relay = (link_.name, link_.relay_id.digest)
            return self.codes.open(
                OpenCode(JoinCode.generate(nameplate), link, folder, invitation, expires, relay)
            )
        nameplate = self.codes.free_nameplate()
        return self.codes.open(
            OpenCode(JoinCode.generate(nameplate), link, folder, invitation, expires)
        )

    async def _close_spent_codes(self, folder: Folder) -> None:
        """Close the codes whose invitation the log says admits nobody any more (used up by
        its link, revoked, expired), and give their nameplates back: else ``members`` would
        list them as open, and a relay keep their nameplates claimed."""
        state = folder.members.state
        if state is None:
            return
        now = int(time.time())
        for invitation in self.codes.invitations():
            found = state.invitations.get(invitation)
            if found is not None and not state.admits_with(found, now):
                self.codes.close_invitation(invitation)
        await self._release_closed_codes()

    async def _release_closed_codes(self) -> None:
        """Give back to their relays the nameplates of codes that closed."""
        closed, self.codes.closed = self.codes.closed, []
        for opened in closed:
            if opened.relay is None:
                continue
            link = self.peers.relays.links.get(DeviceId(opened.relay[1]))
            if link is not None and link.control is not None:
                await link.control.release_code(opened.nameplate)

    async def revoke_invitation(self, reference: str, invitation: str) -> dict[str, Any]:
        """Revoke an invitation (by the ID ``invite`` printed, or a prefix of it): no member
        device admits anyone with it from then on."""
        async with self._lock:
            config = self._find_folder(reference)
            folder = self._running_folder(reference)
            state = folder.members.state
            wanted = invitation.strip().lower()
            matches = [
                i
                for i in (state.invitations if state else {})
                if len(wanted) >= 4 and i.hex().startswith(wanted)
            ]
            if len(matches) != 1:
                raise NotFoundError(
                    f"no single invitation {invitation!r} in folder {config.label}",
                    hint=f"`commonsync members {config.label}` lists them",
                )
            await self._append(folder, RevokeInvitation(matches[0]))
            self.codes.close_invitation(matches[0])
        await self._release_closed_codes()
        return {"folder": config.label, "revoked": matches[0].hex()[:16]}

    def _admitting_devices(self, folder: Folder) -> list[tuple[DeviceId, tuple[str, ...]]]:
        """This device and the other members' devices: where a joiner may be admitted. Those
        it knows an address of come with their addresses; when this device uses relays, the
        others follow with none, for the joiner to reach through the link's relays (so that
        one is admitted while this device is away, though nobody's address is known)."""
        state = folder.members.state
        members = {
            DeviceId.from_public_key(key)
            for member in (state.members.values() if state else ())
            for key in member.devices
        }
        devices = [(self.device_id, tuple(self._own_addresses()[:8]))]
        unaddressed: list[tuple[DeviceId, tuple[str, ...]]] = []
        for device in self.config.devices:
            if device.device_id not in members:
                continue
            addresses = [*device.addresses, *self.peers.discovered_addresses(device.device_id)]
            if addresses:
                devices.append((device.device_id, tuple(dict.fromkeys(addresses))[:8]))
            elif self.config.relays:
                unaddressed.append((device.device_id, ()))
        return devices + unaddressed

    def _own_addresses(self) -> list[str]:
        host, _ = parse_address(self.config.listen)
        hosts = _local_addresses() if host in ("0.0.0.0", "") else [host]
        return [format_address(h, self.port) for h in hosts]

    async def admit_joiner(self, device: DeviceId, public_key: bytes, join: Join) -> Joined:
        """A member's answer to a joiner (SPEC.md §15.9): the admission written, and the
        folder's key; or why not, in a sentence for the person joining."""
        runner = self.runners.get(join.folder_id)
        if runner is None or runner.folder is None:
            return refused("this device does not sync that folder (or it is stopped)")
        folder = runner.folder
        state = folder.members.state
        invitation = state.invitations.get(join.invitation) if state is not None else None
        if state is None or invitation is None:
            return refused(
                "this device does not know that invitation (it may not have reached it yet: "
                "try when the inviting device is online)"
            )
        if not folder.members.is_member(public_key):
            action = AddMember(
                join.name, invitation.role, (public_key,), join.invitation, join.signature
            )
            try:
                await folder.append_log_entry(action, int(time.time()))
            except MembershipError as exc:
                reason = str(exc).removeprefix("refused: ")
                log.info("refused the join of %s to %s: %s", device.short_str, runner.label, reason)
                return refused(_JOIN_REFUSALS.get(reason, reason))
            log.info("admitted %s to folder %s by invitation", device.short_str, runner.label)
        async with self._lock:
            if self.config.device(device) is None:
                self.config.devices.append(DeviceConfig(device, join.name))
            if device not in runner.config.devices:
                runner.config.devices.append(device)
            self._changed()
        return Joined(int(JoinStatus.ADMITTED), "", runner.label, runner.key.to_bytes())

    async def join(
        self,
        invitation: JoinLink | str,
        path: Path | str | None = None,
        *,
        name: str = "",
        parent: Path | str | None = None,
    ) -> FolderRunner:
        """Join a folder with an invitation link or a short code: reach a member device (for
        a code, the inviting device, at a relay or on the LAN), prove the invitation, receive
        the folder's key, and sync it at ``path`` (by default, in ``parent`` — the current
        directory if none — under the folder's label)."""
        code: JoinCode | None = None
        link: JoinLink | None = None
        try:
            if isinstance(invitation, JoinLink):
                link = invitation
            elif looks_like_code(invitation):
                code = JoinCode.parse(invitation)
            else:
                link = JoinLink.parse(invitation)
        except MembershipError as exc:
            raise InvalidRequestError(str(exc)) from None
        if link is not None:
            self._check_can_join(link, _join_path(path, parent, link))
        try:
            if code is not None:
                device, addresses, link, answer = await ask_to_join_with_code(
                    self.identity,
                    code,
                    name,
                    await self._code_openers(code),
                    default_name=self.device_name,
                )
                self._check_can_join(link, _join_path(path, parent, link))
            else:
                assert link is not None
                found = {d: self.peers.discovered_addresses(d) for d, _ in link.devices}
                name = name or link.name or self.device_name
                own = {r.relay_id: r.control for r in self.peers.relays.connected() if r.control}
                device, addresses, answer = await ask_to_join(self.identity, link, name, found, own)
        except CodeRefusedError as exc:
            raise RequestConflictError(f"the code was refused: {exc}") from None
        except JoinRefusedError as exc:
            raise RequestConflictError(f"the invitation was refused: {exc}") from None
        except CommonsyncError as exc:
            raise UnavailableError(
                str(exc),
                hint="the inviting device (or another member's) must be online and reachable"
                + (": on this LAN, or at a relay this device uses" if code else ""),
            ) from None
        folder_path, label = _join_path(path, parent, link), _join_label(link)
        try:
            key = FolderKey.from_bytes(answer.key)
        except CommonsyncError as exc:
            raise UnavailableError(
                f"the member device sent a malformed folder key: {exc}"
            ) from None
        if key.folder_id != link.folder_id:
            raise UnavailableError("the member device sent the key of another folder")
        async with self._lock:
            self._check_can_join(link, folder_path)  # nothing was added meanwhile
            await anyio.to_thread.run_sync(self.home.save_folder_key, key)
            # Where it was reached first, then where the link says it listens (a code's
            # inviter reached through a relay is dialled there next time too).
            listed = next((list(a) for d, a in link.devices if d == device), [])
            addresses = list(dict.fromkeys([*addresses, *listed]))
            known = self.config.device(device)
            if known is None:
                self.config.devices.append(DeviceConfig(device, "", addresses))
            else:
                known.addresses.extend(a for a in addresses if a not in known.addresses)
            for relay in link.relays:
                with contextlib.suppress(ConfigError):
                    parsed = RelayConfig.parse(relay)
                    if self.config.relay(parsed.relay_id) is None:
                        self.config.relays.append(parsed)
                        self.peers.relays.update(parsed)
            config = FolderConfig(link.folder_id, label, folder_path, [device])
            self.config.folders.append(config)
            self._changed()
        runner = await self._start_folder(config, create=True)
        # The admitting device knows us from its log's change and may have dialled already
        # (through a relay, or found on the LAN): a session that began before the folder ran
        # here shares no folder, and it starts again with it.
        self.peers.restart(device)
        self.peers.dial(device)
        return runner

    def _check_can_join(self, link: JoinLink, path: Path) -> None:
        existing = self.config.folder(link.folder_id)
        if existing is not None:
            raise RequestConflictError(
                f"this device already syncs that folder ({existing.label} at {existing.path})"
            )
        if path.exists() and not path.is_dir():
            raise RequestConflictError(f"{path} exists and is not a directory")
        self._check_new_folder(path, _join_label(link))

    async def _code_openers(self, code: JoinCode) -> list[ChannelOpener]:
        """Where a code's inviter may be: the relays this device uses (a nameplate is
        unique at a relay), then every device seen on the LAN (waiting a little for
        discovery, which may have just started, when it has seen nobody yet)."""
        openers: list[ChannelOpener] = [
            partial(code_channel_at_relay, self.identity, link.config, code.nameplate, link.control)
            for link in list(self.peers.relays.links.values())
        ]
        if self.config.discovery_enabled:
            with anyio.move_on_after(LAN_CODE_WAIT):
                while not any(found.in_order() for found in self.peers.discovered.values()):
                    await anyio.sleep(0.25)
        openers.extend(
            partial(code_channel_on_lan, self.identity, found.in_order())
            for found in list(self.peers.discovered.values())
            if found.in_order()
        )
        return openers

    def _new_epoch(self, folder: Folder) -> NewEpoch:
        """A new key epoch, its secret sealed to every device in force (SPEC.md §15.7)."""
        state = folder.members.state
        assert state is not None
        secret = os.urandom(32)
        devices = sorted(d for m in state.members.values() for d in m.devices)
        number = (state.epoch.number if state.epoch is not None else 0) + 1
        wrapped = tuple((d, seal_secret(secret, d)) for d in devices)
        return NewEpoch(number, secret_hash(secret), wrapped)

    # -- requests ------------------------------------------------------------------------------

    async def add_folder(self, path: Path | str, label: str = "") -> FolderRunner:
        """Sync the directory ``path`` as a new folder (a new key), labelled ``label`` (its
        name by default); it is shared with nobody until :meth:`share`."""
        async with self._lock:
            path = _folder_path(path)
            label = label or path.name
            if not path.is_dir():
                raise NotFoundError(
                    f"{path} is not a directory", hint="create it first, or check the path"
                )
            self._check_new_folder(path, label)
            key = FolderKey.generate()
            await anyio.to_thread.run_sync(self.home.save_folder_key, key)
            # Its membership log, with this device its first owner (SPEC.md §15).
            await self.store.add_folder(key.folder_id, label)
            members = FolderMembers(key.folder_id, self.identity, self.store)
            await members.create(self.device_name, int(time.time()))
            config = FolderConfig(key.folder_id, label, path)
            self.config.folders.append(config)
            self._changed()
        return await self._start_folder(config, create=True)

    async def accept_folder(self, reference: str, path: Path | str) -> FolderRunner:
        """Sync a folder another device offered (by label or ID prefix) at ``path``, with the
        devices that offered it."""
        async with self._lock:
            offer = self._find_offer(reference)
            path = _folder_path(path)
            label = offer.label or offer.folder_id.hex()[:8]
            existing = self.config.folder(offer.folder_id)
            if existing is not None:
                # Accepting must not quietly add the offering devices to a folder chosen for
                # others (nor ignore the path given): sharing with them is its own decision.
                devices = ", ".join(sorted(d.short_str for d in offer.offered_by))
                raise RequestConflictError(
                    f"this device already syncs folder {existing.label} at {existing.path}; "
                    f"{devices} offered the same folder",
                    hint=f"to sync it with {devices} too: commonsync share {existing.label} "
                    "DEVICE_ID",
                )
            if path.exists() and not path.is_dir():
                raise RequestConflictError(f"{path} exists and is not a directory")
            self._check_new_folder(path, label)
            await anyio.to_thread.run_sync(self.home.save_folder_key, offer.key)
            config = FolderConfig(offer.folder_id, label, path, sorted(offer.offered_by, key=str))
            self.config.folders.append(config)
            self._changed()
            del self.offers[offer.folder_id]
        runner = await self._start_folder(config, create=True)
        for device in config.devices:
            self.peers.restart(device)
        return runner

    async def add_device(
        self, device: DeviceId | str, *, name: str = "", addresses: Sequence[str] = ()
    ) -> DeviceConfig:
        """Know (and so accept, and dial) a device; its ``addresses`` (HOST:PORT) are added
        to those it had. LAN discovery and relays find it without any."""
        async with self._lock:
            device_id = device if isinstance(device, DeviceId) else _parse_device_id(device)
            if device_id == self.identity.device_id:
                raise RequestConflictError(
                    "that is this device's own ID",
                    hint="run `commonsync device add` on the other device",
                )
            for address in addresses:
                try:
                    parse_address(address)
                except ConfigError as exc:
                    raise InvalidRequestError(str(exc)) from None
            known = self.config.device(device_id)
            if known is not None:
                added = [a for a in addresses if a not in known.addresses]
                if not added and (not name or name == known.name):
                    raise RequestConflictError(
                        f"device {device_id.short_str} is already added",
                        hint="`commonsync device list` shows it",
                    )
                known.addresses.extend(added)
                known.name = name or known.name
            else:
                pending = self.peers.pending.pop(device_id, None)
                known = DeviceConfig(
                    device_id, name or (pending.name if pending else ""), list(addresses)
                )
                self.config.devices.append(known)
            self._changed()
        self.peers.dial(device_id)
        return known

    async def add_relay(self, relay: RelayConfig | str) -> RelayConfig:
        """Use a community relay (``RELAYID@HOST:PORT``): keep a control connection to it."""
        async with self._lock:
            if isinstance(relay, str):
                try:
                    relay = RelayConfig.parse(relay)
                except ConfigError as exc:
                    raise InvalidRequestError(
                        str(exc), hint="`commonsync relay id` on the relay prints its ID"
                    ) from None
            if relay.relay_id == self.identity.device_id:
                raise RequestConflictError("that is this device's own ID, not a relay's")
            existing = self.config.relay(relay.relay_id)
            if existing is not None:
                if existing.address == relay.address:
                    raise RequestConflictError(
                        f"relay {relay.relay_id.short_str} is already added",
                        hint="`commonsync relay list` shows it",
                    )
                existing.address = relay.address
                relay = existing
            else:
                self.config.relays.append(relay)
            self._changed()
        self.peers.relays.update(relay)
        return relay

    async def share(
        self, folder: FolderRunner | str, device: DeviceId | str, *, role: Role = Role.WRITER
    ) -> tuple[FolderConfig, DeviceConfig]:
        """Share a folder (a runner, a label or an ID prefix) with a known device (an ID, its
        name or an ID prefix): it is offered the folder and, once it accepts, syncs it, as a
        member with ``role`` (the entry admitting it is written at its next session)."""
        async with self._lock:
            found = folder.config if isinstance(folder, FolderRunner) else self._find_folder(folder)
            known = self._find_device(device)
            if known.device_id in found.devices:
                raise RequestConflictError(
                    f"folder {found.label} is already shared with {known.device_id.short_str}",
                )
            self._check_may_admit(found, role, known.device_id)
            self._roles[found.folder_id, known.device_id] = role
            found.devices.append(known.device_id)
            self._changed()
            offer = self.offers.get(found.folder_id)
            if offer is not None:  # its offer of this folder is answered now
                offer.offered_by.discard(known.device_id)
                if not offer.offered_by:
                    del self.offers[found.folder_id]
        self.peers.restart(known.device_id)
        return found, known

    async def rescan(self, reference: str, *, confirm_deletions: bool = False) -> ScanReport:
        """Scan a folder now; with ``confirm_deletions``, publish the deletions the
        mass-deletion guard held back. :class:`~commonsync.errors.UnavailableError` when the
        folder cannot scan (its disk is away: the error says why, its hint what to do)."""
        config = self._find_folder(reference)
        if config.paused:
            raise UnavailableError(
                f"folder {config.label} is paused",
                hint=f"resume it with `commonsync folder resume {config.label}`",
            )
        return await self.runners[config.folder_id].rescan(confirm_deletions=confirm_deletions)

    # -- changing one's mind (commonsync.node.lifecycle) ------------------------------------

    async def remove_folder(self, reference: str) -> dict[str, Any]:
        """Stop syncing a folder and forget its index and keys; its files stay on disk
        (only its marker goes). Its devices' sessions start again without it."""
        return await lifecycle.remove_folder(self, reference)

    async def move_folder(self, reference: str, path: Path | str) -> dict[str, Any]:
        """Sync a folder at ``path`` from now on: found there (moved by a person), renamed
        there (same file system), or, for a folder stuck at a wrong path that never held
        files, started there (see :func:`lifecycle.move_folder`)."""
        return await lifecycle.move_folder(self, reference, path)

    async def pause_folder(self, reference: str) -> dict[str, Any]:
        """No scanning and no exchange for a folder until resumed (kept in the config)."""
        return await lifecycle.pause_folder(self, reference)

    async def resume_folder(self, reference: str) -> dict[str, Any]:
        return await lifecycle.resume_folder(self, reference)

    async def remove_device(self, reference: str) -> dict[str, Any]:
        """Forget a device (unshared from every folder); refused for a member's device of
        a folder with a membership log, which `member remove` is for."""
        return await lifecycle.remove_device(self, reference)

    async def pause_device(self, reference: str) -> dict[str, Any]:
        """No session with a device until resumed (kept in the config, whatever the logs
        of its folders say)."""
        return await lifecycle.pause_device(self, reference)

    async def resume_device(self, reference: str) -> dict[str, Any]:
        return await lifecycle.resume_device(self, reference)

    async def rename_device(self, reference: str, name: str) -> dict[str, Any]:
        return await lifecycle.rename_device(self, reference, name)

    async def unshare(self, folder: str, device: str) -> dict[str, Any]:
        """Stop syncing a folder with one device (or withdraw an offer not yet taken)."""
        return await lifecycle.unshare(self, folder, device)

    async def reconfigure(self, config: NodeConfig) -> lifecycle.Reconfigured:
        """Make the running configuration ``config`` (a file edited by hand), change by
        change, each checked as its command is."""
        return await lifecycle.reconfigure(self, config)

    # -- versions and conflicts (commonsync.node.history) -----------------------------------

    async def versions(
        self, reference: str, path: str | None = None, *, cwd: str | None = None
    ) -> list[dict[str, Any]]:
        """The kept versions of a folder (of ``path`` in it, if given), oldest first. A
        relative ``path`` is from the folder's root, or from ``cwd`` if that is inside it."""
        return await history.versions(self.folder(reference), path, cwd)

    async def restore(
        self, reference: str, path: str, at: str | float | None = None, *, cwd: str | None = None
    ) -> dict[str, Any]:
        """Put a kept version of ``path`` back (the newest, or the one kept at ``at``) and
        publish it; what is there now goes to the versions folder. Refused for a reader."""
        me = self.identity.public_key
        return await history.restore(self.folder(reference), path, at, me, cwd)

    async def prune_versions(self, reference: str) -> dict[str, Any]:
        """Apply the folder's retention policy to its versions now."""
        return await history.prune(self.folder(reference), self.store, time.time_ns())

    async def conflicts(self, reference: str) -> list[dict[str, Any]]:
        """The conflict copies in a folder."""
        return await history.conflicts(self.folder(reference))

    async def resolve_conflict(
        self, reference: str, path: str, keep: str, *, cwd: str | None = None
    ) -> dict[str, Any]:
        """Resolve the conflict of ``path`` keeping ``mine``, ``theirs`` or ``both``, as a
        local edit that is published; nothing is lost (see :func:`history.resolve`)."""
        me = self.identity.public_key
        return await history.resolve(self.folder(reference), path, keep, me, cwd)

    # -- ignore rules (commonsync.node.ignores) ---------------------------------------------

    async def ignores(self, reference: str) -> dict[str, Any]:
        """A folder's ignore patterns: for the whole folder (``.csignore``) and for this
        device only (``.commonsync/ignore-local``)."""
        return await ignores.listing(self.folder(reference))

    async def add_ignore(
        self, reference: str, pattern: str, *, this_device: bool = False
    ) -> dict[str, Any]:
        """Ignore ``pattern`` in a folder, for every device or for this one only; applied
        at once (a rescan)."""
        return await ignores.add(self.folder(reference), pattern, this_device=this_device)

    async def remove_ignore(
        self, reference: str, pattern: str, *, this_device: bool = False
    ) -> dict[str, Any]:
        """Stop ignoring ``pattern``: its files are published (and, for this device's rules,
        fetched) again."""
        return await ignores.remove(self.folder(reference), pattern, this_device=this_device)

    # -- bandwidth limits (commonsync.node.limits) -------------------------------------------

    async def set_limits(
        self, device: str | None = None, *, send: int | None = None, receive: int | None = None
    ) -> dict[str, Any]:
        """Limit sending and receiving (bytes per second, 0: no limit, None: unchanged) for
        one device, or for all sessions together; running sessions follow at once."""
        async with self._lock:
            target: NodeConfig | DeviceConfig = (
                self.config if device is None else self._find_device(device)
            )
            if send is not None:
                target.max_send_rate = send
            if receive is not None:
                target.max_receive_rate = receive
            self.limits.apply(self.config)
            self._changed()
        return self.limits_status()

    def limits_status(self) -> dict[str, Any]:
        """The limits in force (bytes per second, 0: none): overall, and per device that
        has one (JSON-ready)."""
        return {
            "send": self.config.max_send_rate,
            "receive": self.config.max_receive_rate,
            "devices": [
                {
                    "id": str(d.device_id),
                    "name": d.display_name,
                    "send": d.max_send_rate,
                    "receive": d.max_receive_rate,
                }
                for d in self.config.devices
                if d.max_send_rate or d.max_receive_rate
            ],
        }

    def device_named(self, device: DeviceId, name: str) -> None:
        """A device said its name (its Hello): keep it as the name it gives itself, shown
        wherever a person gave it none; a name chosen here is never replaced."""
        known = self.config.device(device)
        name = "".join(c for c in name if c.isprintable()).strip()[:64]
        if known is None or not name or known.reported_name == name:
            return
        known.reported_name = name
        self._changed()

    # -- lookups -------------------------------------------------------------------------------

    def folder(self, reference: str) -> FolderRunner:
        """A running folder by label, ID or ID prefix."""
        return self.runners[self._find_folder(reference).folder_id]

    def _find_folder(self, reference: str) -> FolderConfig:
        try:
            return self.config.find_folder(reference)
        except ConfigError as exc:
            raise NotFoundError(str(exc), hint="`commonsync folder list` shows them") from None

    def find_device(self, device: DeviceId | str) -> DeviceConfig:
        """A known device by its name (given here, or its own), its device ID or a unique
        prefix of the ID: what every request naming a device takes (:mod:`.devices`)."""
        return self._find_device(device)

    def _find_device(self, device: DeviceId | str) -> DeviceConfig:
        if isinstance(device, DeviceId):
            device_id = device
        else:
            device_id = resolve_device(
                device,
                [(d.device_id, (d.name,)) for d in self.config.devices],
                reported=self._reported_names(),
                hint="`commonsync device list` shows them; add a new one with "
                "`commonsync device add ID`",
            )
        known = self.config.device(device_id)
        if known is None:
            raise NotFoundError(
                f"device {device_id.short_str} is not known to this device",
                hint=f"add it first: commonsync device add {device_id}",
            )
        return known

    def _find_offer(self, reference: str) -> PendingOffer:
        matches = [
            o
            for o in self.offers.values()
            if o.label == reference
            or (len(reference) >= 4 and o.folder_id.hex().startswith(reference.lower()))
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(
                f"no folder {reference!r} is offered to this device",
                hint="`commonsync folder list` shows offered folders",
            )
        raise RequestConflictError(f"{reference!r} names several offered folders; use its ID")

    def _check_new_folder(
        self, path: Path, label: str, *, moving: FolderConfig | None = None
    ) -> None:
        """Refuse a place (and label) for a new folder, or for ``moving`` (checked against
        the other folders only), that overlaps a folder, the metadata or this home."""
        if not label:
            raise InvalidRequestError("a folder needs a label", hint="pass --label NAME")
        if any(f.label == label and f is not moving for f in self.config.folders):
            raise RequestConflictError(
                f"a folder is already labelled {label!r}", hint="choose another with --label"
            )
        for other in self.config.folders:
            if other is moving:
                continue
            if (
                path == other.path
                or path.is_relative_to(other.path)
                or (other.path.is_relative_to(path))
            ):
                raise RequestConflictError(
                    f"{path} overlaps folder {other.label} ({other.path})",
                    hint="a directory can belong to one synced folder only",
                )
        if METADATA_DIR in path.parts:
            raise InvalidRequestError(f"{path} is inside a commonsync metadata directory")
        home = Path(os.path.abspath(self.home.directory))
        if path == home or path.is_relative_to(home) or home.is_relative_to(path):
            raise RequestConflictError(
                f"{path} overlaps this device's home {home}, which holds its secret key and "
                "index: syncing it would hand the key to every member",
                hint="choose a directory that neither holds nor lies inside it",
            )

    def _changed(self) -> None:
        if self._on_config_change is not None:
            self._on_config_change(self.config)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This device, its folders, devices, relays, pending devices and offered folders,
        each in words a person reads (JSON-ready)."""
        return {
            "device_id": str(self.identity.device_id),
            "name": self.device_name,
            "port": self.port,
            "pid": os.getpid(),
            "folders": [r.status() for r in self.runners.values()],
            "devices": self.peers.status(),
            "relays": self.peers.relays.status(),
            "pending_devices": self.peers.pending_status(),
            "limits": self.limits_status(),
            # Devices and relays that refuse this device, a sentence and a hint each (a
            # folder's own are in its "problems"): `commonsync status` exits with 1.
            "problems": device_problems(
                self.peers.refused_by,
                self.peers.relays.links.values(),
                {d.device_id: d.name for d in self.config.devices},
                self.identity.device_id,
            ),
            "notices": self.notices,
            "offered_folders": [
                {
                    "id": o.folder_id.hex(),
                    "label": o.label,
                    "offered_by": sorted(str(d) for d in o.offered_by),
                }
                for o in self.offers.values()
            ],
        }


def _folder_path(path: Path | str) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _join_label(link: JoinLink) -> str:
    return link.label or link.folder_id.hex()[:8]


def _join_path(path: Path | str | None, parent: Path | str | None, link: JoinLink) -> Path:
    if path is not None:
        return _folder_path(path)
    return _folder_path(Path(parent if parent is not None else Path.cwd()) / _join_label(link))


def _parse_device_id(text: str) -> DeviceId:
    try:
        return DeviceId.parse(text)
    except DeviceIdError as exc:
        raise InvalidRequestError(
            f"{text!r} is not a valid device ID: {exc}",
            hint="copy it from `commonsync id` on the other device",
        ) from None


def _local_addresses() -> list[str]:
    """Every IPv4 address of this machine: discovery's default when none are configured."""
    return sorted(
        {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)}
    )
