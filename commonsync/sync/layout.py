"""Where the engine keeps its own files inside a synced folder, and how it names them.

Everything the engine writes besides the user's files lives under :data:`METADATA_DIR` at the
folder's root, or is a temporary file beside its target (so that the final rename stays on one
file system and is atomic). The scanner skips both; :func:`is_internal` is the one test.

- ``.commonsync/``            the folder's metadata directory (never synced)
- ``.commonsync/versions/``   replaced and deleted files, as ``<path>~YYYYMMDD-HHMMSS<.ext>``
- ``.commonsync/versions-why``   why each of them was kept, one JSON line each
  (:mod:`commonsync.sync.versions`; listed, restored and pruned by :mod:`commonsync.sync.history`)
- ``<dir>/.<name>.cs-tmp-<hex>``   a file being assembled, renamed over ``<dir>/<name>`` when
  whole; ``<hex>`` comes from the target version's content digest, so that an interrupted
  transfer finds its partial file again and fetches only what is missing
- ``<stem>.sync-conflict-YYYYMMDD-HHMMSS-<tag>.<ext>``   the losing side of a conflict (an
  ordinary file, synced like any other); ``<tag>`` is 7 base32 characters, of the losing
  version's content (:func:`commonsync.sync.decide.conflict_copy_path`), not of a device

A name too long to take a mark within one path component is shortened first (:func:`fit`).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from ..formats import paths
from ..formats.hashing import blake2b

METADATA_DIR = ".commonsync"
VERSIONS_DIR = f"{METADATA_DIR}/versions"
TEMP_MARK = ".cs-tmp-"
CONFLICT_MARK = ".sync-conflict-"
#: The marker file whose presence says the folder root is really there (not an empty mount
#: point): without it, a scan must stop rather than read every file as deleted.
FOLDER_MARKER = f"{METADATA_DIR}/folder"

#: DOTALL: a name may hold a newline (SPEC.md §8.4), and so may its temporary file's.
_TEMP = re.compile(r"\..+\.cs-tmp-[0-9a-f]{16}", re.DOTALL)
_CONFLICT = re.compile(r"\.sync-conflict-\d{8}-\d{6}-[A-Z2-7]{7}", re.ASCII)  # 0-9 only
_NAME_MAX = paths.MAX_COMPONENT_BYTES


def is_internal(path: str) -> bool:
    """Whether a folder-relative ``/``-separated path is the engine's own, never synced."""
    first, _, _ = path.partition("/")
    if first == METADATA_DIR:
        return True
    return is_temp(path)


def is_temp(path: str) -> bool:
    """Whether ``path`` names one of the applier's temporary files (:func:`temp_name`)."""
    return _TEMP.fullmatch(path.rpartition("/")[2]) is not None


def reaches_internal(path: str) -> bool:
    """Whether a record for ``path`` would write into the engine's own files: the path, or a
    directory on the way to it, is internal (:func:`is_internal`), also compared case-folded
    for case-insensitive file systems. Such a record is refused, never applied."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if is_internal(prefix) or is_internal(prefix.casefold()):
            return True
    return False


def temp_name(name: str, content_digest: bytes | None = None) -> str:
    """The temporary name for assembling the file ``name`` in the same directory: derived
    from the target version's content digest when given (stable across restarts, for
    resuming), random otherwise."""
    token = content_digest[:8].hex() if content_digest else secrets.token_hex(8)
    return f".{name}{TEMP_MARK}{token}"


def fit(name: str, overhead: int) -> str:
    """``name``, or a shortened form (a prefix plus a hash of the whole name) if ``name`` and
    ``overhead`` more bytes would not fit in one component."""
    encoded = name.encode("utf-8")
    if len(encoded) + overhead <= _NAME_MAX:
        return name
    tag = blake2b(encoded, size=4).hex()
    prefix = encoded[: _NAME_MAX - overhead - len(tag) - 1].decode("utf-8", "ignore")
    return f"{prefix}~{tag}"


def _stamp(mtime_ns: int) -> str:
    # Whole seconds, floored: a float division would round the last ns of a second up.
    return datetime.fromtimestamp(mtime_ns // 10**9, tz=UTC).strftime("%Y%m%d-%H%M%S")


def _split_extension(name: str) -> tuple[str, str]:
    """``("report", ".pdf")`` for ``report.pdf``; a leading dot is not an extension."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, f".{ext}"


def conflict_name(path: str, mtime_ns: int, tag: str) -> str:
    """The path of the conflict copy of ``path`` for the losing version: its mtime, and
    ``tag``, 7 characters of base32 (SPEC.md §13, "Conflict names": of the losing content, so
    that every device that keeps the copy names it alike). A conflict of a conflict copy does
    not nest: the earlier mark is replaced."""
    parent, _, name = path.rpartition("/")
    stem, ext = _split_extension(name)
    stem = _CONFLICT.sub("", stem)
    copy = f"{stem}{CONFLICT_MARK}{_stamp(mtime_ns)}-{tag}{ext}"
    return f"{parent}/{copy}" if parent else copy


def is_conflict_copy(path: str) -> bool:
    return _CONFLICT.search(path.rpartition("/")[2]) is not None


def version_name(path: str, replaced_at_ns: int) -> str:
    """Where the versions folder keeps ``path`` as it was when replaced at ``replaced_at_ns``."""
    parent, _, name = path.rpartition("/")
    stem, ext = _split_extension(name)
    kept = f"{stem}~{_stamp(replaced_at_ns)}{ext}"
    return f"{VERSIONS_DIR}/{parent}/{kept}" if parent else f"{VERSIONS_DIR}/{kept}"
