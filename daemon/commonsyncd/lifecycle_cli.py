"""Changing one's mind: ``folder remove/move/pause/resume``, ``device remove/pause/resume/
rename`` and ``unshare``. The daemon applies each at once (:mod:`commonsyncd.lifecycle_api`),
and writes its configuration; nothing needs a restart.

Removing a folder never deletes a file: ``--keep-files`` says so for scripts that want it
written down, and there is no option that deletes (delete the directory yourself, with your
usual tools and their trash, if you want it gone)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .control import ControlClient
from .output import Output

#: The ``folder`` and ``device`` actions this module handles.
FOLDER_ACTIONS = ("remove", "move", "pause", "resume")
DEVICE_ACTIONS = ("remove", "pause", "resume", "rename")
DEVICE_HELP = "its name, its ID or the start of it (the short ID `device list` shows)"


def add_folder_parsers(actions: Any, common: argparse.ArgumentParser) -> None:
    """``folder remove|move|pause|resume``, under the ``folder`` command's ``actions``."""
    remove = actions.add_parser(
        "remove",
        help="stop syncing a folder and forget it here (its files stay on disk)",
        description="Stop syncing a folder on this device: the daemon forgets its index and "
        "its keys, and the devices it was shared with are told at once. Its files stay where "
        "they are, with the old versions in .commonsync/versions/ (only the marker "
        ".commonsync/folder goes): commonsync never deletes them. In a folder with members, "
        "this device stays a member until an admin removes it.",
        parents=[common],
    )
    remove.add_argument("folder", help="its label or ID")
    remove.add_argument(
        "--keep-files",
        action="store_true",
        help="keep the files on disk (what is always done: there is no option to delete)",
    )
    move = actions.add_parser(
        "move",
        help="sync a folder at another place, or point it at the right one",
        description="Sync a folder at PATH from now on. If you moved it there yourself "
        "(with its .commonsync directory), it is found there. If PATH is new or empty and the "
        "folder is at its old place on the same file system, the directory is renamed there "
        "(across file systems, move it yourself, then run this). A folder stuck in error "
        "because its path was wrong, and that never held files, is started at PATH.",
        parents=[common],
    )
    move.add_argument("folder", help="its label or ID")
    move.add_argument("path", type=Path, help="its new place")
    for name, what in (
        ("pause", "stop scanning and syncing a folder until resumed (kept across restarts)"),
        ("resume", "scan and sync a paused folder again"),
    ):
        action = actions.add_parser(name, help=what, description=what, parents=[common])
        action.add_argument("folder", help="its label or ID")


def add_device_parsers(actions: Any, common: argparse.ArgumentParser) -> None:
    """``device remove|pause|resume|rename``, under the ``device`` command's ``actions``."""
    remove = actions.add_parser(
        "remove",
        help="forget a device: unshared from every folder, no longer connected",
        description="Forget a device: every folder is unshared from it, its connection ends "
        "and it is no longer accepted (if it connects again it is listed as waiting). A "
        "member's device in a folder with members is not removed this way: `member remove` "
        "revokes a member, `device lost` one of its devices.",
        parents=[common],
    )
    remove.add_argument("device", help=DEVICE_HELP)
    for name, what in (
        ("pause", "stop syncing with a device until resumed (kept across restarts)"),
        ("resume", "sync with a paused device again"),
    ):
        action = actions.add_parser(name, help=what, description=what, parents=[common])
        action.add_argument("device", help=DEVICE_HELP)
    rename = actions.add_parser("rename", help="give a device another name here", parents=[common])
    rename.add_argument("device", help=DEVICE_HELP)
    rename.add_argument("name", help="its new name")


def add_parsers(command: Any, common: argparse.ArgumentParser) -> None:
    """``unshare``, made with the CLI's ``command`` factory."""
    unshare = command(
        "unshare",
        "stop syncing a folder with one device (or withdraw an offer it has not accepted)",
    )
    unshare.add_argument("folder", help="its label or ID")
    unshare.add_argument("device", help=DEVICE_HELP)


def handles(args: argparse.Namespace) -> bool:
    """Whether the parsed command is one of this module's."""
    if args.command == "folder":
        return args.folder_command in FOLDER_ACTIONS
    if args.command == "device":
        return args.device_command in DEVICE_ACTIONS
    return bool(args.command == "unshare")


def lifecycle_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    """Run one of this module's commands; its exit code (errors are raised, as the CLI's)."""
    if args.command == "unshare":
        answer = client.request(
            "POST", "/folders/unshare", {"folder": args.folder, "device": args.device}
        )
        who = _who(answer)
        return _done(out, answer, f"folder {answer['folder']} is no longer synced with {who}")
    if args.command == "folder":
        return _folder(args, client, out)
    body: dict[str, Any] = {"device": args.device}
    if args.device_command == "rename":
        body["name"] = args.name
    answer = client.request("POST", f"/devices/{args.device_command}", body)
    match args.device_command:
        case "remove":
            unshared = answer["unshared"]
            also = f"; unshared from {', '.join(unshared)}" if unshared else ""
            line = f"removed device {_who(answer)}{also}"
        case "pause":
            line = (
                f"paused device {_who(answer)}: no connection with it until "
                f"`commonsync device resume {args.device}`"
            )
        case "resume":
            line = f"resumed device {_who(answer)}: connecting to it"
        case _:
            was = f" (was {answer['was']})" if answer["was"] else ""
            line = f"device {answer['device'][:7]} is now called {answer['name']}{was}"
    return _done(out, answer, line)


def _folder(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    body: dict[str, Any] = {"folder": args.folder}
    if args.folder_command == "move":
        body["path"] = str(args.path.expanduser().absolute())
    answer = client.request("POST", f"/folders/{args.folder_command}", body)
    label = answer["folder"]
    match args.folder_command:
        case "remove":
            line = (
                f"removed folder {label}: it is no longer synced here; its files stay in "
                f"{answer['path']}"
            )
            if answer["still_member"]:
                line += (
                    f". This device is still a member of {label} for the others: an admin "
                    f"removes it with `commonsync member remove {label} MEMBER`"
                )
        case "move":
            how = {
                "found": "found it there",
                "renamed": f"moved {answer['was']} there",
                "created": "started it there",
            }[answer["how"]]
            line = f"folder {label} is now synced at {answer['path']} ({how})"
        case "pause":
            line = (
                f"paused folder {label}: not scanned or synced until "
                f"`commonsync folder resume {label}`"
            )
        case _:
            line = f"resumed folder {label}"
    return _done(out, answer, line)


def _who(answer: dict[str, Any]) -> str:
    name = answer.get("name") or ""
    return f"{name} ({answer['device'][:7]})" if name else answer["device"]


def _done(out: Output, answer: dict[str, Any], line: str) -> int:
    if out.json:
        out.data(answer)
    else:
        out.line(line)
    return 0
