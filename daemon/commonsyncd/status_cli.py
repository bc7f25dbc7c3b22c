"""``commonsync status``: what is in sync, what is transferring, what is wrong, and
``status --wait``, which a script can rely on.

``--wait`` waits until, for every folder (or only ``--folder``'s) and every device it is
shared with (or only ``--device``):

- the folder is up to date on this device;
- the device is connected;
- the device has taken every change this device holds and written it to its disk (it reports
  its progress, SPEC.md §13). A device that does not report it (an older version) counts
  once it is connected: status says its progress is unknown.

A folder or a device that a person paused (``folder pause``, ``device pause``) is not waited
for: it is out of sync on purpose.

Meanwhile it shows the progress live on a terminal (plain lines in a pipe, when something
changes). It exits with 0 once all of that holds, with 1 after ``--timeout`` seconds (saying
what it still waits for), and with 1 whenever a folder has a problem (a folder in error,
something it cannot read or write, a device or relay that refuses this one), as ``status``
does without ``--wait``.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from commonsync.formats.device_id import DeviceId
from commonsync.node.devices import resolve as resolve_device
from commonsync.sync.progress import duration

from .control import ControlClient
from .ignore_cli import limit_rows
from .logs import describe
from .output import Output
from .terminal import visible

EXIT_OK = 0
EXIT_PROBLEM = 1
#: How often ``--wait`` asks the daemon (s), and how long all must hold before it returns:
#: a peer's report is at most a few tenths of a second behind this device's index.
POLL = 0.25
SETTLE_HOLD = 0.6
#: In a pipe, a line that only changed its figures is printed again after this long (s).
PLAIN_REPEAT = 5.0

WAIT_HELP = (
    "wait until every folder is up to date on this device, every device it is shared with "
    "is connected and has written everything this device has (with --folder or --device, "
    "only those); shows the progress meanwhile; exit code 1 after --timeout or on a problem"
)


#: A device connected to this one whose session does not carry the folder.
NOT_SYNCING = (
    "connected, but not syncing this folder with this device (it has not accepted it yet, "
    "or it stopped sharing it)"
)


class StatusUsageError(Exception):
    """An unknown or ambiguous ``--folder`` or ``--device``; ``hint`` says what to give."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    status = command("status", "what is in sync, what is transferring, what is wrong")
    status.add_argument("--wait", action="store_true", help=WAIT_HELP)
    status.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="give up waiting after this many seconds (exit code 1; default: %(default)g)",
    )
    status.add_argument(
        "--folder", metavar="FOLDER", default="", help="only this folder (its label or ID)"
    )
    status.add_argument(
        "--device",
        metavar="DEVICE",
        default="",
        help="only this device (its name, or its ID or the start of it)",
    )


def status_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    deadline = time.monotonic() + args.timeout
    status = client.request("GET", "/status")
    folders, devices = select(status, args.folder, args.device)
    waiting = awaited(status, folders, devices)
    if args.wait:
        status, waiting = _wait(client, out, args.folder, args.device, deadline)
        folders, devices = select(status, args.folder, args.device)
    shown = _only(status, folders, devices) if args.folder or args.device else status
    if out.json:
        out.data(shown)
    else:
        show_status(shown, out)
    if problems(shown):
        return EXIT_PROBLEM
    if args.wait and waiting:
        out.error(f"not in sync after {args.timeout:g} s: " + "; ".join(waiting))
        return EXIT_PROBLEM
    return EXIT_OK


def problems(status: dict[str, Any]) -> bool:
    """Whether anything stops a folder from finishing (exit code 1)."""
    if any(f["state"] in ("error", "needs confirmation") for f in status["folders"]):
        return True
    if any(f.get("problems") for f in status["folders"]):
        return True  # refusals, what cannot be read or written here
    return bool(status.get("problems"))  # devices and relays that refuse this device


