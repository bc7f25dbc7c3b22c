"""One synced folder of a Node: the engine's :class:`~commonsync.Folder`, plus the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from watchfiles import Change, awatch

from ..errors import (
    CommonsyncError,
    FolderError,
    FolderMissingError,
    IndexChangedError,
    IndexFullError,
    MassDeletionError,
    StoreError,
    UnavailableError,
)
from ..formats.identity import DeviceIdentity
from ..formats.keys import FolderKey
from ..sync.folder import Event, EventKind, Folder, open_folder
from ..sync.ignore import IGNORE_FILE, LOCAL_FILE
from ..sync.layout import FOLDER_MARKER, METADATA_DIR, is_conflict_copy, is_internal
from ..sync.marker import check_folder
from ..sync.scanner import ScanReport, SkipReason
from ..sync.space import DEFAULT_MIN_FREE, DiskReserve, MinFree
from ..sync.store import IndexStore
from .config import FolderConfig
from .events import EventBus
from .problems import folder_problems
from .progress import name_problems, not_synced_problems, peer_status, transfer_status

log = logging.getLogger(__name__)

#: Quiet time after a change before the scan it triggers (a save is often several writes).
DEBOUNCE_MS = 100
#: Longest a watched change waits for the writing of remote versions to finish (only while
#: they are being written: versions that merely wait for chunks hold nothing back).
SCAN_DEFERRAL = 30.0
#: How often the watcher's thread looks up from the OS's notifications (and at its stop
#: event), in milliseconds: a trade between idle CPU and latency.
WATCH_STEP_MS = 100
#: How long the watcher's thread waits for a change before handing back to Python.
WATCH_TIMEOUT_MS = 10_000
#: Written at start, every :data:`WATCH_PROBE_INTERVAL` seconds, until the watcher reports
#: it: then the watch is active. (Measured: a write as the watcher's task starts is missed,
#: its watch is not there yet; the next is reported after the debounce, ~0.3 s in all.)
WATCH_PROBE = f"{METADATA_DIR}/watch-probe"
WATCH_PROBE_INTERVAL = 0.2
#: The longest wait for that report before scanning anyway (the periodic scan then covers
#: what the watcher misses).
WATCH_READY_TIMEOUT = 10.0
#: While a folder runs: how often its marker is checked, so that a disk unmounted or a root
#: moved away is an error within seconds even when the watcher reports nothing.
CHECK_INTERVAL = 2.0
#: While a folder cannot run: how often it checks whether its marker is back or its index
#: takes writes again; the first pause before trying again after any other failure.
RETRY_INTERVAL = 2.0
#: The longest pause between attempts after a failure that says nothing of when it ends.
MAX_RETRY_INTERVAL = 60.0
#: How long a scan a person asked for waits for a folder that cannot run to come back.
RESCAN_WAIT = 5.0
#: While remote versions are written: how often a "progress" event tells how far it is (s).
PROGRESS_EVENT_INTERVAL = 2.0


class FolderState(enum.Enum):
    STARTING = "starting"
    SCANNING = "scanning"
    SYNCING = "syncing"
    UP_TO_DATE = "up to date"
    NEEDS_CONFIRMATION = "needs confirmation"
    ERROR = "error"
    #: Paused by a person (`commonsync folder pause`): not running, on purpose.
    PAUSED = "paused"


class FolderUnavailableError(UnavailableError):
    """A scan a person asked for did not run (or held deletions back): the message says why,
    ``hint`` what to do."""


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
        min_free: MinFree = DEFAULT_MIN_FREE,
        watch: bool = True,
        on_change: Callable[[], None] | None = None,
        epoch_keys: Callable[[], Sequence[FolderKey]] = tuple,
        save_key: Callable[[FolderKey], None] | None = None,
    ) -> None:
        """``on_change`` is called when the folder stops running after an error, and when it
        runs again: sessions with peers carry the folders that run. ``epoch_keys`` reads the
        keys of the folder's later epochs from where ``save_key`` keeps them."""
        self.config = config
        self.key = key
        self._epoch_keys = epoch_keys
        self._save_key = save_key
        self._identity = identity
        self._store = store
        self._events = events
        self._device_name = device_name
        self._rescan_interval = rescan_interval
        self._max_deleted_share = max_deleted_share
        self._min_free = min_free
        self._watch_enabled = watch
        self._on_change = on_change
        self.folder: Folder | None = None
        self.scanning = False
        self.error = ""
        self.hint = ""
        self._task_status: anyio.abc.TaskStatus[None] | None = None
        self._opened = False  # opened once: never created again (it may be an empty mount)
        self._watched = False  # the watch is active (or known to have failed)
        self._ready = False  # watched, then scanned: what status calls running
        self._running_since: float | None = None
        self._attempts = 0  # attempts that failed
        self._failed_checks = 0
        self._stopping = anyio.Event()
        self._stop_error: CommonsyncError | None = None
        self._retry_wanted = anyio.Event()
        self._watching = anyio.Event()
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
        just added), its root and marker must exist: an unmounted disk is an error, and is
        never taken for a folder whose files were all deleted.

        Whatever stops the folder (its disk unmounted or moved away, its index full or
        damaged) becomes its state in :meth:`status`, and it tries again on a timer
        (:meth:`_until_retry`) until it runs: the daemon and its other folders go on.
        ``task_status`` is told once the folder first runs (watched, then scanned) or first
        fails."""
        self._task_status = task_status
        delay = RETRY_INTERVAL
        while True:
            failure = await self._attempt(create=create and not self._opened)
            self._attempts += 1
            self._set_error(failure)
            self._tell_started()
            if self._running_since is not None:
                # It ran: sessions carry on without it. Its backoff starts again only if it
                # ran a while (a failure that recurs soon after each start is not hammered).
                if anyio.current_time() - self._running_since > MAX_RETRY_INTERVAL:
                    delay = RETRY_INTERVAL
                self._running_since = None
                if self._on_change is not None:
                    self._on_change()
            await self._until_retry(failure, delay)
            delay = min(delay * 2, MAX_RETRY_INTERVAL)

    async def _attempt(self, *, create: bool) -> CommonsyncError:
        """Run the folder until something stops it; what stopped it."""
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
                    epoch_keys=await anyio.to_thread.run_sync(self._epoch_keys),
                    save_key=self._save_key,
                ) as folder,
                anyio.create_task_group() as tasks,
            ):
                self._opened = True
                self._stopping = anyio.Event()
                self._stop_error = None
                folder.max_deleted_share = self._max_deleted_share
                folder.disk_reserve = DiskReserve(self._min_free)
                self.folder = folder
                tasks.start_soon(self._forward_events, folder)
                if self._watch_enabled:
                    # Before the first scan: whatever is written after the scan's walk has
                    # passed its directory is seen by the watcher, and scanned again.
                    await tasks.start(self._watch)
                self._watched = True
                await self.scan()
                if self._stop_error is None:
                    tasks.start_soon(self._scan_when_asked)
                    tasks.start_soon(self._rescan_periodically)
                    tasks.start_soon(self._check_periodically)
                    tasks.start_soon(self._publish_progress)
                    self._now_running()
                    await self._stopping.wait()
                tasks.cancel_scope.cancel()
            assert self._stop_error is not None
            return self._stop_error
        except BaseException as exc:
            failure = _failure(exc)  # None for a cancellation: that goes on up
            if failure is None:
                raise
            if not isinstance(failure, CommonsyncError):
                log.error("folder %s stopped on an unexpected error", self.label, exc_info=exc)
                return FolderError(
                    f"an unexpected error stopped it ({failure!r}); the daemon's log has the "
                    "details"
                )
            return failure
        finally:
            self.folder = None
            self._watched = False
            self._ready = False

    def _now_running(self) -> None:
        self._ready = True
        self._running_since = anyio.current_time()
        if self._attempts:
            log.info("folder %s runs again", self.label)
            self._events.publish(self.label, "resumed")
            if self._on_change is not None:
                self._on_change()  # sessions start again, with the folder
        self._tell_started()

    def _tell_started(self) -> None:
        if self._task_status is not None:
            self._task_status.started()
            self._task_status = None

    def _stop_with(self, error: CommonsyncError) -> None:
        """Close the folder (from any of its tasks, or a scan someone asked for)."""
        if self._stop_error is None:
            self._stop_error = error
            self._stopping.set()

    async def _until_retry(self, failure: CommonsyncError, delay: float) -> None:
        """Wait until trying again can help. For a folder whose marker is missing or whose
        index is full, that is checked every :data:`RETRY_INTERVAL`; other failures are
        tried again after ``delay``. :meth:`retry_now` makes it check at once."""
        checkable = isinstance(failure, FolderMissingError | IndexFullError)
        deadline = anyio.current_time() + delay
        self._retry_wanted = anyio.Event()  # asked before this failure: not about it
        while True:
            pause = RETRY_INTERVAL if checkable else deadline - anyio.current_time()
            with anyio.move_on_after(max(pause, 0.0)):
                await self._retry_wanted.wait()
            asked = self._retry_wanted.is_set()
            self._retry_wanted = anyio.Event()
            if not checkable:
                if asked or anyio.current_time() >= deadline:
                    return
                continue
            try:
                if isinstance(failure, FolderMissingError):
                    await anyio.to_thread.run_sync(check_folder, self.root)
                else:
                    await self._store.check_writable()
            except (FolderMissingError, IndexFullError):
                self._failed_checks += 1
                continue
            except CommonsyncError:
                pass  # something else now: the attempt says what
            return

    async def retry_now(self) -> None:
        """Ask a folder that cannot run to check at once whether it can, and wait (at most
        :data:`RESCAN_WAIT`) until it runs or the check or attempt has failed."""
        if self._ready:
            return
        attempts, checks = self._attempts, self._failed_checks
        self._retry_wanted.set()
        with anyio.move_on_after(RESCAN_WAIT):
            while not self._ready and (attempts, checks) == (self._attempts, self._failed_checks):
                await anyio.sleep(0.05)

    def request_scan(self) -> None:
        self._scan_wanted.set()

    async def rescan(self, *, confirm_deletions: bool = False) -> ScanReport:
        """The scan a person asked for: a folder that cannot run is checked again first;
        :class:`FolderUnavailableError` says why when no scan ran (or, for held deletions,
        why they were not sent)."""
        await self.retry_now()
        report = await self.scan(confirm_deletions=confirm_deletions) if self._ready else None
        if report is not None:
            return report
        if self.vanished is not None:
            vanished, indexed = self.vanished
            raise FolderUnavailableError(
                f"folder {self.label}: {vanished} of {indexed} files vanished at once; their "
                "deletion was not sent to other devices",
                f"confirm it with `commonsync folder confirm-deletions {self.label}`, or "
                "restore the files",
            )
        if self.error:
            raise FolderUnavailableError(
                f"folder {self.label} was not scanned: {self.error}", self.hint
            )
        raise FolderUnavailableError(
            f"folder {self.label} was not scanned: it is still starting",
            "try again in a moment; `commonsync status` shows when it is up to date",
        )

    async def scan(self, *, confirm_deletions: bool = False) -> ScanReport | None:
        """Scan now; failures become the folder's state (and events), not exceptions. One
        that means the folder cannot run (its marker gone, its index full) closes it until
        it can."""
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
            self._set_error(exc)
            if _stops_folder(exc):
                self._stop_with(exc)
            return None
        finally:
            self.scanning = False
        if self.vanished is not None and (confirm_deletions or report.deleted == 0):
            self.vanished = None
        self._set_error(None)
        self.last_scan = ScanRecord(time.time(), report)
        if report.added or report.changed or report.deleted:
            log.info("folder %s: scanned: %s", self.label, report)
        return report

    def _set_error(self, error: CommonsyncError | None) -> None:
        """The folder's error for status (None: none), published and logged when it changes."""
        message = "" if error is None else str(error)
        if message and message != self.error:
            self._events.publish(self.label, "error", detail=message)
            log.error("folder %s: %s", self.label, message)
        self.error = message
        self.hint = "" if error is None else _hint(error)

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
        walk of the whole folder each). Versions that wait for chunks nobody sends, or that
        were refused, are not being written: they hold no local change back."""
        with anyio.move_on_after(SCAN_DEFERRAL):
            while self.folder is not None and self.folder.writing:
                await anyio.sleep(0.05)

    async def _rescan_periodically(self) -> None:
        while True:
            await anyio.sleep(self._rescan_interval)
            self.request_scan()

    async def _check_periodically(self) -> None:
        """Close the folder as soon as it cannot run: its marker gone (a disk unmounted, the
        root moved away: the watcher may say nothing), or the index refusing writes for
        lack of space (seen by whichever part of the daemon wrote last)."""
        while True:
            await anyio.sleep(CHECK_INTERVAL)
            if self._store.full is not None:
                self._stop_with(self._store.full)
                return
            try:
                await anyio.to_thread.run_sync(check_folder, self.root)
            except FolderMissingError as exc:
                self._stop_with(exc)
                return

    async def _publish_progress(self) -> None:
        """While remote versions are being written, an event every
        :data:`PROGRESS_EVENT_INTERVAL` seconds with the files and bytes left, the rate and
        the time left: ``commonsync events`` shows bytes as well as files."""
        while True:
            await anyio.sleep(PROGRESS_EVENT_INTERVAL)
            folder = self.folder
            if folder is None or not folder.busy:
                continue
            left = folder.progress()
            files = "1 file" if left.files == 1 else f"{left.files} files"
            self._events.publish(
                self.label,
                "progress",
                detail=f"{files}, {transfer_status(folder)['transfer']}",
                bytes_left=str(left.bytes),
                files_left=str(left.files),
            )

    async def _watch(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch the folder; ``task_status`` is told once the watch is known to be active (it
        reported a write of :data:`WATCH_PROBE`), or known to have failed."""
        # Stopping: the watcher's thread returns within one step once ``stop`` is set, so it
        # is set as soon as this task is cancelled (a long ``rust_timeout`` then costs
        # nothing at shutdown, and saves waking up when nothing happens).
        stop = anyio.Event()
        self._watching = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch_until, stop)
            try:
                await self._until_watching()
                task_status.started()
                await anyio.sleep_forever()
            finally:
                stop.set()

    async def _until_watching(self) -> None:
        """Write the probe file until the watcher reports it. watchfiles sets its watches up
        in its own thread once iteration starts, with no word when that is done: a reported
        write is the proof."""
        probe = self.root / WATCH_PROBE
        with anyio.move_on_after(WATCH_READY_TIMEOUT):
            while not self._watching.is_set():
                try:
                    await anyio.to_thread.run_sync(_touch, probe)
                except OSError as exc:
                    # No probe (a full disk): wait a while, and scan once more after the
                    # first scan, for what fell between.
                    log.info("folder %s: cannot write %s: %s", self.label, WATCH_PROBE, exc)
                    await anyio.sleep(1.0)
                    self.request_scan()
                    return
                with anyio.move_on_after(WATCH_PROBE_INTERVAL):
                    await self._watching.wait()
        if not self._watching.is_set():
            log.warning(
                "folder %s: the watcher reported no change within %g s; changes are found "
                "by the periodic scan",
                self.label,
                WATCH_READY_TIMEOUT,
            )
            self.request_scan()

    async def _watch_until(self, stop: anyio.Event) -> None:
        root = str(self.root).rstrip("/")
        prefix = root + "/"
        probe = prefix + WATCH_PROBE
        marker = prefix + FOLDER_MARKER
        # This device's own ignore rules, edited by hand: they apply at once, as .csignore's.
        local_rules = prefix + LOCAL_FILE

        def relevant(_change: Change, path: str) -> bool:
            # Called for every change the OS reports: plain string work, no Path objects.
            if path == probe:
                self._watching.set()
                return False
            if path in (marker, root):
                return True  # the folder going away: the scan it asks for says so
            if path == local_rules:
                return True
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
        finally:
            self._watching.set()  # nobody waits for a watch that is not there

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
            self.label,
            event.kind.value,
            path=event.path,
            detail=event.detail,
            peer=event.peer,
            bytes=str(event.size) if event.size else "",
        )
        if event.kind is EventKind.ERROR:
            log.warning("folder %s: %s: %s", self.label, event.path or "-", event.detail)

    # -- status ------------------------------------------------------------------------------

    @property
    def state(self) -> FolderState:
        # Never "up to date" before the watch and the first scan: a write meanwhile would
        # otherwise go unseen by a script that waits for it.
        if self.config.paused:
            return FolderState.PAUSED
        if self.folder is None or not self._watched:
            return FolderState.ERROR if self.error else FolderState.STARTING
        if self.vanished is not None:
            return FolderState.NEEDS_CONFIRMATION
        if self.error or self.folder.waiting_for_space:
            return FolderState.ERROR
        if self.folder.busy:
            return FolderState.SYNCING
        if self.scanning or not self._ready:
            return FolderState.SCANNING
        return FolderState.UP_TO_DATE

    def status(self) -> dict[str, Any]:
        progress = self.folder.progress() if self.folder is not None else None
        state = self.state
        words = state.value
        transfer = transfer_status(self.folder)
        if state is FolderState.SYNCING and progress is not None:
            files = "1 file" if progress.files == 1 else f"{progress.files} files"
            words = f"syncing {files}, {transfer['transfer']}"
        elif state is FolderState.NEEDS_CONFIRMATION and self.vanished is not None:
            vanished, indexed = self.vanished
            words = (
                f"needs confirmation: {vanished} of {indexed} files vanished; nothing was "
                f"deleted elsewhere (`commonsync folder confirm-deletions {self.label}`)"
            )
        elif state is FolderState.ERROR:
            error, hint = self._problem()
            words = f"error: {error}" + (f"; {hint}" if hint else "")
        ignored = self.last_scan.report.ignored if self.last_scan is not None else 0
        if state is FolderState.UP_TO_DATE and ignored:
            # Visible, so that a rule like `*` cannot silently stop the folder publishing.
            rules = IGNORE_FILE
            if self.folder is not None and self.folder.ignores_here:
                rules += " and this device's rules (`commonsync ignore list`)"
            words += f" ({ignored} ignored by {rules})"
        not_synced = self._not_synced()
        if not_synced:
            words += f"; {not_synced}"
        members = self.folder.members if self.folder is not None else None
        role = members.my_role if members is not None else None
        unshared = self.folder.unshared_changes if self.folder is not None else 0
        if unshared:
            changes = "1 local change" if unshared == 1 else f"{unshared} local changes"
            being = f"a {role.name.lower()}" if role is not None else "no longer a member"
            words += f"; {changes} not shared (you are {being} of {self.label})"
        rules_problem = self.folder.ignore_problem if self.folder is not None else ""
        if rules_problem:
            words += f"; {rules_problem}"
        # Said once per device and reason, not once per record (see commonsync.sync.refusals).
        refused = [str(r) for r in self.folder.refusals()] if self.folder is not None else []
        if refused:
            words = "; ".join([words, *refused[:3]])
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
            # Bytes per second over the last seconds, and seconds left at that pace (None:
            # nothing moves, no estimate).
            "rate": transfer["rate"],
            "eta": transfer["eta"],
            # Per device the folder is shared with: how far it is behind this device, and
            # this device behind it (see commonsync.node.progress).
            "peers": peer_status(self.folder, list(self.config.devices)),
            "devices": [str(d) for d in self.config.devices],
            # This device's role in the folder's membership (None: no log, or not a member).
            "role": role.name.lower() if role is not None else None,
            "members": len(members.state.members) if members and members.state else None,
            "unshared_changes": unshared,
            "bytes_received": stats.chunk_bytes_received if stats else 0,
            "files_applied": stats.files_applied if stats else 0,
            "last_scan": None if self.last_scan is None else self.last_scan.finished,
            # Why it is in error, and what to do ("" when it is not): for scripts.
            "error": self._problem()[0] if state is FolderState.ERROR else "",
            "hint": self._problem()[1] if state is FolderState.ERROR else "",
            "ignored": ignored,
            "ignore_error": rules_problem,
            "refused": refused,
            # What it refused from others, a sentence and a hint each (membership refusals,
            # rollbacks): `commonsync status` exits with 1 while there are any.
            "problems": []
            if self.folder is None
            else folder_problems(self.folder, self.label)
            # What stops it from finishing: entries it cannot read or record, names this
            # file system cannot hold (one sentence and a hint each, as above).
            + not_synced_problems(self.last_scan.report if self.last_scan else None, self.label)
            + name_problems(self.folder, self.label),
            "not_synced": []
            if self.last_scan is None
            else [
                {"path": s.display(), "reason": s.reason.value, "detail": s.detail}
                for s in self.last_scan.report.skipped
                if s.reason not in _PASSING
            ],
        }

    def _not_synced(self) -> str:
        """The entries the last scan could not record for good (an invalid name, an
        unreadable or unsupported file), in one sentence; "" if none. Entries that were only
        changing while scanned are left out: the next scan records them."""
        if self.last_scan is None:
            return ""
        report = self.last_scan.report
        lasting = [s for s in report.skipped if s.reason not in _PASSING]
        if not lasting:
            return ""
        count = report.skipped_count - (len(report.skipped) - len(lasting))
        return (
            f"{count} {'entry is' if count == 1 else 'entries are'} not synced, for example "
            f"{lasting[0]} (`commonsync status --json` lists them)"
        )

    def _problem(self) -> tuple[str, str]:
        """The folder's error and what to do about it, for status."""
        if self.error:
            return self.error, self.hint
        waiting = self.folder.waiting_for_space if self.folder is not None else ""
        return waiting, "syncing resumes by itself once there is space" if waiting else ""

    def conflict_copies(self) -> list[str]:
        """Conflict copies on disk (a walk of the folder: for the `conflicts` command)."""
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            if not is_internal(relative) and is_conflict_copy(relative):
                found.append(relative)
        return found


