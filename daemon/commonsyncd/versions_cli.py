"""``commonsync versions ...`` and ``commonsync conflicts ...``: the old versions a folder
keeps in ``.commonsync/versions/`` and its conflict copies, listed, restored, resolved and
pruned. The daemon does the work (``/versions``, ``/conflicts``); a restore or a resolution
is a local edit that the daemon scans and publishes at once."""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlencode

from .control import ControlClient
from .output import Output

KEEP = ["mine", "theirs", "both"]


def add_parsers(command: Any, common: argparse.ArgumentParser) -> None:
    """The ``versions`` and ``conflicts`` commands, made with the CLI's ``command`` factory
    (``common`` holds the options every command takes)."""
    versions = command("versions", "old versions kept in a folder: list, restore, prune")
    actions = versions.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="the kept versions of a file (or of every file): when, size, why",
        parents=[common],
    )
    listing.add_argument("folder", help="its label or ID")
    listing.add_argument("path", nargs="?", help="a file, relative to the folder (or absolute)")
    restore = actions.add_parser(
        "restore",
        help="put a kept version back and send it to the other devices",
        description="Put a kept version of PATH back (the newest, or the one kept at TIME). "
        "What is at PATH now goes to the versions folder: nothing is lost. The restored file "
        "is a new edit, sent to the other devices.",
        parents=[common],
    )
    restore.add_argument("folder", help="its label or ID")
    restore.add_argument("path", help="the file, relative to the folder (or absolute)")
    restore.add_argument(
        "--at",
        metavar="TIME",
        help='the version kept at this time, as `versions list` prints it ("2026-12-07 '
        '10:30:00"; a minute or a day picks the newest kept then), or an ISO date-time',
    )
    prune = actions.add_parser(
        "prune", help="apply the folder's retention policy now (the daemon does hourly)",
        parents=[common],
    )  # fmt: skip
    prune.add_argument("folder", help="its label or ID")

    conflicts = command("conflicts", "conflict copies: list them, resolve one")
    conflict_actions = conflicts.add_subparsers(dest="conflicts_command", metavar="ACTION")
    listed = conflict_actions.add_parser(
        "list", help="the conflict copies of a folder (of every folder)", parents=[common]
    )
    listed.add_argument("folder", nargs="?", help="its label or ID")
    resolve = conflict_actions.add_parser(
        "resolve",
        help="resolve a conflict: keep mine, theirs or both",
        description="Resolve the conflict of PATH (a file with conflict copies, or a copy). "
        "mine: the file stays, its conflict copies go to the versions folder; theirs: the "
        "conflict copy replaces the file, which goes to the versions folder; both: each copy "
        "is renamed to a plain name beside the file, 'NAME (TAG DATE TIME).EXT' (TAG: the 7 "
        "characters of the copy's name after its date, a tag of its content). Sent to the "
        "other devices as an edit.",
        parents=[common],
    )
    resolve.add_argument("folder", help="its label or ID")
    resolve.add_argument("path", help="the file or its conflict copy, relative to the folder")
    resolve.add_argument("--keep", choices=KEEP, required=True, help="which version to keep")


def versions_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.command == "conflicts":
        return _conflicts(args, client, out)
    if args.versions_command == "list":
        query = {"folder": args.folder} | ({"path": args.path, "cwd": _cwd()} if args.path else {})
        answer = client.request("GET", f"/versions?{urlencode(query)}")
        if out.json:
            out.data(answer)
            return 0
        rows = [
            (v["path"], v["local_time"], _size(v["size"]), v["why"] or "-")
            for v in answer["versions"]
        ]
        if not rows:
            what = f"of {args.path} " if args.path else ""
            out.line(f"no versions {what}are kept in folder {answer['folder']}")
            return 0
        out.table(
            f"Versions kept in folder {answer['folder']} (oldest first)",
            ["path", "kept at", "size", "why"],
            rows,
        )
        return 0
    if args.versions_command == "restore":
        body: dict[str, Any] = {"folder": args.folder, "path": args.path, "cwd": _cwd()}
        if args.at:
            body["at"] = args.at
        answer = client.request("POST", "/versions/restore", body)
        if out.json:
            out.data(answer)
            return 0
        aside = (
            "; what was there is in the versions folder"
            if answer["set_aside"]
            else " (nothing was there)"
        )
        out.line(
            f"restored {answer['path']} as it was kept at {answer['restored']['local_time']}"
            f"{aside}; {_sent(answer)}"
        )
        return 0
    answer = client.request("POST", "/versions/prune", {"folder": args.folder})
    if out.json:
        out.data(answer)
        return 0
    out.line(
        f"folder {answer['folder']}: deleted {answer['deleted']} old versions "
        f"({_size(answer['bytes_freed'])}); {answer['kept']} kept "
        f"({_size(answer['bytes_kept'])}); policy: {answer['policy']}"
    )
    return 0


def _conflicts(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.conflicts_command == "resolve":
        answer = client.request(
            "POST",
            "/conflicts/resolve",
            {"folder": args.folder, "path": args.path, "keep": args.keep, "cwd": _cwd()},
        )
        if out.json:
            out.data(answer)
            return 0
        if answer["keep"] == "both":
            out.line(f"kept both: {', '.join(answer['renamed'])} beside {answer['path']}")
        else:
            which = "your version" if answer["keep"] == "mine" else "the conflict copy"
            out.line(
                f"kept {which} at {answer['path']}; the other is in the versions folder "
                f"(`commonsync versions list {answer['folder']}`)"
            )
        out.line(_sent(answer))
        return 0
    folder = getattr(args, "folder", None)
    if not folder:
        answer = client.request("GET", "/conflicts")
        if out.json:
            out.data(answer)
            return 0
        rows = [(f["label"], c) for f in answer["folders"] for c in f["conflicts"]]
        if not rows:
            out.line("no conflict copies")
        out.table("Conflict copies", ["folder", "path"], rows)
        return 0
    answer = client.request("GET", f"/conflicts?{urlencode({'folder': folder})}")
    if out.json:
        out.data(answer)
        return 0
    if not answer["conflicts"]:
        out.line(f"no conflict copies in folder {answer['folder']}")
        return 0
    out.table(
        f"Conflict copies in folder {answer['folder']} "
        "(`commonsync conflicts resolve FOLDER PATH --keep mine|theirs|both`)",
        ["file", "conflict copy", "recorded by", "edited at", "size"],
        [
            (
                c["original"] if c["original_exists"] else f"{c['original']} (gone)",
                c["path"],
                # Not the copy's name: it carries a tag of the content, not a device.
                c["recorded_by"]["name"] if c["recorded_by"] else "(not recorded yet)",
                c["local_time"],
                _size(c["size"]),
            )
            for c in answer["conflicts"]
        ],
    )
    return 0


def _cwd() -> str:
    """Where the person is: a relative PATH is from there when it is inside the folder."""
    try:
        return os.getcwd()
    except OSError:  # a directory deleted under the shell
        return ""


def _sent(answer: dict[str, Any]) -> str:
    if answer.get("not_sent_yet"):
        return f"not sent to the other devices yet: {answer['not_sent_yet']}"
    return "sent to the other devices"


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
