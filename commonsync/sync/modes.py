"""Which permission bits a peer's version gets on this device, and when the disk still holds it.

A record carries its author's permission bits (SPEC.md §8.1, field 5), but what a peer chose
must not open local files to other users: a version is written with the record's bits masked
by this process's umask, the way a local program creating the file would be, and without
setuid, setgid or sticky bits. A directory also keeps ``rwx`` for its owner, so that the engine
can sync into it. Symlinks have no bits of their own to apply.

The scanner then finds, say, 0o755 on disk for a record saying 0o777. That is not a local
change: :func:`holds_mode` says the disk holds the record's bits when they are either the
record's own or what applying the record gives here (and nobody changed them since), so the
record stays the indexed version and nothing is published back (no ping-pong of modes between
devices with different umasks).

The umask is read once, when this module is imported (before any thread could be changing
it: ``os.umask`` is process-wide and can only be read by setting it), from
``/proc/self/status`` where Linux has it, else by setting and restoring it.
"""

from __future__ import annotations

import os
import stat

from ..formats.records import Kind

__all__ = ["UMASK", "applied_mode", "holds_mode"]

#: Bits a remote version may carry onto the disk at most.
_PERMISSIONS = 0o777


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o077)  # as strict as possible for the instant it is set
    os.umask(current)
    return current


#: This process's umask when commonsync was imported (tests may set it).
UMASK = _read_umask()


def applied_mode(kind: Kind, mode: int) -> int:
    """The permission bits a version of ``kind`` with ``mode`` gets on this disk."""
    bits = mode & _PERMISSIONS & ~UMASK
    if kind is Kind.DIRECTORY:
        bits |= stat.S_IRWXU
    return bits


def holds_mode(kind: Kind, record_mode: int, disk_mode: int, seen_mode: int | None) -> bool:
    """Whether permission bits ``disk_mode`` (``stat.S_IMODE``) found on disk are those of a
    record of ``kind`` with ``record_mode``: its own, or what applying it gives here, unless
    someone changed them to that since they were last seen (``seen_mode``, the bits stored
    with the path's local state; None if none is stored): a local ``chmod`` from 0o777 down
    to 0o755 is a change to publish, the applier writing 0o777 as 0o755 is not."""
    if kind is Kind.SYMLINK or disk_mode == record_mode:
        return True
    return disk_mode == applied_mode(kind, record_mode) and seen_mode in (None, disk_mode)
