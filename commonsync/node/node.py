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

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import ifaddr

from ..errors import (
    CommonsyncError,
    DeviceIdError,
    FolderKeyError,
    InvalidRequestError,
    NotFoundError,
    RequestConflictError,
)
from ..formats.device_id import DeviceId
from ..formats.identity import DeviceIdentity
from ..formats.keys import FolderKey
from ..formats.messages import Offer
from ..sync.layout import METADATA_DIR
from ..sync.scanner import ScanReport
from ..sync.space import MinFree
from ..sync.store import IndexStore, open_store
from .config import (
    ConfigError,
    DeviceConfig,
    FolderConfig,
    NodeConfig,
    RelayConfig,
    format_address,
    parse_address,
)
from .events import EventBus
from .folders import FolderRunner
from .home import NodeHome
from .peers import Peers

log = logging.getLogger(__name__)

#: Folder offers kept pending per offering device.
MAX_OFFERS_PER_DEVICE = 32


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
        self.peers = Peers(self)
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
                await tasks.start(_run_folder, runner, False)
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
        await self._tasks.start(_run_folder, runner, create)
        return runner

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
        self, folder: FolderRunner | str, device: DeviceId | str
    ) -> tuple[FolderConfig, DeviceConfig]:
        """Share a folder (a runner, a label or an ID prefix) with a known device (an ID, its
        name or an ID prefix): it is offered the folder and, once it accepts, syncs it."""
        async with self._lock:
            found = folder.config if isinstance(folder, FolderRunner) else self._find_folder(folder)
            known = self._find_device(device)
            if known.device_id in found.devices:
                raise RequestConflictError(
                    f"folder {found.label} is already shared with {known.device_id.short_str}",
                )
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
        runner = self.runners[self._find_folder(reference).folder_id]
        return await runner.rescan(confirm_deletions=confirm_deletions)

    # -- lookups -------------------------------------------------------------------------------

    def folder(self, reference: str) -> FolderRunner:
        """A running folder by label, ID or ID prefix."""
        return self.runners[self._find_folder(reference).folder_id]

    def _find_folder(self, reference: str) -> FolderConfig:
        try:
            return self.config.find_folder(reference)
        except ConfigError as exc:
            raise NotFoundError(str(exc), hint="`commonsync folder list` shows them") from None

    def _find_device(self, device: DeviceId | str) -> DeviceConfig:
        if isinstance(device, str):
            by_name = [d for d in self.config.devices if d.name and d.name == device]
            if len(by_name) == 1:
                return by_name[0]
            cleaned = device.strip().upper()
            by_prefix = [d for d in self.config.devices if str(d.device_id).startswith(cleaned)]
            if len(cleaned) >= 7 and len(by_prefix) == 1:
                return by_prefix[0]
        device_id = device if isinstance(device, DeviceId) else _parse_device_id(device)
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

    def _check_new_folder(self, path: Path, label: str) -> None:
        if not label:
            raise InvalidRequestError("a folder needs a label", hint="pass --label NAME")
        if any(f.label == label for f in self.config.folders):
            raise RequestConflictError(
                f"a folder is already labelled {label!r}", hint="choose another with --label"
            )
        for other in self.config.folders:
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


async def _run_folder(
    runner: FolderRunner,
    create: bool,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await runner.run(create=create, task_status=task_status)


def _folder_path(path: Path | str) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


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
