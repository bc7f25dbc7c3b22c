"""One synced folder inside the daemon: the library's :class:`~commonsync.Folder`, plus the
watcher that notices changes, the scans they trigger, and the status a person reads.

The watcher (watchfiles, which runs on anyio) only says *that* something changed: every
change asks for a scan, and scans are serialised and coalesced, so a burst of writes costs
one scan after a short debounce. A scan compares ``lstat`` with the index before reading
anything, so it is cheap when little changed, and it catches what a watcher misses (files
created in a new directory before its watch existed, changes while the daemon was stopped).
A periodic full rescan is the safety net.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from watchfiles import Change, awatch

from commonsync import DeviceIdentity, Event, EventKind, Folder, FolderKey, IndexStore, open_folder
from commonsync.errors import CommonsyncError, MassDeletionError
from commonsync.layout import is_conflict_copy, is_internal
from commonsync.scanner import ScanReport, check_folder

from .config import FolderConfig
from .events import EventBus

log = logging.getLogger(__name__)

#: Quiet time after a change before the scan it triggers (a save is often several writes).
DEBOUNCE_MS = 100
#: Longest a watched change waits for the writing of remote versions to finish.
SCAN_DEFERRAL = 30.0
#: How often the watcher's thread looks up from the OS's notifications (and at its stop
#: event), in milliseconds: a trade between idle CPU and latency.
WATCH_STEP_MS = 100
#: How long the watcher's thread waits for a change before handing back to Python.
WATCH_TIMEOUT_MS = 10_000


class FolderState(enum.Enum):
    STARTING = "starting"
    SCANNING = "scanning"
    SYNCING = "syncing"
    UP_TO_DATE = "up to date"
    NEEDS_CONFIRMATION = "needs confirmation"
    ERROR = "error"


@dataclass
class ScanRecord:
    """The last scan's outcome, for status."""

    finished: float
    report: ScanReport


