"""Changing one's mind while a :class:`~commonsync.node.node.Node` runs: a folder removed,
moved (or pointed at the right place), paused and resumed; a device removed, paused, resumed
and renamed; a folder unshared from a device; and a configuration edited by hand, applied as
the difference it makes (:func:`reconfigure`). All of it live: no restart.

Decisions, as the README's "Changing your mind" says them:

- Removing a folder never deletes a file. The node stops syncing it, forgets its index and
  its keys, and removes only the marker that made the directory a folder
  (``.commonsync/folder``); the files and the old versions in ``.commonsync/versions/`` stay.
  Deleting a directory is a person's job, with the tools they know (and their trash).
- Moving a folder renames its directory when the new place is on the same file system (an
  instant rename that copies nothing, the folder stopped meanwhile); across file systems the
  person moves it (``mv``, a file manager) and tells the node where it went, which is also
  how a folder moved while the daemon ran is found again. A folder stuck in error because its
  path was wrong (never created, mistyped) and that holds nothing yet is started at the new
  place. A folder whose files are nowhere to be found is refused: started empty, it would send
  the deletion of every file to the other devices.
- Pausing is kept in the configuration (``paused = true``), so it outlives a restart; a
  paused folder neither scans nor takes part in sessions, a paused device is neither dialled
  nor accepted.
- In a folder with a membership log (SPEC.md §15) the log is the address book: every member's
  device syncs the folder with every other (:meth:`Node._learn_members` adds them back). So
  unsharing a folder from a member's device, or removing such a device, would be undone and
  would revoke nothing; both are refused with a message that names ``member remove`` (or
  ``device lost``) for revoking access and ``device pause`` for not syncing with it from here.
  A pause is a property of the device, which the log never touches: it survives the log.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread

from ..errors import (
    CommonsyncError,
    InvalidRequestError,
    NotFoundError,
    RequestConflictError,
    RequestError,
    UnavailableError,
)
from ..formats.device_id import DeviceId
from ..membership.entries import Role
from ..sync.layout import FOLDER_MARKER, METADATA_DIR
from ..sync.store import IndexStore
from .config import ConfigError, DeviceConfig, FolderConfig, NodeConfig, RelayConfig
from .events import EventBus
from .folders import FolderRunner
from .home import NodeHome
from .peers import Peers

log = logging.getLogger(__name__)

#: How long a folder that was asked to stop may take (its watcher's thread looks up every
#: 0.1 s; a write in progress is abandoned at once).
STOP_TIMEOUT = 10.0
#: How long a removal waits for the sessions that carried the folder to end, before it
#: forgets the folder's index (a session that is still closing would write to it).
SESSION_END_WAIT = 5.0


class Node(Protocol):
    """What these changes use of their :class:`~commonsync.node.node.Node` (its own helpers
    included: each change is checked and applied as the Node's requests are)."""

    config: NodeConfig
    runners: dict[bytes, FolderRunner]
    #: Folders offered to this device (:class:`~commonsync.node.node.PendingOffer`).
    offers: dict[bytes, Any]
    peers: Peers
    store: IndexStore
    home: NodeHome
    event_bus: EventBus
    folder_tasks: FolderTasks
    _lock: anyio.Lock
    _tasks: anyio.abc.TaskGroup | None
    _roles: dict[tuple[bytes, DeviceId], Role]
    _device_of: dict[tuple[bytes, DeviceId], bytes]

    def _find_folder(self, reference: str) -> FolderConfig: ...

    def _find_device(self, device: DeviceId | str) -> DeviceConfig: ...

    def _changed(self) -> None: ...

    async def _make_runner(self, config: FolderConfig) -> FolderRunner: ...

    async def _keep_address_book(self, runner: FolderRunner) -> None: ...

    def _check_new_folder(
        self, path: Path, label: str, *, moving: FolderConfig | None = None
    ) -> None: ...

    async def add_device(
        self, device: DeviceId | str, *, name: str = "", addresses: Sequence[str] = ()
    ) -> DeviceConfig: ...

    async def share(
        self, folder: FolderRunner | str, device: DeviceId | str, *, role: Role = Role.WRITER
    ) -> tuple[FolderConfig, DeviceConfig]: ...

    async def set_limits(
        self, device: str | None = None, *, send: int | None = None, receive: int | None = None
    ) -> dict[str, Any]: ...


# -- running one folder on its own ----------------------------------------------------------


@dataclass
class _Running:
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


class _Started:
    """A task status that tells its starter once at most (also when the folder was stopped
    before it first ran, so that nobody waits for it), and calls ``then`` when it does."""

    def __init__(self, inner: anyio.abc.TaskStatus[None], then: Callable[[], None] | None) -> None:
        self._inner = inner
        self._then = then
        self._told = False

    def started(self, value: None = None) -> None:
        if self._told:
            return
        self._told = True
        self._inner.started()
        if self._then is not None:
            self._then()


class FolderTasks:
    """Each folder of a node runs in a cancel scope of its own inside the node's task group,
    so that one folder stops (paused, moved, removed) while the others go on."""

    def __init__(self) -> None:
        self._running: dict[bytes, _Running] = {}

    async def start(
        self,
        tasks: anyio.abc.TaskGroup,
        runner: FolderRunner,
        *,
        create: bool,
        wait: bool = True,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Run ``runner`` in ``tasks``; with ``wait``, return once it first ran or failed
        (else at once). ``then`` is called at that moment (to restart sessions with it)."""
        running = _Running()
        self._running[runner.config.folder_id] = running
        if wait:
            await tasks.start(_run_folder, runner, create, running, then)
        else:
            tasks.start_soon(_run_folder, runner, create, running, then)

    def running(self, folder_id: bytes) -> bool:
        return folder_id in self._running

    async def stop(self, folder_id: bytes) -> None:
        """Stop a folder's runner and wait (bounded) until it closed its folder."""
        running = self._running.pop(folder_id, None)
        if running is None:
            return
        running.scope.cancel()
        with anyio.move_on_after(STOP_TIMEOUT):
            await running.done.wait()
            return
        log.warning("a folder did not stop within %g s; going on", STOP_TIMEOUT)


async def _run_folder(
    runner: FolderRunner,
    create: bool,
    running: _Running,
    then: Callable[[], None] | None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    started = _Started(task_status, then)
    try:
        with running.scope:
            await runner.run(create=create, task_status=started)
    finally:
        running.done.set()
    started.started()  # stopped before it first ran: its starter waits no longer


async def _start(node: Node, config: FolderConfig, *, create: bool) -> FolderRunner:
    """A new runner for ``config``, started without waiting for its first scan (a large
    folder's takes a while): the sessions with its devices start again, with it, once it
    runs (or first fails)."""
    assert node._tasks is not None, "the node is not running"
    runner = await node._make_runner(config)

    def restart_sessions() -> None:
        for device in config.devices:
            node.peers.restart(device)

    await node.folder_tasks.start(
        node._tasks, runner, create=create, wait=False, then=restart_sessions
    )
    node._tasks.start_soon(node._keep_address_book, runner)
    return runner


async def _end_sessions(node: Node, devices: list[DeviceId]) -> None:
    """Restart the sessions with ``devices`` and wait (bounded) until the old ones ended."""
    links = [link for d in devices if (link := node.peers.links.get(d)) is not None]
    for device in devices:
        node.peers.restart(device)
    with anyio.move_on_after(SESSION_END_WAIT):
        for link in links:
            await link.closed.wait()


# -- folders ----------------------------------------------------------------------------------


async def remove_folder(node: Node, reference: str) -> dict[str, Any]:
    """Stop syncing a folder and forget it: its runner, its index, its keys, its place in
    the configuration. Its files stay where they are (only the marker goes); the devices it
    was shared with are told at once, as their sessions start again without it."""
    async with node._lock:
        config = node._find_folder(reference)
        folder_id = config.folder_id
        member = await _still_member(node, node.runners.get(folder_id))
        # Stopped first (its sessions start again without it), then forgotten: a folder
        # accepted again later must not find the old index (its files, as it knew them,
        # would read as deleted). If that fails, the folder runs on as it was.
        await node.folder_tasks.stop(folder_id)
        await _end_sessions(node, list(config.devices))
        try:
            await node.store.remove_folder(folder_id)
            await anyio.to_thread.run_sync(node.home.remove_folder_keys, folder_id)
        except (CommonsyncError, OSError) as exc:
            if not config.paused:
                await _start(node, config, create=False)
            raise UnavailableError(
                f"folder {config.label} could not be forgotten: {exc}; it runs on as before",
                hint="`commonsync status` and the daemon's log say more; try again",
            ) from None
        node.config.folders.remove(config)
        node.runners.pop(folder_id, None)
        for table in (node._roles, node._device_of):
            for key in [k for k in table if k[0] == folder_id]:
                del table[key]
        node._changed()
        marker_removed = await anyio.to_thread.run_sync(_remove_marker, config.path)
    node.event_bus.publish(config.label, "removed", detail=str(config.path))
    log.info("folder %s removed (its files stay in %s)", config.label, config.path)
    return {
        "folder": config.label,
        "id": folder_id.hex(),
        "path": str(config.path),
        "files_kept": True,
        "marker_removed": marker_removed,
        "devices": [str(d) for d in config.devices],
        # Still a member in the folder's log (others list it): leaving is an admin's removal.
        "still_member": member,
    }


async def _still_member(node: Node, runner: FolderRunner | None) -> bool:
    """Whether this device is a member in the folder's log (a paused or stopped folder's
    log is not read: one that has a log is taken to count this device in)."""
    if runner is None:
        return False
    if runner.folder is not None:
        return runner.folder.members.my_role is not None
    return bool(await node.store.membership_entries(runner.config.folder_id))


def _remove_marker(root: Path) -> bool:
    """Remove the marker that makes ``root`` a commonsync folder (and the watcher's probe);
    True if there was one. Everything else stays."""
    removed = False
    for name in (FOLDER_MARKER, f"{METADATA_DIR}/watch-probe"):
        try:
            (root / name).unlink()
            removed = removed or name == FOLDER_MARKER
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", root / name, exc)
    return removed


async def move_folder(node: Node, reference: str, path: Path | str) -> dict[str, Any]:
    """Sync a folder at ``path`` from now on. Where the folder is found there (its marker:
    a person moved it), it is taken there; if ``path`` is new (or an empty directory) and the
    folder is at its old place, the directory is renamed (same file system only); if the
    folder is nowhere and never held files, it is started afresh at ``path``."""
    async with node._lock:
        config = node._find_folder(reference)
        label, old = config.label, config.path
        new = Path(os.path.abspath(Path(path).expanduser()))
        if new == old:
            raise RequestConflictError(f"folder {label} is already at {old}")
        node._check_new_folder(new, label, moving=config)
        old_exists = await anyio.to_thread.run_sync(old.exists)
        if old_exists and (new.is_relative_to(old) or old.is_relative_to(new)):
            raise RequestConflictError(
                f"{new} overlaps the folder's current place {old}",
                hint="choose a directory outside it (and not one that holds it)",
            )
        how = await _how_to_move(node, config, new)
        await node.folder_tasks.stop(config.folder_id)
        if how == "renamed":
            try:
                await anyio.to_thread.run_sync(_rename, old, new)
            except OSError as exc:
                if not config.paused:
                    await _start(node, config, create=False)
                raise _rename_error(label, old, new, exc) from None
        config.path = new
        node._changed()
        if config.paused:
            await node._make_runner(config)  # status shows it paused, at its new place
        else:
            await _start(node, config, create=how == "created")
    node.event_bus.publish(label, "moved", detail=str(new))
    log.info("folder %s: now at %s (was %s; %s)", label, new, old, how)
    return {"folder": label, "path": str(new), "was": str(old), "how": how}


async def _how_to_move(node: Node, config: FolderConfig, new: Path) -> str:
    """ "found" (the folder is at ``new``), "renamed" (it is to be renamed there) or
    "created" (started afresh there); a :class:`RequestError` when none is safe."""
    label, old = config.label, config.path
    if await anyio.to_thread.run_sync(_holds_marker, new):
        return "found"
    if not await anyio.to_thread.run_sync(_new_or_empty, new):
        raise RequestConflictError(
            f"{new} holds other files and is not folder {label} (it has no {FOLDER_MARKER})",
            hint=f"choose a new or empty directory; if you moved the folder there yourself, "
            f"move its {METADATA_DIR} directory with it",
        )
    if await anyio.to_thread.run_sync(_holds_marker, old):
        return "renamed"
    async for _files in node.store.local_files(config.folder_id, batch=1):
        raise RequestConflictError(
            f"folder {label} is neither at {old} nor at {new}, and this device had files "
            f"in it: started empty at {new}, it would send their deletion to the other devices",
            hint=f"find its files and move them, with their {METADATA_DIR} directory, to "
            f"{new}, then run this again; or, to sync it afresh at {new} from the other "
            f"devices: `commonsync folder remove {label}` and accept it again",
        )
    return "created"


def _holds_marker(root: Path) -> bool:
    return (root / FOLDER_MARKER).is_file()


def _new_or_empty(path: Path) -> bool:
    try:
        return not any(path.iterdir())
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


def _rename(old: Path, new: Path) -> None:
    new.parent.mkdir(parents=True, exist_ok=True)
    os.rename(old, new)  # onto an empty directory too (POSIX), never onto anything else


def _rename_error(label: str, old: Path, new: Path, exc: OSError) -> RequestError:
    if exc.errno == errno.EXDEV:
        return RequestConflictError(
            f"{new} is on another file system than {old}: commonsync moves a folder only by "
            "renaming it (instant, nothing copied)",
            hint=f"move it yourself (`mv {old} {new}`: the folder shows an error meanwhile), "
            f"then run `commonsync folder move {label} {new}` again",
        )
    return RequestConflictError(
        f"cannot move {old} to {new}: {exc.strerror or exc}; the folder stays at {old}"
    )


async def pause_folder(node: Node, reference: str) -> dict[str, Any]:
    """Stop scanning and exchanging a folder until :func:`resume_folder`; kept in the
    configuration. Its sessions start again without it."""
    async with node._lock:
        config = node._find_folder(reference)
        if config.paused:
            raise RequestConflictError(
                f"folder {config.label} is already paused",
                hint=f"resume it with `commonsync folder resume {config.label}`",
            )
        config.paused = True
        node._changed()
        await node.folder_tasks.stop(config.folder_id)
        await _end_sessions(node, list(config.devices))
    node.event_bus.publish(config.label, "paused")
    log.info("folder %s paused", config.label)
    return {"folder": config.label, "paused": True}


async def resume_folder(node: Node, reference: str) -> dict[str, Any]:
    """Scan and exchange a paused folder again (its sessions start again, with it)."""
    async with node._lock:
        config = node._find_folder(reference)
        if not config.paused:
            raise RequestConflictError(f"folder {config.label} is not paused")
        config.paused = False
        node._changed()
        await _start(node, config, create=False)
    node.event_bus.publish(config.label, "resumed")
    log.info("folder %s resumed", config.label)
    return {"folder": config.label, "paused": False}


# -- devices ----------------------------------------------------------------------------------


def _shown(device: DeviceConfig) -> str:
    return f"{device.name} ({device.device_id.short_str})" if device.name else str(device.device_id)


async def _member_of(node: Node, config: FolderConfig, device: DeviceConfig) -> str | None:
    """The member of ``config``'s membership log whose device ``device`` is (its name), or
    None; :class:`UnavailableError` if the folder has a log that cannot be read now."""
    runner = node.runners.get(config.folder_id)
    folder = runner.folder if runner is not None else None
    if folder is None:
        if await node.store.membership_entries(config.folder_id):
            raise UnavailableError(
                f"folder {config.label} is not running, so whether {_shown(device)} is one of "
                "its members cannot be checked",
                hint=f"resume it (or repair it: `commonsync status`) first; folder "
                f"{config.label} is {'paused' if config.paused else 'not running'}",
            )
        return None
    state = folder.members.state
    if state is None:
        return None
    for member in state.members.values():
        if any(DeviceId.from_public_key(k) == device.device_id for k in member.devices):
            return member.name
    return None


def _members_refusal(
    config: FolderConfig, device: DeviceConfig, member: str, reference: str, what: str
) -> RequestConflictError:
    shown = _shown(device)
    return RequestConflictError(
        f"{shown} is a device of {member}, a member of folder {config.label}: the folder's "
        f"membership log has every member's device sync it, so {what} would be undone and "
        "would revoke nothing",
        hint=f"to revoke access: `commonsync member remove {config.label} {member}` (or "
        f"`commonsync device lost {config.label} {device.device_id.short_str}` for this "
        f"device only); to stop syncing with it from this device: `commonsync device pause "
        f"{reference}`",
    )


async def remove_device(node: Node, reference: str) -> dict[str, Any]:
    """Forget a device: it is unshared from every folder, its session ends and it is no
    longer dialled; if it connects again it is listed as waiting, as any stranger.
    Refused for a member's device of a folder with a membership log (see the module)."""
    async with node._lock:
        device = node._find_device(reference)
        device_id = device.device_id
        folders = node.config.folders_shared_with(device_id)
        for config in folders:
            member = await _member_of(node, config, device)
            if member is not None:
                raise _members_refusal(config, device, member, reference, "removing it here")
        for config in folders:
            config.devices.remove(device_id)
        node.config.devices.remove(device)
        for table in (node._roles, node._device_of):
            for key in [k for k in table if k[1] == device_id]:
                del table[key]
        for folder_id, offer in list(node.offers.items()):
            offer.offered_by.discard(device_id)
            if not offer.offered_by:
                del node.offers[folder_id]
        node._changed()
    node.peers.forget(device_id)
    node.event_bus.publish("", "device removed", peer=str(device_id))
    log.info("device %s removed", device_id.short_str)
    return {
        "device": str(device_id),
        "name": device.name,
        "unshared": [f.label for f in folders],
    }


async def pause_device(node: Node, reference: str) -> dict[str, Any]:
    """Stop syncing with a device until :func:`resume_device`: not dialled, its connections
    refused (it is not listed as waiting); kept in the configuration."""
    async with node._lock:
        device = node._find_device(reference)
        if device.paused:
            raise RequestConflictError(
                f"device {_shown(device)} is already paused",
                hint=f"resume it with `commonsync device resume {reference}`",
            )
        device.paused = True
        node._changed()
    await _end_sessions(node, [device.device_id])
    node.event_bus.publish("", "device paused", peer=str(device.device_id))
    return {"device": str(device.device_id), "name": device.name, "paused": True}


async def resume_device(node: Node, reference: str) -> dict[str, Any]:
    """Sync with a paused device again (dialled at once)."""
    async with node._lock:
        device = node._find_device(reference)
        if not device.paused:
            raise RequestConflictError(f"device {_shown(device)} is not paused")
        device.paused = False
        node._changed()
    node.peers.dial(device.device_id)
    node.event_bus.publish("", "device resumed", peer=str(device.device_id))
    return {"device": str(device.device_id), "name": device.name, "paused": False}


async def rename_device(node: Node, reference: str, name: str) -> dict[str, Any]:
    """Give a known device another name here (names are references in commands: two
    devices may not share one)."""
    name = name.strip()
    if not name:
        raise InvalidRequestError("a device's name cannot be empty")
    async with node._lock:
        device = node._find_device(reference)
        if device.name == name:
            raise RequestConflictError(f"device {device.device_id.short_str} is already {name!r}")
        clash = next((d for d in node.config.devices if d.name == name and d is not device), None)
        if clash is not None:
            raise RequestConflictError(
                f"device {clash.device_id.short_str} is already called {name!r}",
                hint="choose another name: commands take names as references",
            )
        old, device.name = device.name, name
        node._changed()
    return {"device": str(device.device_id), "name": name, "was": old}


async def unshare(node: Node, folder: str, reference: str) -> dict[str, Any]:
    """Stop syncing a folder with one device (its session starts again without it), or
    withdraw an offer it has not accepted yet. Refused for a member's device of a folder
    with a membership log (see the module)."""
    async with node._lock:
        config = node._find_folder(folder)
        device = node._find_device(reference)
        device_id = device.device_id
        if device_id not in config.devices:
            raise NotFoundError(
                f"folder {config.label} is not shared with {_shown(device)}",
                hint="`commonsync device list` shows which folders each device has",
            )
        member = await _member_of(node, config, device)
        if member is not None:
            raise _members_refusal(config, device, member, reference, "unsharing it")
        config.devices.remove(device_id)
        node._roles.pop((config.folder_id, device_id), None)
        node._device_of.pop((config.folder_id, device_id), None)
        node._changed()
    await _end_sessions(node, [device_id])
    node.event_bus.publish(config.label, "unshared", peer=str(device_id))
    return {"folder": config.label, "device": str(device_id), "name": device.name}


# -- a configuration edited by hand -------------------------------------------------------


#: The parts of a configuration :func:`reconfigure` applies one change at a time; any other
#: setting (the port, discovery, scan settings) is kept and applies at the next start.
APPLIED_LIVE = ("devices", "folders", "relays", "max_send_rate", "max_receive_rate")
#: What applies a change (a request to the node), given as a sentence and its coroutine.
Attempt = Callable[[str, Awaitable[object]], Awaitable[None]]


@dataclass
class Reconfigured:
    """What :func:`reconfigure` did: ``applied`` and ``refused`` changes, a sentence each
    (a refused one says why, as the command for it would)."""

    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


async def reconfigure(node: Node, new: NodeConfig) -> Reconfigured:
    """Make the running node's configuration ``new`` (a file edited by hand, read again),
    change by change, each through the same request a command makes, so that each is
    checked as that command checks it. Nothing of a change that is refused is applied; the
    others are. A folder added by hand whose key this device does not hold is refused."""
    done = Reconfigured()
    old = node.config

    async def attempt(what: str, change: Awaitable[object]) -> None:
        try:
            await change
        except (RequestError, ConfigError) as exc:
            hint = getattr(exc, "hint", "")
            done.refused.append(f"{what}: {exc}" + (f" ({hint})" if hint else ""))
        else:
            done.applied.append(what)

    for setting in dataclasses.fields(NodeConfig):
        name = setting.name
        if name not in APPLIED_LIVE and getattr(new, name) != getattr(old, name):
            setattr(old, name, getattr(new, name))
            done.applied.append(f"{name} (applies when the daemon starts again)")
    rates = (new.max_send_rate, new.max_receive_rate)
    if rates != (old.max_send_rate, old.max_receive_rate):
        limits = node.set_limits(None, send=rates[0], receive=rates[1])
        await attempt("bandwidth limits", limits)
    await _reconfigure_relays(node, new, done)
    # Devices first (a folder may name a device added by hand), then folders, then the
    # devices removed (once no folder names them).
    for device in new.devices:
        known = old.device(device.device_id)
        if known is None:
            await attempt(
                f"device {device.device_id.short_str} added",
                node.add_device(device.device_id, name=device.name, addresses=device.addresses),
            )
            known = old.device(device.device_id)
            if known is None:
                continue
        ref = str(device.device_id)
        if device.name and device.name != known.name:
            await attempt(f"device {ref[:7]} renamed", rename_device(node, ref, device.name))
        if device.addresses != known.addresses:
            known.addresses = list(device.addresses)
            node._changed()
            node.peers.dial(known.device_id)
            done.applied.append(f"device {ref[:7]}: addresses")
        if device.paused != known.paused:
            change = pause_device(node, ref) if device.paused else resume_device(node, ref)
            await attempt(f"device {ref[:7]} {'paused' if device.paused else 'resumed'}", change)
        rates = (device.max_send_rate, device.max_receive_rate)
        if rates != (known.max_send_rate, known.max_receive_rate):
            limits = node.set_limits(ref, send=rates[0], receive=rates[1])
            await attempt(f"device {ref[:7]}: bandwidth limits", limits)
    for folder in list(old.folders):
        if new.folder(folder.folder_id) is None:
            removal = remove_folder(node, folder.folder_id.hex())
            await attempt(f"folder {folder.label} removed", removal)
    for folder in new.folders:
        await _reconfigure_folder(node, folder, attempt)
    wanted = {d.device_id for d in new.devices}
    for device in list(old.devices):
        if device.device_id not in wanted:
            ref = str(device.device_id)
            await attempt(f"device {ref[:7]} removed", remove_device(node, ref))
    return done


async def _reconfigure_relays(node: Node, new: NodeConfig, done: Reconfigured) -> None:
    old = node.config
    applied = len(done.applied)
    for relay in new.relays:
        known = old.relay(relay.relay_id)
        if known is None or known.address != relay.address:
            if known is None:
                old.relays.append(RelayConfig(relay.relay_id, relay.address))
            else:
                known.address = relay.address
            node.peers.relays.update(old.relay(relay.relay_id) or relay)
            done.applied.append(f"relay {relay.relay_id.short_str}")
    wanted = {r.relay_id for r in new.relays}
    gone = [r for r in old.relays if r.relay_id not in wanted]
    for relay in gone:
        old.relays.remove(relay)  # the list RelayLinks reads: mutated, never replaced
        link = node.peers.relays.links.pop(relay.relay_id, None)
        if link is not None:
            link.scope.cancel()
        done.applied.append(f"relay {relay.relay_id.short_str} removed")
    if len(done.applied) > applied:
        node._changed()


async def _reconfigure_folder(node: Node, new: FolderConfig, attempt: Attempt) -> None:
    config = node.config.folder(new.folder_id)
    if config is None:
        await attempt(f"folder {new.label} added", _add_folder(node, new))
        return
    what = f"folder {config.label}"
    ref = config.folder_id.hex()  # exact, whatever the label becomes
    if new.label != config.label:
        await attempt(f"{what} relabelled {new.label}", _relabel(node, config, new.label))
    if new.path != config.path:
        await attempt(f"{what} moved to {new.path}", move_folder(node, ref, new.path))
    for device in new.devices:
        if device not in config.devices:
            shared = node.share(ref, device)
            await attempt(f"{what} shared with {device.short_str}", shared)
    for device in list(config.devices):
        if device not in new.devices:
            unshared = unshare(node, ref, str(device))
            await attempt(f"{what} unshared from {device.short_str}", unshared)
    if new.versions != config.versions:
        config.versions = new.versions
        node._changed()
    if new.paused != config.paused:
        change = pause_folder if new.paused else resume_folder
        await attempt(f"{what} {'paused' if new.paused else 'resumed'}", change(node, ref))


async def _relabel(node: Node, config: FolderConfig, label: str) -> None:
    async with node._lock:
        if not label:
            raise InvalidRequestError("a folder needs a label")
        if any(f.label == label for f in node.config.folders if f is not config):
            raise RequestConflictError(f"a folder is already labelled {label!r}")
        config.label = label
        node._changed()


async def _add_folder(node: Node, new: FolderConfig) -> None:
    """A folder entry written by hand: its key must be in this device's home already."""
    async with node._lock:
        path = Path(os.path.abspath(new.path.expanduser()))
        node._check_new_folder(path, new.label)
        unknown = [d.short_str for d in new.devices if node.config.device(d) is None]
        if unknown:
            raise NotFoundError(f"it names devices this device does not know: {unknown}")
        config = FolderConfig(new.folder_id, new.label, path, list(new.devices), new.versions)
        config.paused = new.paused
        try:
            await anyio.to_thread.run_sync(node.home.load_folder_key, config.folder_id)
        except (CommonsyncError, OSError) as exc:
            raise ConfigError(str(exc)) from None
        node.config.folders.append(config)
        node._changed()
        if config.paused:
            await node._make_runner(config)
            return
        # A new or empty directory is set up; one with files and no marker is not taken
        # for the folder (it shows in error until its marker is there).
        fresh = not _holds_marker(path) and _new_or_empty(path)
        await _start(node, config, create=fresh)
