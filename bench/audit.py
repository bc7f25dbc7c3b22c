"""What the reliability scenarios check on disk once the daemons have (or have not) converged.

:func:`survey` reads one device's folder: the user's files (everything outside ``.commonsync/``
but the engine's temporary files), the files kept in ``.commonsync/versions/``, the temporary
files (``.NAME.cs-tmp-HEX``) and the conflict copies. :func:`audit` turns the surveys of every
device and a trial's :class:`~bench.editing.Ledger` into findings: torn files, lost versions,
leaked temporary files. :func:`listing` is the cheap view (names and sizes) used while waiting
for convergence, :func:`contents` the exact one (names and digests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from commonsync.sync import layout

from .blobs import damage, digest
from .editing import Ledger

__all__ = ["Findings", "Survey", "audit", "contents", "listing", "survey"]


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every regular file below ``root``: its ``/``-separated relative path and stat."""
    found: list[tuple[str, os.stat_result]] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found.append((Path(entry.path).relative_to(root).as_posix(), entry.stat()))
            except FileNotFoundError:
                continue  # renamed or removed meanwhile
    return found


def _is_temp(relative: str) -> bool:
    return layout.TEMP_MARK in relative.rpartition("/")[2]


def _user_files(root: Path) -> list[tuple[str, os.stat_result]]:
    return [
        (relative, st)
        for relative, st in _walk(root)
        if not relative.startswith(layout.METADATA_DIR + "/") and not _is_temp(relative)
    ]


def listing(root: Path) -> dict[str, int]:
    """The user's files and their sizes (cheap: for polling)."""
    return {relative: st.st_size for relative, st in _user_files(root)}


def contents(root: Path) -> dict[str, str]:
    """The user's files and the digests of their contents (exact: to confirm convergence)."""
    found: dict[str, str] = {}
    for relative, _ in _user_files(root):
        try:
            found[relative] = digest((root / relative).read_bytes())
        except OSError:
            found[relative] = "unreadable"
    return found


@dataclass
class Survey:
    """One device's folder as found."""

    device: str
    files: dict[str, bytes] = field(default_factory=dict)
    versions: dict[str, bytes] = field(default_factory=dict)
    temps: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[str]:
        return sorted(p for p in self.files if layout.is_conflict_copy(p))


def survey(device: str, root: Path) -> Survey:
    found = Survey(device)
    for relative, _ in _walk(root):
        if _is_temp(relative):
            found.temps.append(relative)
            continue
        try:
            data = (root / relative).read_bytes()
        except OSError:
            continue
        if relative.startswith(layout.VERSIONS_DIR + "/"):
            found.versions[relative] = data
        elif not relative.startswith(layout.METADATA_DIR + "/"):
            found.files[relative] = data
    found.temps.sort()
    return found


@dataclass
class Findings:
    """What one trial found; each list holds one line per finding, for the report."""

    torn: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    versions_kept: int = 0


def audit(surveys: Sequence[Survey], ledger: Ledger) -> Findings:
    """Torn: a file at a path or in a versions folder whose content is not one complete
    written version. Lost: an owed version (``Ledger.owed``) whose exact content is in no file
    of any device, versions folders included. Temporary files: every one left."""
    findings = Findings()
    present: set[str] = set()
    for found in surveys:
        for files in (found.files, found.versions):
            for relative, data in files.items():
                present.add(digest(data))
                problem = damage(data, ledger.tags)
                if problem:
                    findings.torn.append(
                        f"{found.device}:{relative} ({len(data)} bytes): {problem}"
                    )
        findings.temps += [f"{found.device}:{t}" for t in found.temps]
        findings.versions_kept += len(found.versions)
    for version in ledger.owed():
        if version.digest not in present:
            findings.lost.append(
                f"{version.op} {version.tag} of {version.path} by {version.writer} "
                f"({version.size} bytes)"
            )
    findings.conflicts = sorted({c for found in surveys for c in found.conflicts})
    return findings