def select(status: dict[str, Any], folder: str, device: str) -> tuple[list[str], list[str]]:
    """The folder IDs and device IDs a ``status`` is about (``--folder``, ``--device``)."""
    folders = [f["id"] for f in status["folders"]]
    devices = [d["id"] for d in status["devices"]]
    if folder:
        exact = [f["id"] for f in status["folders"] if folder in (f["label"], f["id"])]
        found = exact or [f["id"] for f in status["folders"] if f["id"].startswith(folder)]
        if len(found) != 1:
            what = "no folder" if not found else "more than one folder"
            raise StatusUsageError(
                f"{what} is {folder!r} here", "give a label or ID as `commonsync status` shows"
            )
        folders = found
    if device:
        # The same resolver as every command that names a device (name, short ID, ID,
        # unique prefix; ambiguous or unknown refused with a sentence, exit code 2).
        found = [
            str(
                resolve_device(
                    device,
                    [(DeviceId.parse(d["id"]), _given_name(d)) for d in status["devices"]],
                    reported={
                        DeviceId.parse(d["id"]): d.get("reported_name", "")
                        for d in status["devices"]
                    },
                )
            )
        ]
        devices = found
        if not folder:  # the folders shared with it
            folders = [f["id"] for f in status["folders"] if found[0] in f["devices"]]
    return folders, devices


def _given_name(device: dict[str, Any]) -> tuple[str, ...]:
    """The name given a device here, as ``/status`` lists it (``name`` is that name, else
    the one the device gives itself, ``reported_name``)."""
    name = device["name"]
    return (name,) if name and name != device.get("reported_name") else ()


def awaited(status: dict[str, Any], folders: list[str], devices: list[str]) -> list[str]:
    """What ``--wait`` still waits for, one phrase each (empty: all is in sync)."""
    names = {d["id"]: d["name"] or d["id"][:7] for d in status["devices"]}
    connected = {d["id"] for d in status["devices"] if d["connected"]}
    paused = {d["id"] for d in status["devices"] if d.get("paused")}
    waiting = []
    for folder in status["folders"]:
        if folder["id"] not in folders or folder["state"] == "paused":
            continue
        label = folder["label"]
        if folder["state"] != "up to date":
            waiting.append(f"{label}: {folder['summary']}")
        peers = {p["id"]: p for p in folder.get("peers", [])}
        for device in folder["devices"]:
            if device not in devices or device in paused:
                continue
            name = names.get(device, device[:7])
            peer = peers.get(device, {})
            if device not in connected:
                waiting.append(f"{label}: {name} is not connected")
            elif not peer.get("connected"):
                waiting.append(f"{label}: {name} {NOT_SYNCING}")
            elif not peer.get("caught_up") and not peer.get("state", "").startswith("unknown"):
                waiting.append(f"{label}: {name} {peer.get('state', 'not reported yet')}")
    return waiting


def _wait(
    client: ControlClient, out: Output, folder: str, device: str, deadline: float
) -> tuple[dict[str, Any], list[str]]:
    """Poll until nothing is awaited for :data:`SETTLE_HOLD` seconds, or the deadline; the
    last status and what it still waits for. Live on a terminal, lines in a pipe."""
    live = Live(console=out.console, transient=True, auto_refresh=False) if out.rich else None
    printed: dict[str, tuple[str, float]] = {}
    settled_at: float | None = None
    try:
        if live is not None:
            live.start()
        while True:
            status = client.request("GET", "/status")
            folders, devices = select(status, folder, device)
            waiting = awaited(status, folders, devices)
            now = time.monotonic()
            if waiting:
                settled_at = None
            elif settled_at is None:
                settled_at = now
            if settled_at is not None and now - settled_at >= SETTLE_HOLD:
                return status, []
            if now > deadline:
                return status, waiting
            if live is not None:
                live.update(_live_view(status, folders, waiting, deadline - now), refresh=True)
            elif not out.json:
                _plain_progress(out, waiting, printed, now)
            time.sleep(POLL)
    finally:
        if live is not None:
            live.stop()


def _live_view(
    status: dict[str, Any], folders: list[str], waiting: list[str], left: float
) -> Group:
    table = Table(title="Waiting for", title_justify="left")
    for column in ("folder", "progress", "state"):
        table.add_column(column)
    for folder in status["folders"]:
        if folder["id"] not in folders:
            continue
        bar: Any = ""
        if folder["bytes_total"]:
            done = folder["bytes_total"] - folder["bytes_left"]
            bar = ProgressBar(total=folder["bytes_total"], completed=done, width=24)
        table.add_row(Text(visible(folder["label"])), bar, Text(visible(folder["summary"])))
    lines = [Text(visible(w)) for w in waiting]
    return Group(table, *lines, Text(f"(giving up in {duration(max(left, 0))})"))


