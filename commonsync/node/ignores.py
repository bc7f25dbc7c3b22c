"""A folder's ignore rules as a person changes them: ``commonsync ignore add/list/remove``.

Two kinds, because people want both (SPEC.md §13, "Ignore rules"):

- **for the whole folder**: a pattern in ``.csignore``, an ordinary synced file. Changing it is
  an edit like any other, published to every member: so only a member that may write (a
  writer, an admin, an owner) can change it, and a reader's device refuses to (its edit would
  stay on its own disk and only mislead its owner);
- **for this device only** (selective sync: "not the videos on my phone"): a pattern in
  ``.commonsync/ignore-local``, never synced. The device neither publishes nor writes what it
  ignores, and its peers see no deletion: the index keeps the versions they announce, and
  removing the rule brings the files back.

Each change is applied at once: the folder is scanned again (publishing the new
``.csignore``, and taking the new rules for what is fetched).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio.to_thread

from ..errors import (
    CommonsyncError,
    IgnoreFileError,
    InvalidRequestError,
    RequestConflictError,
)
from ..membership.entries import Role
from ..sync import ignore
from .folders import FolderRunner

__all__ = ["add", "listing", "remove"]


async def listing(runner: FolderRunner) -> dict[str, Any]:
    """The folder's patterns, for the whole folder and for this device (JSON-ready)."""
    try:
        rules = await anyio.to_thread.run_sync(ignore.list_rules, runner.root)
    except IgnoreFileError as exc:
        raise RequestConflictError(str(exc), hint="fix or remove the file") from None
    return {
        "folder": runner.label,
        "path": str(runner.root),
        "folder_rules": list(rules.folder),
        "this_device": list(rules.this_device),
        "ignored": runner.last_scan.report.ignored if runner.last_scan is not None else 0,
    }


async def add(runner: FolderRunner, pattern: str, *, this_device: bool) -> dict[str, Any]:
    """Add ``pattern`` for the folder (``.csignore``) or for this device only, and apply it."""
    if not this_device:
        _check_may_write(runner)
    try:
        added = await anyio.to_thread.run_sync(
            partial(ignore.add_rule, runner.root, pattern, this_device=this_device)
        )
    except IgnoreFileError as exc:
        raise InvalidRequestError(str(exc)) from None
    if not added:
        raise RequestConflictError(
            f"{pattern!r} is already a rule {_where(this_device)} of folder {runner.label}",
            hint=f"`commonsync ignore list {runner.label}` shows them",
        )
    return await _applied(runner, pattern, this_device, "added")


async def remove(runner: FolderRunner, pattern: str, *, this_device: bool) -> dict[str, Any]:
    """Remove ``pattern`` from the folder's rules (or this device's), and apply it: what it
    ignored is published (and, for this device's rules, fetched) again."""
    if not this_device:
        _check_may_write(runner)
    try:
        removed = await anyio.to_thread.run_sync(
            partial(ignore.remove_rule, runner.root, pattern, this_device=this_device)
        )
        other = await anyio.to_thread.run_sync(ignore.list_rules, runner.root)
    except IgnoreFileError as exc:
        raise InvalidRequestError(str(exc)) from None
    if not removed:
        there = other.folder if this_device else other.this_device
        hint = f"`commonsync ignore list {runner.label}` shows them"
        if pattern.strip() in there:
            flag = "without --this-device" if this_device else "with --this-device"
            hint = f"it is a rule {_where(not this_device)}: remove it {flag}"
        raise RequestConflictError(
            f"{pattern!r} is not a rule {_where(this_device)} of folder {runner.label}",
            hint=hint,
        )
    return await _applied(runner, pattern, this_device, "removed")


async def _applied(
    runner: FolderRunner, pattern: str, this_device: bool, done: str
) -> dict[str, Any]:
    """Scan at once so that the change applies now; a folder that cannot scan now takes it
    at its next scan (the answer says so)."""
    scanned = True
    try:
        await runner.rescan()
    except CommonsyncError:
        scanned = False
    return {
        "folder": runner.label,
        "pattern": pattern.strip(),
        "this_device": this_device,
        done: True,
        "applied": scanned,
        **{k: v for k, v in (await listing(runner)).items() if k != "folder"},
    }


def _where(this_device: bool) -> str:
    return "of this device" if this_device else "for the whole folder"


def _check_may_write(runner: FolderRunner) -> None:
    """``.csignore`` is a synced file: a reader's edit of it reaches nobody."""
    folder = runner.folder
    if folder is None or folder.members.state is None:
        return  # not running (the file is edited all the same), or no roles: anyone writes
    role = folder.members.my_role
    if role is None or role < Role.WRITER:
        being = "not a member" if role is None else "a reader"
        raise RequestConflictError(
            f"this device is {being} of folder {runner.label}: a change to its .csignore "
            "would not reach the other devices",
            hint="add --this-device for a rule on this device only, or ask a writer",
        )
