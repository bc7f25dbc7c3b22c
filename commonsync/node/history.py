"""Versions and conflicts of a running folder, as a person asks for them: list, restore,
resolve, prune (the :class:`~commonsync.node.node.Node` methods of the same names call these).

The file work is :mod:`commonsync.sync.history`'s; this module adds what makes it a request:
the folder must be running (its disk there), the path is checked to be inside it, a reader is
refused (its edits are not shared, so a restore would only diverge from the other devices),
and the folder is scanned right after, so that what changed is published as a new version,
through the same scan as any edit a person makes. Answers are JSON-ready dicts; a request that
cannot be done raises a :class:`~commonsync.errors.RequestError` with a sentence and a hint.

:func:`prune_periodically` applies each folder's retention policy
(:class:`~commonsync.sync.retention.RetentionPolicy`, in its
:class:`~commonsync.node.config.FolderConfig`) every hour; the daemon runs it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from ..errors import (
    CommonsyncError,
    InvalidRequestError,
    NotFoundError,
    RequestConflictError,
    UnavailableError,
)
from ..formats.device_id import DeviceId
from ..membership.log import MembershipLog, State
from ..sync.folder import Folder
from ..sync.history import (
    ConflictCopy,
    Keep,
    VersionEntry,
    conflict_original,
    delete_versions,
    find_conflicts,
    list_versions,
    relative_path,
    resolve_conflict,
    restore_version,
)
from ..sync.retention import plan_pruning
from ..sync.store import IndexStore
from .folders import FolderRunner
from .problems import who

__all__ = [
    "PRUNE_INTERVAL",
    "conflicts",
    "parse_time",
    "prune",
    "prune_periodically",
    "resolve",
    "restore",
    "versions",
]

log = logging.getLogger(__name__)

#: How often the daemon applies each folder's retention policy (seconds), and how long after
#: it starts it first does (so that starting is not slowed by it).
PRUNE_INTERVAL = 3600.0
FIRST_PRUNE = 60.0

_SECOND_NS = 1_000_000_000
_STAMP = re.compile(r"(\d{8})-(\d{6})")


# -- versions ---------------------------------------------------------------------------------


async def versions(
    runner: FolderRunner, path: str | None = None, cwd: str | None = None
) -> list[dict[str, Any]]:
    """The kept versions of ``path`` in the folder (all paths if None), oldest first; a
    relative ``path`` is taken from ``cwd`` if that is inside the folder, else from its
    root (as for every request here)."""
    _running(runner)
    found = await list_versions(runner.root)
    if path is not None:
        wanted = relative_path(runner.root, path, cwd)
        found = [v for v in found if v.path == wanted]
    return [_version(v) for v in found]


async def restore(
    runner: FolderRunner, path: str, at: str | float | None, me: bytes, cwd: str | None = None
) -> dict[str, Any]:
    """Put a kept version of ``path`` back (the newest, or the one kept at ``at``: see
    :func:`parse_time`) and publish it as a new edit; what is there now is kept first."""
    folder = _running(runner)
    _check_writer(runner, folder, me, "restore a version")
    wanted = relative_path(runner.root, path, cwd)
    kept = [v for v in await list_versions(runner.root) if v.path == wanted]
    if not kept:
        raise NotFoundError(
            f"no version of {wanted!r} is kept in folder {runner.label}",
            hint=f"`commonsync versions list {runner.label}` shows what is kept",
        )
    chosen = _pick(kept, at, runner.label)
    set_aside = await restore_version(runner.root, chosen, time.time_ns())
    not_sent = await _publish(runner)
    log.info("folder %s: restored %s as kept at %s", runner.label, wanted, _iso(chosen.time_ns))
    return {
        "folder": runner.label,
        "path": wanted,
        "restored": _version(chosen),
        "set_aside": set_aside,
        "not_sent_yet": not_sent,
    }


def _pick(kept: list[VersionEntry], at: str | float | None, label: str) -> VersionEntry:
    if at is None or at == "":
        return max(kept, key=lambda v: (v.time_ns, v.name))
    if isinstance(at, str) and (byname := [v for v in kept if v.name == at.strip()]):
        return byname[0]
    start, length = parse_time(at)
    matching = [v for v in kept if start <= v.time_ns < start + length]
    if matching:
        return max(matching, key=lambda v: (v.time_ns, v.name))
    times = ", ".join(_local(v.time_ns) for v in kept[-5:])
    raise NotFoundError(
        f"no version of {kept[0].path!r} was kept at {at} in folder {label}; kept at: {times}",
        hint="give one of these times (or none, for the newest)",
    )


def parse_time(text: str | float) -> tuple[int, int]:
    """A time a person gives for a version: ``(start, length)`` in ns, the span it names.

    ``2026-12-07 10:30:00`` (or with a ``T``, a zone, ``Z``; without a zone it is local
    time, as ``versions list`` prints it) names that second; ``2026-12-07 10:30`` that minute;
    ``2026-12-07`` that day; ``20261207-103000`` (a version's stamp) that second in UTC; a
    number, seconds since the epoch (as ``--json`` gives ``time``)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return int(text) * _SECOND_NS, _SECOND_NS
    if not isinstance(text, str):
        raise InvalidRequestError("a version's time is a string or a number")
    cleaned = text.strip()
    stamp = _STAMP.fullmatch(cleaned)
    try:
        if stamp is not None:
            moment = datetime.strptime(cleaned, "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
            return int(moment.timestamp()) * _SECOND_NS, _SECOND_NS
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise InvalidRequestError(
            f"{text!r} is not a time",
            hint='write it as versions list prints it, like "2026-12-07 10:30:00"',
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    if re.search(r"\d:\d\d:\d\d", cleaned):
        span = timedelta(seconds=1)
    elif re.search(r"\d:\d\d", cleaned):
        span = timedelta(minutes=1)
    elif re.search(r"[T ]\d\d", cleaned):
        span = timedelta(hours=1)
    else:
        span = timedelta(days=1)
    moment = moment.replace(microsecond=0)
    return int(moment.timestamp()) * _SECOND_NS, int(span.total_seconds()) * _SECOND_NS


async def prune(runner: FolderRunner, store: IndexStore, now_ns: int) -> dict[str, Any]:
    """Apply the folder's retention policy now: delete the versions it does not keep."""
    _running(runner)
    policy = runner.config.versions
    kept = await list_versions(runner.root)
    folder_size = 0
    if policy.cap(0) is not None:
        async for page in store.local_files(runner.config.folder_id):
            folder_size += sum(state.size for _, state in page)
    plan = plan_pruning([v.kept for v in kept], now_ns, policy, folder_size)
    deleted = await delete_versions(runner.root, plan)
    freed = sum(v.size for v in kept if v.name in plan)
    if deleted:
        log.info(
            "folder %s: pruned %d old versions (%d bytes) under its policy (%s)",
            runner.label,
            deleted,
            freed,
            policy.describe(),
        )
    return {
        "folder": runner.label,
        "policy": policy.describe(),
        "deleted": deleted,
        "bytes_freed": freed,
        "kept": len(kept) - deleted,
        "bytes_kept": sum(v.size for v in kept) - freed,
    }


async def prune_periodically(
    runners: Mapping[bytes, FolderRunner],
    store: IndexStore,
    *,
    interval: float = PRUNE_INTERVAL,
    first: float = FIRST_PRUNE,
) -> None:
    """Prune the versions of every running folder among ``runners`` (a Node's, looked at
    anew each round) after ``first`` seconds, then every ``interval``, until cancelled. A
    folder that cannot be pruned now (its disk away) is skipped until the next round; an
    error is logged, never raised."""
    await anyio.sleep(first)
    while True:
        for runner in list(runners.values()):
            if runner.folder is None:
                continue
            try:
                await prune(runner, store, time.time_ns())
            except (CommonsyncError, OSError) as exc:
                log.warning("folder %s: its old versions were not pruned: %s", runner.label, exc)
        await anyio.sleep(interval)


# -- conflicts --------------------------------------------------------------------------------


async def conflicts(runner: FolderRunner) -> list[dict[str, Any]]:
    """The conflict copies in the folder, each with the device that recorded it where the
    index knows one (``recorded_by``).

    A copy's name carries no device (SPEC.md §13: a tag of the losing content, since the
    losing version may be another device's recorded outcome), so the only device that is
    known is the author of the index's current version of the copy: a device that kept the
    losing edit, the one that made it or one that resolved the conflict (or two concurrent
    versions of the copy), so not necessarily whose edit it is. None while the copy has no
    version yet (not scanned), or when its version is a deletion (the file is back, not yet
    scanned)."""
    folder = _running(runner)
    found = await find_conflicts(runner.root)
    stored = await folder.store.get_many(folder.folder_id, [c.path for c in found])
    members = folder.members
    answer = []
    for copy in found:
        entry = stored.get(copy.path)
        author = None if entry is None or entry.record.deleted else entry.record.author
        answer.append(_conflict(copy, members.state, members.log, author))
    return answer


async def resolve(
    runner: FolderRunner, path: str, keep: Keep | str, me: bytes, cwd: str | None = None
) -> dict[str, Any]:
    """Resolve the conflicts of ``path`` (a file with conflict copies, or one copy), keeping
    ``keep`` (see :class:`~commonsync.sync.history.Keep`), and publish the outcome.

    ``mine``: every copy of the file goes to the versions folder; ``theirs``: the copy
    replaces the file, which goes to the versions folder (a file with several copies needs
    the copy named); ``both``: each copy gets a plain name beside the file."""
    folder = _running(runner)
    choice = _keep(keep)
    _check_writer(runner, folder, me, "resolve a conflict")
    wanted = relative_path(runner.root, path, cwd)
    found = await find_conflicts(runner.root)
    if conflict_original(wanted) is not None:
        chosen = [c for c in found if c.path == wanted]
        if not chosen:
            raise NotFoundError(
                f"there is no conflict copy {wanted!r} in folder {runner.label}",
                hint=f"`commonsync conflicts list {runner.label}` shows them",
            )
    else:
        chosen = [c for c in found if c.original == wanted]
        if not chosen:
            raise NotFoundError(
                f"{wanted!r} has no conflict copy in folder {runner.label}",
                hint=f"`commonsync conflicts list {runner.label}` shows the conflicts",
            )
        if choice is Keep.THEIRS and len(chosen) > 1:
            copies = ", ".join(c.path for c in chosen)
            raise RequestConflictError(
                f"{wanted!r} has {len(chosen)} conflict copies ({copies}): which one replaces it?",
                hint=f"name that copy: commonsync conflicts resolve {runner.label} COPY "
                "--keep theirs",
            )
    now = time.time_ns()
    done = [await resolve_conflict(runner.root, c.path, choice, now) for c in chosen]
    not_sent = await _publish(runner)
    log.info("folder %s: resolved the conflict of %s (%s)", runner.label, wanted, choice.value)
    return {
        "folder": runner.label,
        "path": chosen[0].original,
        "keep": choice.value,
        "copies": [c.path for c in chosen],
        "versions": [d["versions"] for d in done if d.get("versions")],
        "renamed": [d["renamed"] for d in done if d.get("renamed")],
        "not_sent_yet": not_sent,
    }


def _keep(keep: Keep | str) -> Keep:
    if isinstance(keep, Keep):
        return keep
    try:
        return Keep(str(keep).lower())
    except ValueError:
        raise InvalidRequestError(
            f"{keep!r} is not a way to resolve a conflict", hint="keep mine, theirs or both"
        ) from None


# -- common -----------------------------------------------------------------------------------


async def _publish(runner: FolderRunner) -> str:
    """Scan the folder now, so that what was just changed goes out as a new version; ""
    when it did, else why not yet (a scan that cannot run now, say deletions held for
    confirmation: the change is on disk, and the next scan that runs publishes it)."""
    try:
        await runner.rescan()
    except UnavailableError as exc:
        return f"{exc}; {exc.hint}" if exc.hint else str(exc)
    return ""


def _running(runner: FolderRunner) -> Folder:
    folder = runner.folder
    if folder is None:
        why = f": {runner.error}" if runner.error else " (it is starting)"
        raise UnavailableError(
            f"folder {runner.label} is not running{why}",
            hint=runner.hint or "try again in a moment; `commonsync status` shows it",
        )
    return folder


def _check_writer(runner: FolderRunner, folder: Folder, me: bytes, what: str) -> None:
    """Refuse a reader (or a removed member): its edits are not shared, so the change would
    stay on this device and leave it out of step with the others."""
    members = folder.members
    if members.state is None or members.may_author(me, 2**63 - 1):
        return
    role = members.my_role
    being = f"a {role.name.lower()}" if role is not None else "no longer a member"
    raise RequestConflictError(
        f"cannot {what} in folder {runner.label}: this device is {being} of it, and its "
        "edits are not shared with the other devices",
        hint="ask a writer of the folder to do it, or an admin to make you a writer",
    )


def _version(v: VersionEntry) -> dict[str, Any]:
    return {
        "path": v.path,
        "name": v.name,
        "time": v.time_ns // _SECOND_NS,
        "kept_at": _iso(v.time_ns),
        "local_time": _local(v.time_ns),
        "size": v.size,
        "why": v.why,
    }


def _conflict(
    c: ConflictCopy, state: State | None, log_: MembershipLog | None, author: bytes | None
) -> dict[str, Any]:
    recorded_by = None
    if author is not None:
        recorded_by = {
            "device": DeviceId.from_public_key(author).short_str,
            "name": who(state, log_, author),
        }
    return {
        "path": c.path,
        "original": c.original,
        "tag": c.tag,
        "recorded_by": recorded_by,
        "time": c.time_ns // _SECOND_NS,
        "modified_at": _iso(c.time_ns),
        "local_time": _local(c.time_ns),
        "size": c.size,
        "original_exists": c.original_exists,
    }


def _iso(time_ns: int) -> str:
    moment = datetime.fromtimestamp(time_ns // _SECOND_NS, tz=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _local(time_ns: int) -> str:
    """As ``versions list`` prints a time, and ``--at`` reads it back (local time)."""
    return datetime.fromtimestamp(time_ns // _SECOND_NS).strftime("%Y-%m-%d %H:%M:%S")