#: Why a scan may skip an entry that the next scan records by itself.
_PASSING = frozenset({SkipReason.CHANGING, SkipReason.INDEX_CHANGED, SkipReason.PENDING_REMOTE})


def _failure(exc: BaseException) -> Exception | None:
    """What stopped a folder, from what its tasks raised: the first library error, else the
    first unexpected one; None when a cancellation (or an interrupt) is among them."""
    leaves: list[BaseException] = []
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    found: list[Exception] = []
    for leaf in leaves:
        if not isinstance(leaf, Exception):
            return None
        found.append(leaf)
    library = [e for e in found if isinstance(e, CommonsyncError)]
    return (library or found)[0] if found else None


def _stops_folder(error: CommonsyncError) -> bool:
    """Whether a scan's error means the folder cannot run (rather than one bad scan)."""
    if isinstance(error, MassDeletionError | IndexChangedError):
        return False
    return isinstance(error, FolderError | StoreError)


def _hint(error: CommonsyncError) -> str:
    """What a person can do about a folder's error (status shows it after the error)."""
    if isinstance(error, FolderMissingError):
        return "it runs again by itself once its marker is back (mount its disk, or move it back)"
    if isinstance(error, IndexFullError):
        return "syncing resumes by itself once there is space"
    if isinstance(error, StoreError):
        return "it is tried again every minute; the daemon, restarted, rebuilds a damaged index"
    return ""


def _touch(path: Path) -> None:
    path.write_text(f"{time.time_ns()}\n")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
