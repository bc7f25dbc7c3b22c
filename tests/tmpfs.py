"""A small tmpfs to fill up: the full disk of the tests and the reliability scenarios (needs
root, or a mount namespace that allows mounting)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["TmpfsUnavailable", "mounted", "mounted_or_skip"]


class TmpfsUnavailable(Exception):
    """The tmpfs cannot be mounted here; the message says what ``mount`` answered."""


@contextlib.contextmanager
def mounted(directory: Path, size: str = "32m") -> Iterator[Path]:
    """``mount -t tmpfs -o size=SIZE tmpfs DIRECTORY`` for the block; lazily unmounted after
    (a daemon killed a moment ago may still hold a file open)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TmpfsUnavailable(str(exc)) from None
    if done.returncode != 0:
        raise TmpfsUnavailable(done.stderr.strip() or f"mount exited {done.returncode}")
    try:
        yield directory
    finally:
        subprocess.run(
            ["umount", "-l", str(directory)], capture_output=True, timeout=30, check=False
        )


@contextlib.contextmanager
def mounted_or_skip(directory: Path, size: str) -> Iterator[Path]:
    """:func:`mounted`, for a test: skipped, saying why, where no tmpfs can be mounted."""
    try:
        with mounted(directory, size) as place:
            yield place
    except TmpfsUnavailable as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