class FolderRunner:
    """Runs one folder until cancelled. Start it with ``nursery.start(runner.run)``."""

    def __init__(
        self,
        config: FolderConfig,
        key: FolderKey,
        identity: DeviceIdentity,
        store: IndexStore,
        events: EventBus,
        *,
        device_name: str,
        rescan_interval: float,
        max_deleted_share: float,
        watch: bool = True,
    ) -> None:
        self.config = config
        self.key = key
        self._identity = identity
        self._store = store
        self._events = events
        self._device_name = device_name
        self._rescan_interval = rescan_interval
        self._max_deleted_share = max_deleted_share
        self._watch_enabled = watch
        self.folder: Folder | None = None
        self.scanning = False
        self.error = ""
        self.vanished: tuple[int, int] | None = None
        self.last_scan: ScanRecord | None = None
        self._scan_wanted = anyio.Event()
        self._burst_bytes = 0

    @property
    def root(self) -> Path:
        return self.config.path

    @property
    def label(self) -> str:
        return self.config.label

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        *,
        create: bool = False,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the folder and keep it in sync until cancelled. Unless ``create`` (a folder
        just added), its root and marker must exist: an unmounted disk stays an error, and is
        never taken for a folder whose files were all deleted."""
        started = False
        try:
            if not create:
                await anyio.to_thread.run_sync(check_folder, self.root)
            async with (
                open_folder(
                    self.root,
                    self.key,
                    self._identity,
                    self._store,
                    label=self.label,
                    device_name=self._device_name,
                ) as folder,
                anyio.create_task_group() as tasks,
            ):
                folder.max_deleted_share = self._max_deleted_share
                self.folder = folder
                tasks.start_soon(self._forward_events, folder)
                await self.scan()
                tasks.start_soon(self._scan_when_asked)
                tasks.start_soon(self._rescan_periodically)
                if self._watch_enabled:
                    tasks.start_soon(self._watch)
                task_status.started()
                started = True
        except CommonsyncError as exc:
            self.error = str(exc)
            self._events.publish(self.label, "error", detail=str(exc))
            log.error("folder %s cannot run: %s", self.label, exc)
            if not started:
                task_status.started()
        finally:
            self.folder = None

    def request_scan(self) -> None:
        self._scan_wanted.set()

    async def scan(self, *, confirm_deletions: bool = False) -> ScanReport | None:
        """Scan now; failures become the folder's state (and events), not exceptions."""
        folder = self.folder
        if folder is None:
            return None
        self.scanning = True
        try:
            report = await folder.scan(confirm_deletions=confirm_deletions)
        except MassDeletionError as exc:
            self.vanished = (exc.vanished, exc.indexed)
            self._events.publish(self.label, "needs confirmation", detail=str(exc))
            log.warning("folder %s: %s", self.label, exc)
            return None
        except CommonsyncError as exc:
            if self.error != str(exc):
                self._events.publish(self.label, "error", detail=str(exc))
                log.error("folder %s: scan failed: %s", self.label, exc)
            self.error = str(exc)
            return None
        finally:
            self.scanning = False
        if self.vanished is not None and (confirm_deletions or report.deleted == 0):
            self.vanished = None
        self.error = ""
        self.last_scan = ScanRecord(time.time(), report)
        if report.added or report.changed or report.deleted:
            log.info("folder %s: scanned: %s", self.label, report)
        return report

    async def _scan_when_asked(self) -> None:
        while True:
            await self._scan_wanted.wait()
            await self._wait_while_writing()
            self._scan_wanted = anyio.Event()
            await self.scan()

    async def _wait_while_writing(self) -> None:
        """While remote versions are being written, what the watcher reports is mostly our
        own writing: scan when that is done, or after :data:`SCAN_DEFERRAL` at the latest
        (a person's edit meanwhile waits that long; a scan per written file would cost a
        walk of the whole folder each)."""
        with anyio.move_on_after(SCAN_DEFERRAL):
            while self.folder is not None and self.folder.busy:
                await anyio.sleep(0.05)

    async def _rescan_periodically(self) -> None:
        while True:
            await anyio.sleep(self._rescan_interval)
            self.request_scan()

    async def _watch(self) -> None:
        # Stopping: the watcher's thread returns within one step once ``stop`` is set, so it
        # is set as soon as this task is cancelled (a long ``rust_timeout`` then costs
        # nothing at shutdown, and saves waking up when nothing happens).
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch_until, stop)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()

    async def _watch_until(self, stop: anyio.Event) -> None:
        prefix = str(self.root).rstrip("/") + "/"

        def relevant(_change: Change, path: str) -> bool:
            # Called for every change the OS reports: plain string work, no Path objects.
            if not path.startswith(prefix):
                return False
            relative = path[len(prefix) :]
            return bool(relative) and not is_internal(relative)

        try:
            async for _changes in awatch(
                self.root,
                watch_filter=relevant,
                debounce=DEBOUNCE_MS,
                step=WATCH_STEP_MS,
                rust_timeout=WATCH_TIMEOUT_MS,
                yield_on_timeout=False,
                stop_event=stop,
            ):
                self.request_scan()
        except (OSError, RuntimeError) as exc:
            # No watch (inotify limit, vanished root): periodic rescans still run.
            log.warning("folder %s: cannot watch for changes: %s", self.label, exc)

    async def _forward_events(self, folder: Folder) -> None:
        events = folder.events()
        async for event in events:
            self._publish(event)
            # Whatever else is already there, without a trip through the scheduler each
            # (a sync of 10,000 files makes 20,000 events).
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    self._publish(events.receive_nowait())

    def _publish(self, event: Event) -> None:
        if event.kind in (EventKind.IDLE, EventKind.SCANNED):
            return
        self._events.publish(
            self.label, event.kind.value, path=event.path, detail=event.detail, peer=event.peer
        )
        if event.kind is EventKind.ERROR:
            log.warning("folder %s: %s: %s", self.label, event.path or "-", event.detail)

    # -- status ------------------------------------------------------------------------------

    @property
    def state(self) -> FolderState:
        if self.folder is None:
            return FolderState.ERROR if self.error else FolderState.STARTING
        if self.vanished is not None:
            return FolderState.NEEDS_CONFIRMATION
        if self.error:
            return FolderState.ERROR
        if self.folder.busy:
            return FolderState.SYNCING
        if self.scanning:
            return FolderState.SCANNING
        return FolderState.UP_TO_DATE

    def status(self) -> dict[str, Any]:
        progress = self.folder.progress() if self.folder is not None else None
        state = self.state
        words = state.value
        if state is FolderState.SYNCING and progress is not None:
            words = f"syncing {progress.files} files, {_megabytes(progress.bytes)} left"
        elif state is FolderState.NEEDS_CONFIRMATION and self.vanished is not None:
            vanished, indexed = self.vanished
            words = (
                f"needs confirmation: {vanished} of {indexed} files vanished; nothing was "
                f"deleted elsewhere (`commonsync folder confirm-deletions {self.label}`)"
            )
        elif state is FolderState.ERROR:
            words = f"error: {self.error}"
        stats = self.folder.stats if self.folder is not None else None
        # What a progress bar counts against: the most left since the folder was last idle.
        left = progress.bytes if progress else 0
        self._burst_bytes = max(self._burst_bytes, left) if left else 0
        return {
            "id": self.config.folder_id.hex(),
            "label": self.label,
            "path": str(self.root),
            "state": state.value,
            "summary": words,
            "files_left": progress.files if progress else 0,
            "bytes_left": left,
            "bytes_total": self._burst_bytes,
            "devices": [str(d) for d in self.config.devices],
            "bytes_received": stats.chunk_bytes_received if stats else 0,
            "files_applied": stats.files_applied if stats else 0,
            "last_scan": None if self.last_scan is None else self.last_scan.finished,
        }

    def conflict_copies(self) -> list[str]:
        """Conflict copies on disk (a walk of the folder: for the `conflicts` command)."""
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            if not is_internal(relative) and is_conflict_copy(relative):
                found.append(relative)
        return found


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