def _plain_progress(
    out: Output, waiting: list[str], printed: dict[str, tuple[str, float]], now: float
) -> None:
    """Print what is awaited, a line each, when it changed: at once when its words changed,
    after :data:`PLAIN_REPEAT` seconds when only its figures did."""
    for line in waiting:
        shape = re.sub(r"[0-9]+(\.[0-9]+)?", "#", line)
        last = printed.get(shape)
        if last is None or (last[0] != line and now - last[1] >= PLAIN_REPEAT):
            printed[shape] = (line, now)
            out.line(f"waiting: {line}")


def _only(status: dict[str, Any], folders: list[str], devices: list[str]) -> dict[str, Any]:
    """``status`` with only the selected folders and devices."""
    return {
        **status,
        "folders": [f for f in status["folders"] if f["id"] in folders],
        "devices": [d for d in status["devices"] if d["id"] in devices],
    }


def show_status(status: dict[str, Any], out: Output) -> None:
    out.line(f"device {status['name']} ({status['device_id']}), port {status['port']}")
    rows: list[tuple[Any, ...]] = []
    for folder in status["folders"]:
        bar: Any = ""
        if folder["state"] == "syncing" and out.rich and folder["bytes_total"]:
            done = folder["bytes_total"] - folder["bytes_left"]
            bar = ProgressBar(total=folder["bytes_total"], completed=done, width=24)
        role = folder.get("role") or ""
        rows.append((folder["label"], role, folder["summary"], bar, folder["path"]))
    out.table("Folders", ["folder", "role", "state", "progress", "path"], rows)
    for folder in status["folders"]:
        for problem in folder.get("problems", []):
            out.line(f"{folder['label']}: {problem['problem']}. {problem['hint']}.")
    for problem in status.get("problems", []):
        out.line(f"{problem['problem']}. {problem['hint']}.")
    names = {d["id"]: d["name"] or d["id"][:7] for d in status["devices"]}
    connected_now = {d["id"] for d in status["devices"] if d["connected"]}
    remote = [
        (
            folder["label"],
            names.get(peer["id"], peer["id"][:7]),
            NOT_SYNCING if peer["id"] in connected_now and not peer["connected"] else peer["state"],
        )
        for folder in status["folders"]
        for peer in folder.get("peers", [])
        if peer["id"] in names
    ]
    if remote:
        out.table("Other devices", ["folder", "device", "progress"], remote)
    connected = [
        (
            d["name"] or d["id"][:7],
            "paused" if d.get("paused") else "connected" if d["connected"] else "not connected",
            d["via"],
            d["address"] or "",
        )
        for d in status["devices"]
    ]
    if connected:
        out.table("Devices", ["device", "state", "via", "address"], connected)
    if status["relays"]:
        out.table("Relays", ["relay", "address", "state"], relay_rows(status["relays"]))
    for pending in status["pending_devices"]:
        out.line(
            f"device {pending['id']} wants to connect ({pending['how']}); accept it with "
            f"`commonsync device add {pending['id']}`"
        )
    for offer in status["offered_folders"]:
        out.line(
            f"folder {offer['label']} is offered to this device; accept it with "
            f"`commonsync folder accept {offer['label']} PATH`"
        )
    limits = status.get("limits")
    if limits and (limits["send"] or limits["receive"] or limits["devices"]):
        out.table("Bandwidth limits", ["for", "send", "receive"], limit_rows(limits))
    for notice in status.get("notices", []):
        out.line(notice)
    if status.get("log"):
        out.line(f"log: {describe(status['log'])}")


def relay_rows(relays: list[dict[str, Any]], *, full_id: bool = False) -> list[tuple[str, ...]]:
    return [
        (
            r["id"] if full_id else r["id"][:7],
            r["address"],
            "connected" if r["connected"] else f"not connected: {r['error'] or 'connecting'}",
        )
        for r in relays
    ]


def event_line(event: dict[str, Any]) -> str:
    """One event as a line: its time, folder, kind, path, peer and detail, and the bytes of
    a file written."""
    when = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    parts = [when, event.get("folder") or "-", event["kind"]]
    parts += [event[k] for k in ("path", "peer", "detail") if event.get(k)]
    if event.get("bytes"):
        parts.append(f"{int(event['bytes']) / 1e6:.1f} MB")
    return "  ".join(visible(p) for p in parts)  # a newline in a name cannot forge a line
