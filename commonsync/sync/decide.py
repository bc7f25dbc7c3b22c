"""What to do with a remote version of a path: the sync engine's decisions, and nothing else.

Pure functions over records, no I/O, so that the same inputs give the same answer on every
device: that is what makes devices converge without talking to each other about conflicts.
SPEC.md ("Sync decisions") states the rules; this module is their reference.

For one path, with our current record ``local`` (or none) and a ``remote`` one:

1. No local record: take the remote one.
2. One version vector dominates: the newer version is kept everywhere.
3. Concurrent, a deletion against an edit: the edit wins. Nothing is lost to a delete (this
   comes before 4: a file deleted on one side and re-created with the same content on the
   other must survive).
4. Concurrent vectors, but one version says it replaced exactly the other's content
   (``previous``): the replacing one wins. Vectors look concurrent after a device lost its
   index, though nothing conflicts.
5. Concurrent, same content: no conflict; both adopt the same record (the rule of 6 picks
   which), so that the indexes converge too.
6. Otherwise a conflict. The version with the later mtime wins; ties go to the larger author
   key, then to the larger content digest. The device that *authored* the losing version keeps
   it as a conflict copy (:func:`commonsync.sync.layout.conflict_name`, the same name everywhere);
   any other device that holds it on disk moves it to its versions folder when it takes the
   winner, since its author will publish the copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import VersionVectorError
from ..formats.device_id import DeviceId
from ..formats.records import Record
from ..formats.versionvector import Ordering, check_received
from . import layout

#: Why a record that names the engine's own files is refused (SPEC.md §13).
REFUSED_INTERNAL = "it names commonsync's own files (.commonsync/ or a temporary file)"


class Action(enum.Enum):
    #: Our record stays; the remote version is older or loses.
    KEEP = "keep"
    #: Adopt the remote record, and make the disk match it.
    TAKE = "take"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: A real conflict (rule 6) was resolved, whichever side won.
    conflict: bool = False
    #: Set when our own losing version must be kept: move our file here before taking the
    #: winner, and publish it as a new file.
    conflict_copy: str | None = None
    #: Why, in words, for logs and events.
    reason: str = ""


def refusal(remote: Record, *, me: int, now_seconds: int) -> str | None:
    """Why ``remote`` must be refused outright, before any decision, or None (SPEC.md §13):
    it would write into the engine's own files, or its version vector is one this device must
    not take (:func:`commonsync.formats.versionvector.check_received`; ``me`` is this device's short
    ID). A refused record is not stored, so it is neither retried nor forwarded."""
    if layout.reaches_internal(remote.path):
        return REFUSED_INTERNAL
    try:
        check_received(remote.version, me=me, now_seconds=now_seconds)
    except VersionVectorError as exc:
        return str(exc)
    return None


def decide(local: Record | None, remote: Record, *, me: bytes) -> Decision:
    """The decision for ``remote`` against our current ``local`` record of the same path.

    ``me`` is this device's public key (to know whose edit a losing local version is).
    """
    if local is None:
        return Decision(Action.TAKE, reason="new path")
    if local.path != remote.path:
        raise ValueError("decide() compares two versions of the same path")
    ordering = remote.version.compare(local.version)
    if ordering is Ordering.AFTER:
        return Decision(Action.TAKE, reason="remote is newer")
    if ordering is Ordering.BEFORE:
        return Decision(Action.KEEP, reason="local is newer")
    if ordering is Ordering.EQUAL and remote == local:
        return Decision(Action.KEEP, reason="same version")

    if remote.deleted != local.deleted:
        action = Action.KEEP if remote.deleted else Action.TAKE
        return Decision(action, reason="an edit wins over a concurrent deletion")
    local_content, remote_content = local.content_digest(), remote.content_digest()
    if remote.previous == local_content and local.previous != remote_content:
        return Decision(Action.TAKE, reason="remote replaced exactly our content")
    if local.previous == remote_content and remote.previous != local_content:
        return Decision(Action.KEEP, reason="local replaced exactly the remote content")
    if local_content == remote_content:
        action = Action.TAKE if wins(remote, local) else Action.KEEP
        return Decision(action, reason="same content, concurrent versions")

    if not wins(remote, local):
        return Decision(Action.KEEP, conflict=True, reason="conflict: local version wins")
    copy = None
    if local.author == me and not local.deleted:
        copy = conflict_copy_path(local)
        if copy == local.path:
            # A conflict on a conflict copy whose losing version carries the copy's own mark:
            # it cannot be renamed to itself, so it is kept as every other replaced version
            # is, in the versions folder.
            copy = None
    return Decision(Action.TAKE, conflict=True, conflict_copy=copy, reason="conflict: remote wins")


def wins(a: Record, b: Record) -> bool:
    """Whether version ``a`` beats concurrent version ``b`` (rule 6): later mtime, then the
    larger author key, then the larger content digest. A total order, the same everywhere."""
    return _rank(a) > _rank(b)


def _rank(record: Record) -> tuple[int, bytes, bytes]:
    return (record.mtime_ns, record.author, record.content_digest())


def conflict_copy_path(loser: Record) -> str:
    """Where the losing version is kept: named for its mtime and its author's short ID."""
    author = DeviceId.from_public_key(loser.author).short_str
    return layout.conflict_name(loser.path, loser.mtime_ns, author)
