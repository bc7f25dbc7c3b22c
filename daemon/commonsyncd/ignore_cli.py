"""``commonsync ignore ...`` and ``commonsync limit``: what a folder keeps out of sync (for
every device, or for this one only), and how much bandwidth sessions may use. The daemon
does the work (``/ignores``, ``/limits``) and applies each change at once: a rescan for an
ignore rule, the running sessions' buckets for a limit."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlencode

from commonsync.node.limits import format_rate

from .control import ControlClient
from .output import Output, plural


def add_parsers(command: Any, common: argparse.ArgumentParser) -> None:
    """The ``ignore`` and ``limit`` commands, made with the CLI's ``command`` factory
    (``common`` holds the options every command takes)."""
    ignore = command(
        "ignore",
        "paths a folder does not sync: for every device (.csignore) or for this one only",
    )
    actions = ignore.add_subparsers(dest="ignore_command", required=True, metavar="ACTION")
    this_device = (
        "for this device only: it neither sends nor receives those paths, and the others see "
        "no deletion (kept in .commonsync/ignore-local, never synced)"
    )
    add = actions.add_parser(
        "add",
        help="ignore a pattern (gitignore syntax) in a folder",
        description="Ignore PATTERN (gitignore syntax: *.mp4, /videos/, build/, docs/*.pdf) "
        "in FOLDER. Without --this-device the rule is for the whole folder: it goes in its "
        ".csignore, a synced file, so every device stops sending those paths (writers, admins "
        "and owners may change it). Files already on other devices stay there. Applied at "
        "once.",
        parents=[common],
    )
    add.add_argument("folder", help="its label or ID")
    add.add_argument("pattern", help="a gitignore pattern, quoted for the shell ('*.mp4')")
    add.add_argument("--this-device", action="store_true", help=this_device)
    listing = actions.add_parser(
        "list", help="a folder's ignore rules, for the folder and for this device",
        parents=[common],
    )  # fmt: skip
    listing.add_argument("folder", help="its label or ID")
    remove = actions.add_parser(
        "remove",
        help="stop ignoring a pattern: its files are sent (and received) again",
        parents=[common],
    )
    remove.add_argument("folder", help="its label or ID")
    remove.add_argument("pattern", help="the pattern, as `ignore list` shows it")
    remove.add_argument("--this-device", action="store_true", help="a rule of this device's")

    limit = command(
        "limit",
        "bandwidth limits, for all sessions or one device (without a rate: show them)",
    )
    limit.add_argument(
        "--device",
        metavar="DEVICE",
        help="limit this device's sessions only (its name, short ID or ID); default: all "
        "sessions together",
    )
    rate = "like 500KiB/s, 2MB/s or 800kbit/s; 0 or none: no limit"
    limit.add_argument("--send", metavar="RATE", help=f"the most sent per second ({rate})")
    limit.add_argument("--receive", metavar="RATE", help=f"the most received per second ({rate})")


def ignore_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.command == "limit":
        return _limit(args, client, out)
    if args.ignore_command == "list":
        answer = client.request("GET", f"/ignores?{urlencode({'folder': args.folder})}")
    else:
        route = "/ignores" if args.ignore_command == "add" else "/ignores/remove"
        body = {"folder": args.folder, "pattern": args.pattern, "this_device": args.this_device}
        answer = client.request("POST", route, body)
    if out.json:
        out.data(answer)
        return 0
    if args.ignore_command != "list":
        where = "on this device only" if args.this_device else "for every device (.csignore)"
        done = "ignoring" if args.ignore_command == "add" else "no longer ignoring"
        out.line(f"{answer['folder']}: {done} {answer['pattern']} {where}")
        if not answer["applied"]:
            out.line("the folder cannot scan now: the change applies at its next scan")
    _show_rules(answer, out)
    return 0


def _show_rules(answer: dict[str, Any], out: Output) -> None:
    rows = [(p, "whole folder (.csignore)") for p in answer["folder_rules"]]
    rows += [(p, "this device only") for p in answer["this_device"]]
    if rows:
        out.table(f"Ignore rules of {answer.get('folder', '')}", ["pattern", "for"], rows)
    else:
        out.line("no ignore rules: every path is synced")
    if answer.get("ignored"):
        out.line(f"{plural(answer['ignored'], 'path')} ignored in the last scan")


def _limit(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.send is None and args.receive is None:
        answer = client.request("GET", "/limits")
    else:
        body: dict[str, Any] = {"device": args.device}
        body |= {k: v for k, v in (("send", args.send), ("receive", args.receive)) if v}
        answer = client.request("POST", "/limits", body)
    if out.json:
        out.data(answer)
        return 0
    out.table("Bandwidth limits (applied at once)", ["for", "send", "receive"], limit_rows(answer))
    return 0


def limit_rows(limits: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The rows of a limits table (``GET /limits``, or ``limits`` in the status): overall,
    then per device that has a limit of its own."""
    rows = [("all devices", format_rate(limits["send"]), format_rate(limits["receive"]))]
    rows += [
        (d["name"] or d["id"][:7], format_rate(d["send"]), format_rate(d["receive"]))
        for d in limits["devices"]
    ]
    return rows
