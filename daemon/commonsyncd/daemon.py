"""The daemon: one trio process that keeps this device's folders in sync with its peers.

:class:`Daemon` owns the configuration (and writes it back when a command changes it), runs a
:class:`~commonsyncd.folders.FolderRunner` per folder, the connections to peers and to
community relays (:class:`~commonsyncd.peers.Peers`), LAN discovery, and the control API the
``commonsync`` command talks to. Everything runs in one task group: cancelling it (SIGTERM,
SIGINT) stops the watchers, abandons a write in progress safely (files are assembled in
temporary files and renamed into place, so an interrupted one leaves the old file and a
resumable temporary), closes the sessions and the index.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import ifaddr

from commonsync import DeviceId, DeviceIdentity, FolderKey, IndexStore
from commonsync.errors import CommonsyncError, DeviceIdError, FolderKeyError
from commonsync.formats.messages import Offer
from commonsync.sync.layout import METADATA_DIR
from commonsync.sync.scanner import ScanReport
from commonsync.sync.space import MinFree

from .config import (
    Config,
    ConfigError,
    DeviceConfig,
    FolderConfig,
    RelayConfig,
    format_address,
    parse_address,
)
from .control import ControlError, Handler, serve_control
from .events import EventBus
from .folders import FolderRunner, FolderUnavailableError
from .home import Home
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


class Daemon:
    def __init__(
        self,
        home: Home,
        config: Config,
        identity: DeviceIdentity,
        store: IndexStore,
        *,
        watch: bool = True,
    ) -> None:
        self.home = home
        self.config = config
        self.identity = identity
        self.store = store
        self.events = EventBus()
        self.peers = Peers(self)
        self.runners: dict[bytes, FolderRunner] = {}
        self.offers: dict[bytes, PendingOffer] = {}
        self.port = 0
        self._watch = watch
        self._lock = anyio.Lock()
        self._tasks: anyio.abc.TaskGroup | None = None
        #: Sentences for `status` about something the daemon did by itself (an index rebuilt).
        self.notices: list[str] = []

    @property
    def device_name(self) -> str:
        return self.config.name or self.identity.device_id.short_str

    def runner(self, folder_id: bytes) -> FolderRunner | None:
        return self.runners.get(folder_id)

    # -- running -------------------------------------------------------------------------------

    async def run(
        self,
        control: Handler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled, answering the control socket with ``control`` (the API is
        built on the daemon, not the reverse)."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            # First, since its lock says whether another daemon already runs with this home.
            await tasks.start(serve_control, self.home.socket_path, control)
            listener = await self._listen()
            # Every folder is in status at once ("starting"), each until it has run or failed.
            runners = [await self._make_runner(folder) for folder in self.config.folders]
            for runner in runners:
                await tasks.start(_run_folder, runner, False)
            tasks.start_soon(self.peers.run, listener)
            if self.config.discovery_enabled:
                tasks.start_soon(self._discover)
            log.info(
                "daemon started: device %s, listening on port %d, %d folders",
                self.identity.device_id,
                self.port,
                len(self.config.folders),
            )
            task_status.started()

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
        assert self._tasks is not None
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
            self.events,
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
            self.events.publish(offer.label, "folder offered", peer=str(device))
            log.info(
                "%s offers folder %r (%s)", device.short_str, offer.label, offer.folder_id.hex()
            )
        pending.offered_by.add(device)

    # -- what commands do ----------------------------------------------------------------------

    async def add_folder(self, path: Path, label: str) -> FolderRunner:
        async with self._lock:
            path = _folder_path(path)
            if not path.is_dir():
                raise ControlError(
                    404, f"{path} is not a directory", hint="create it first, or check the path"
                )
            self._check_new_folder(path, label)
            key = FolderKey.generate()
            await anyio.to_thread.run_sync(self.home.save_folder_key, key)
            config = FolderConfig(key.folder_id, label, path)
            self.config.folders.append(config)
            self._save()
        return await self._start_folder(config, create=True)

    async def accept_folder(self, reference: str, path: Path) -> FolderRunner:
        async with self._lock:
            offer = self._find_offer(reference)
            path = _folder_path(path)
            label = offer.label or offer.folder_id.hex()[:8]
            existing = self.config.folder(offer.folder_id)
            if existing is not None:
                # Accepting must not quietly add the offering devices to a folder chosen for
                # others (nor ignore the path given): sharing with them is its own decision.
                devices = ", ".join(sorted(d.short_str for d in offer.offered_by))
                raise ControlError(
                    409,
                    f"this device already syncs folder {existing.label} at {existing.path}; "
                    f"{devices} offered the same folder",
                    hint=f"to sync it with {devices} too: commonsync share {existing.label} "
                    "DEVICE_ID",
                )
            if path.exists() and not path.is_dir():
                raise ControlError(409, f"{path} exists and is not a directory")
            self._check_new_folder(path, label)
            await anyio.to_thread.run_sync(self.home.save_folder_key, offer.key)
            config = FolderConfig(offer.folder_id, label, path, sorted(offer.offered_by, key=str))
            self.config.folders.append(config)
            self._save()
            del self.offers[offer.folder_id]
        runner = await self._start_folder(config, create=True)
        for device in config.devices:
            self.peers.restart(device)
        return runner

    async def add_device(self, text: str, name: str, addresses: list[str]) -> DeviceConfig:
        async with self._lock:
            device_id = _parse_device_id(text)
            if device_id == self.identity.device_id:
                raise ControlError(
                    409,
                    "that is this device's own ID",
                    hint="run `commonsync device add` on the other device",
                )
            for address in addresses:
                try:
                    parse_address(address)
                except ConfigError as exc:
                    raise ControlError(400, str(exc)) from None
            device = self.config.device(device_id)
            if device is not None:
                added = [a for a in addresses if a not in device.addresses]
                if not added and (not name or name == device.name):
                    raise ControlError(
                        409,
                        f"device {device_id.short_str} is already added",
                        hint="`commonsync device list` shows it",
                    )
                device.addresses.extend(added)
                device.name = name or device.name
            else:
                pending = self.peers.pending.pop(device_id, None)
                device = DeviceConfig(
                    device_id, name or (pending.name if pending else ""), list(addresses)
                )
                self.config.devices.append(device)
            self._save()
        self.peers.dial(device_id)
        return device

    async def add_relay(self, text: str) -> RelayConfig:
        """Use a community relay (``RELAYID@HOST:PORT``): keep a control connection to it."""
        async with self._lock:
            try:
                relay = RelayConfig.parse(text)
            except ConfigError as exc:
                raise ControlError(
                    400, str(exc), hint="`commonsync relay id` on the relay prints its ID"
                ) from None
            if relay.relay_id == self.identity.device_id:
                raise ControlError(409, "that is this device's own ID, not a relay's")
            existing = self.config.relay(relay.relay_id)
            if existing is not None:
                if existing.address == relay.address:
                    raise ControlError(
                        409,
                        f"relay {relay.relay_id.short_str} is already added",
                        hint="`commonsync relay list` shows it",
                    )
                existing.address = relay.address
                relay = existing
            else:
                self.config.relays.append(relay)
            self._save()
        self.peers.relays.update(relay)
        return relay

    async def share(
        self, folder_reference: str, device_text: str
    ) -> tuple[FolderConfig, DeviceConfig]:
        async with self._lock:
            folder = self._find_folder(folder_reference)
            device = self._find_device(device_text)
            if device.device_id in folder.devices:
                raise ControlError(
                    409,
                    f"folder {folder.label} is already shared with {device.device_id.short_str}",
                )
            folder.devices.append(device.device_id)
            self._save()
            offer = self.offers.get(folder.folder_id)
            if offer is not None:  # its offer of this folder is answered now
                offer.offered_by.discard(device.device_id)
                if not offer.offered_by:
                    del self.offers[folder.folder_id]
        self.peers.restart(device.device_id)
        return folder, device

    async def confirm_deletions(self, reference: str) -> dict[str, Any]:
        runner = self._runner_for(reference)
        report = await _asked_scan(runner, confirm_deletions=True)
        return {"folder": runner.status(), "deleted": report.deleted}

    async def rescan(self, reference: str) -> dict[str, Any]:
        runner = self._runner_for(reference)
        report = await _asked_scan(runner)
        return {"folder": runner.status(), "report": str(report)}

    # -- lookups ---------------------------------------------------------------------------------

    def _runner_for(self, reference: str) -> FolderRunner:
        folder = self._find_folder(reference)
        return self.runners[folder.folder_id]

    def _find_folder(self, reference: str) -> FolderConfig:
        try:
            return self.config.find_folder(reference)
        except ConfigError as exc:
            raise ControlError(404, str(exc), hint="`commonsync folder list` shows them") from None

    def _find_device(self, text: str) -> DeviceConfig:
        by_name = [d for d in self.config.devices if d.name and d.name == text]
        if len(by_name) == 1:
            return by_name[0]
        cleaned = text.strip().upper()
        by_prefix = [d for d in self.config.devices if str(d.device_id).startswith(cleaned)]
        if len(cleaned) >= 7 and len(by_prefix) == 1:
            return by_prefix[0]
        device_id = _parse_device_id(text)
        device = self.config.device(device_id)
        if device is None:
            raise ControlError(
                404,
                f"device {device_id.short_str} is not known to this device",
                hint=f"add it first: commonsync device add {device_id}",
            )
        return device

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
            raise ControlError(
                404,
                f"no folder {reference!r} is offered to this device",
                hint="`commonsync folder list` shows offered folders",
            )
        raise ControlError(409, f"{reference!r} names several offered folders; use its ID")

    def _check_new_folder(self, path: Path, label: str) -> None:
        if not label:
            raise ControlError(400, "a folder needs a label", hint="pass --label NAME")
        if any(f.label == label for f in self.config.folders):
            raise ControlError(
                409, f"a folder is already labelled {label!r}", hint="choose another with --label"
            )
        for other in self.config.folders:
            if (
                path == other.path
                or path.is_relative_to(other.path)
                or (other.path.is_relative_to(path))
            ):
                raise ControlError(
                    409,
                    f"{path} overlaps folder {other.label} ({other.path})",
                    hint="a directory can belong to one synced folder only",
                )
        if METADATA_DIR in path.parts:
            raise ControlError(400, f"{path} is inside a commonsync metadata directory")

    def _save(self) -> None:
        self.config.save(self.home.config_file)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
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


async def _asked_scan(runner: FolderRunner, *, confirm_deletions: bool = False) -> ScanReport:
    """A scan a person asked for; a 503 (exit code 1 in the command) when it did not run."""
    try:
        return await runner.rescan(confirm_deletions=confirm_deletions)
    except FolderUnavailableError as exc:
        raise ControlError(503, str(exc), hint=exc.hint) from None


def _folder_path(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _parse_device_id(text: str) -> DeviceId:
    try:
        return DeviceId.parse(text)
    except DeviceIdError as exc:
        raise ControlError(
            400,
            f"{text!r} is not a valid device ID: {exc}",
            hint="copy it from `commonsync id` on the other device",
        ) from None


def _local_addresses() -> list[str]:
    """Every IPv4 address of this machine: discovery's default when none are configured."""
    return sorted(
        {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)}
    )
