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
5. Concurrent, same content: no conflict; the rule of 6 picks which record.
6. Otherwise a conflict. The version with the later mtime wins; ties go to the larger author
   key, then to the larger content digest. The losing edit is kept as a conflict copy, named
   for its content (:func:`conflict_copy_path`, the same name everywhere): by the device
   that held it (its file is renamed), and by a device that may write and held the winner
   (``remote_copy``: it records the copy, whose content its puller fetches).
7. EQUAL vectors, different records (two outcomes of the same concurrent versions): a total
   order (:func:`_tie_rank`), and nothing new to record.

Rules 3-6 alone can go round three versions (a deletion beats the edit it replaced, which
beats an older concurrent edit by its mtime, which beats the deletion), so that devices would
end on different versions depending on the order records reach them. A device that may write
therefore records each pair it resolves by rules 3-6 (``resolved``) as a version of its own,
:func:`merged`: the winner under the merge of both vectors, which dominates both sides. A
device's current version then dominates every version it ever held, and all end on the same.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, replace

from ..errors import VersionVectorError
from ..formats.records import Kind, Record
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
    #: Two concurrent versions were resolved (rules 3-6): a device that may write records
    #: the outcome as a version of its own that dominates both (:func:`merged`).
    resolved: bool = False
    #: A remote version lost a conflict to ours (rule 6): a device that may write keeps it
    #: as a conflict copy at this path too (fetching its content), since its author may only
    #: ever see our merged version, which dominates it.
    remote_copy: str | None = None


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


def decide(local: Record | None, remote: Record, *, me: bytes, writer: bool = True) -> Decision:
    """The decision for ``remote`` against our current ``local`` record of the same path.

    ``me`` is this device's public key (to know whose edit a losing local version is).
    ``writer`` says whether this device may write the folder (SPEC.md §15.3): only a writer
    records outcomes (``resolved``) and keeps another device's losing edit as a copy, since
    every member refuses the records of a device that may not write. A device that may not
    write still records the outcome where its own version wins, and keeps the losing edit as
    a copy, both unshared with its other own changes: no member ever sees that version to
    resolve the pair, and without the outcome's vector it would take a version older than
    the one it passed over.
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
    if ordering is Ordering.EQUAL:
        if remote == local:
            return Decision(Action.KEEP, reason="same version")
        # Two outcomes of the same concurrent versions, resolved in different orders: a
        # total order, and nothing new to record.
        action = Action.TAKE if _tie_rank(remote) > _tie_rank(local) else Action.KEEP
        return Decision(action, reason="same version vector, another outcome")

    keeps_own = writer or local.author == me  # records the outcome if its own version wins
    if remote.deleted != local.deleted:
        action = Action.KEEP if remote.deleted else Action.TAKE
        return Decision(
            action,
            resolved=writer or (keeps_own and action is Action.KEEP),
            reason="an edit wins over a concurrent deletion",
        )
    local_content, remote_content = local.content_digest(), remote.content_digest()
    if remote.previous == local_content and local.previous != remote_content:
        return Decision(Action.TAKE, resolved=writer, reason="remote replaced exactly our content")
    if local.previous == remote_content and remote.previous != local_content:
        return Decision(
            Action.KEEP, resolved=keeps_own, reason="local replaced exactly the remote content"
        )
    if local_content == remote_content:
        action = Action.TAKE if wins(remote, local) else Action.KEEP
        return Decision(
            action,
            resolved=writer or (keeps_own and action is Action.KEEP),
            reason="same content, concurrent versions",
        )

    if not wins(remote, local):
        remote_copy = None
        # Kept by whoever records the outcome: the outcome dominates the losing edit, which
        # no device would see lose otherwise (a reader's copy is unshared with its outcome).
        if keeps_own and remote.kind is Kind.FILE and conflict_copy_path(remote) != remote.path:
            remote_copy = conflict_copy_path(remote)
        return Decision(
            Action.KEEP,
            conflict=True,
            resolved=keeps_own,
            remote_copy=remote_copy,
            reason="conflict: local version wins",
        )
    copy = None
    if (writer or local.author == me) and not local.deleted:
        copy = conflict_copy_path(local)
        if copy == local.path:
            # A conflict on a conflict copy whose losing version carries the copy's own mark:
            # it cannot be renamed to itself, so it is kept as every other replaced version
            # is, in the versions folder.
            copy = None
    return Decision(
        Action.TAKE,
        conflict=True,
        conflict_copy=copy,
        resolved=writer,
        reason="conflict: remote wins",
    )


def merged(
    local: Record, remote: Record, winner: Record, *, author: bytes, sequence: int
) -> Record:
    """The outcome of resolving concurrent ``local`` and ``remote`` (a decision with
    ``resolved``), as a version made by ``author``: the winner's content and metadata, under
    the merge of both vectors, *not* bumped, so that every device that resolves the same
    pair records the same vector (their outcomes are EQUAL, settled by a total order, and
    nobody records a new outcome of outcomes: no ping-pong)."""
    return replace(
        winner, version=local.version.merge(remote.version), author=author, sequence=sequence
    )


def _tie_rank(record: Record) -> tuple[bool, int, bytes, bytes, int, bytes]:
    return (not record.deleted, *_rank(record), record.sequence, record.encode())


def wins(a: Record, b: Record) -> bool:
    """Whether version ``a`` beats concurrent version ``b`` (rule 6): later mtime, then the
    larger author key, then the larger content digest. A total order, the same everywhere."""
    return _rank(a) > _rank(b)


def _rank(record: Record) -> tuple[int, bytes, bytes]:
    return (record.mtime_ns, record.author, record.content_digest())


def conflict_copy_path(loser: Record) -> str:
    """Where the losing version is kept: named for its mtime and a tag of its content (the
    first 7 base32 characters of its content digest), not for its author: the losing record
    may be an outcome another device recorded (:func:`merged`, authored by that device), and
    every device that keeps the copy must give one lost edit one name (SPEC.md §13)."""
    return layout.conflict_name(loser.path, loser.mtime_ns, content_tag(loser))


def content_tag(record: Record) -> str:
    """The 7 characters that name a conflict copy of ``record``: the first 7 of the RFC 4648
    base32 encoding of its content digest."""
    return base64.b32encode(record.content_digest()).decode("ascii")[:7]
