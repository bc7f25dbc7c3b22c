"""The folder marker: making a directory a commonsync folder, and checking that it still is.

A folder's root holds a marker file (:data:`commonsync.sync.layout.FOLDER_MARKER`), written once
by :func:`init_folder`. A root without it is not scanned (:func:`check_folder` raises
:class:`FolderMissingError`): an unmounted disk, or a root moved away, would otherwise read as
"every file deleted" and that would be published to every device (Syncthing's ``.stfolder``).

Separate from :mod:`commonsync.sync.scanner`, which checks the marker before a scan and before
each batch that records deletions: setting a folder up, and the daemon's checks that its folders
are still there, need the marker without a scan.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import FolderError, FolderMissingError
from ..formats.whole_files import write_whole
from . import layout

__all__ = ["check_folder", "init_folder"]

_MARKER_TEXT = (
    b"This directory is a commonsync folder. Keep this file: without it, commonsync stops\n"
    b"syncing the folder rather than take a missing disk for a mass deletion.\n"
)


def init_folder(root: Path) -> None:
    """Make ``root`` a commonsync folder: create it if needed, its metadata directory and its
    marker file. Idempotent. The marker is written and synced before it exists under its name,
    so that a crash never leaves an empty marker behind. Raises :class:`FolderError`."""
    root = Path(root)
    marker = root / layout.FOLDER_MARKER
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / layout.METADATA_DIR).mkdir(exist_ok=True)
        if marker.is_file():
            return
        write_whole(marker, _MARKER_TEXT, mode=0o644)
    except OSError as exc:
        raise FolderError(f"cannot set up {root} as a commonsync folder: {exc}") from exc


def check_folder(root: Path) -> None:
    """Raise :class:`FolderMissingError` unless ``root`` holds its folder marker."""
    marker = Path(root) / layout.FOLDER_MARKER
    try:
        info = os.lstat(marker)
    except OSError as exc:
        raise FolderMissingError(
            f"{root} cannot be scanned: its marker {layout.FOLDER_MARKER} is missing "
            f"({exc.strerror or exc}). If the folder lives on a disk, is it mounted? A folder "
            "without its marker is never scanned, so that a missing disk does not read as "
            "every file deleted."
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise FolderMissingError(f"{root} cannot be scanned: {marker} is not a regular file")
