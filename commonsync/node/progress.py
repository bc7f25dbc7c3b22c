"""What a folder's status says of its transfer and its peers, and the problems that stop a
folder from finishing, in one sentence each with a hint.

The figures come from the engine (:mod:`commonsync.sync.progress`): the bytes left move as
chunks arrive, the rate is of the last seconds, the estimate is the bytes left at that rate.
Per peer: how far it is behind us and we behind it, when it reports its progress (SPEC.md
§13); a peer that does not (an older version) is "unknown", never "up to date".

(Sockets, pipes and devices in a folder are never synced by design: the summary says so, they
are not a problem.) The problems join those of
:func:`commonsync.node.problems.folder_problems` in a folder's ``problems`` (``commonsync
status`` exits with 1 while there are any): entries on disk this device cannot read or
record, names the file system here cannot hold; and, for the whole device (``problems`` at
the top of the status), a peer that refuses this device and a relay that refuses it. A full
disk makes the folder's state ``error`` (with its hint), which exits with 1 as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..formats.device_id import DeviceId
from ..sync.folder import Folder
from ..sync.progress import megabytes, transfer_words
from ..sync.scanner import ScanReport, SkipReason

if TYPE_CHECKING:
    from .relay_links import RelayLink

#: What the puller says of a version whose name this file system cannot hold (told here,
#: with its own hint, rather than as a refusal of a misbehaving device).
NAME_REFUSAL = "the local file system cannot hold its name"

#: Why a scan could not record an entry for good, in words, and what to do about it.
_SKIP_WORDS: dict[SkipReason, tuple[str, str, str]] = {
    SkipReason.UNREADABLE: (
        "cannot be read",
        "cannot be read",
        "give the daemon's user read access (`ls -l` shows who may read it); it is synced at "
        "the next scan",
    ),
    SkipReason.INVALID_NAME: (
        "has a name that cannot be synced",
        "have names that cannot be synced",
        "rename them (names must be valid UTF-8, without characters other systems refuse)",
    ),
    SkipReason.TOO_LARGE: (
        "is too large to sync",
        "are too large to sync",
        "move them out of the folder, or add them to .csignore",
    ),
    SkipReason.UNVERSIONABLE: (
        "cannot get a new version",
        "cannot get a new version",
        "the daemon's log says why",
    ),
}


def transfer_status(folder: Folder | None) -> dict[str, Any]:
    """The figures of the folder's transfer for its status: bytes left (moving within a file),
    the rate in bytes per second, the seconds left (None: no estimate), and their words."""
    if folder is None:
        return {"rate": 0.0, "eta": None, "transfer": ""}
    left = folder.progress()
    rate = folder.rate()
    seconds = folder.eta()
    return {
        "rate": round(rate, 1),
        "eta": None if seconds is None else round(seconds, 1),
        "transfer": transfer_words(left.bytes, rate, seconds) if left.files else "",
    }


def peer_status(folder: Folder | None, devices: list[DeviceId]) -> list[dict[str, Any]]:
    """Per device the folder is shared with: whether a session carries the folder now, and
    how far it is behind us and we behind it (when it reports that), in words too."""
    out = []
    attached = (
        {p.peer: p.speaks_progress for p in folder.attached_peers()} if folder is not None else {}
    )
    views = folder.peer_views if folder is not None else {}
    left = folder.progress() if folder is not None else None
    for device in devices:
        entry: dict[str, Any] = {"id": str(device), "connected": device in attached}
        view = views.get(device)
        if device not in attached:
            entry["state"] = "not connected"
            entry["caught_up"] = False
        elif view is None:
            entry["caught_up"] = False
            entry["state"] = (
                "waiting for its first report"
                if attached[device]
                else "unknown (it does not report its progress: an older version)"
            )
        else:
            entry.update(view.as_json())
            if view.caught_up:
                entry["state"] = "up to date"
            else:
                what = f"{view.behind_files} file{'' if view.behind_files == 1 else 's'}"
                entry["state"] = (
                    f"syncing {view.completion:.0f} %, {what}, {megabytes(view.behind_bytes)} "
                    "behind this device"
                )
            if view.unreceived or (left is not None and left.files):
                ahead = []
                if view.unreceived:
                    ahead.append(f"{view.unreceived} of its changes not received yet")
                if left is not None and left.files:
                    ahead.append(f"{megabytes(left.bytes)} still to write here")
                entry["state"] += "; this device: " + ", ".join(ahead)
        out.append(entry)
    return out


def not_synced_problems(report: ScanReport | None, label: str) -> list[dict[str, str]]:
    """One problem per kind of entry the last scan could not record for good."""
    if report is None:
        return []
    by_reason: dict[SkipReason, list[str]] = {}
    for skipped in report.skipped:
        if skipped.reason in _SKIP_WORDS:
            by_reason.setdefault(skipped.reason, []).append(str(skipped))
    problems = []
    for reason, examples in by_reason.items():
        one, many, hint = _SKIP_WORDS[reason]
        count = len(examples)
        what = f"1 entry {one}" if count == 1 else f"{count} entries {many}"
        problems.append(
            {
                "problem": f"{what} in {label} and {'is' if count == 1 else 'are'} not synced, "
                f"for example {examples[0]}",
                "hint": hint,
            }
        )
    return problems


def name_problems(folder: Folder | None, label: str) -> list[dict[str, str]]:
    """Versions that cannot be written here because the file system cannot hold their name."""
    if folder is None:
        return []
    problems = []
    for refusal in folder.refusals():
        if refusal.reason != NAME_REFUSAL:
            continue
        what = "1 file" if refusal.count == 1 else f"{refusal.count} files"
        problems.append(
            {
                "problem": f"{what} of {label} from device {refusal.device} cannot be written "
                "here: this file system cannot hold their names",
                "hint": "rename them on a device that holds them (for example, without "
                "characters such as : or \\ for Windows and some USB disks)",
            }
        )
    return problems


def device_problems(
    refused_by: Mapping[DeviceId, str],
    relays: Iterable[RelayLink],
    names: Mapping[DeviceId, str],
    my_id: DeviceId,
) -> list[dict[str, str]]:
    """The whole device's problems: devices (``refused_by``, those still configured, with
    their names in ``names``) and relays that refuse this device."""
    problems = []
    for device in sorted(refused_by, key=str):
        if device not in names:
            continue  # removed from this device since: its refusal is no problem any more
        name = names.get(device) or ""
        who = f"{name} (device {device.short_str})" if name else f"device {device.short_str}"
        problems.append(
            {
                "problem": f"{who} refuses this device: it has not added it (the folders "
                "shared with it do not sync with it)",
                "hint": f"on that device, accept this one with `commonsync device add {my_id}`",
            }
        )
    for link in relays:
        if link.refused:
            problems.append(
                {
                    "problem": f"relay {link.relay_id.short_str} at {link.config.address} "
                    "refuses this device: it is not one of its members",
                    "hint": f"ask its hoster to run `commonsync relay allow {my_id}`",
                }
            )
    return problems
