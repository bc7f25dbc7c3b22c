"""``commonsync members``, ``member ...``, ``invite`` and ``join``: who a folder is shared
with, in which role, changing that, inviting people and joining (SPEC.md §15). The daemon does
the work (``/members``, ``/invites``, ``/join``)."""

from __future__ import annotations

import argparse
import io
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import segno

from commonsync.errors import CommonsyncError
from commonsync.membership.codes import JoinCode, looks_like_code
from commonsync.membership.links import JoinLink

from .control import ControlClient
from .output import Output

ROLES = ["reader", "writer", "admin", "owner"]


class DurationError(CommonsyncError):
    """A duration the command line cannot read."""


def add_parsers(command: Any, common: argparse.ArgumentParser) -> None:
    """The ``members`` and ``member`` commands, made with the CLI's ``command`` factory
    (``common`` holds the options every command takes)."""
    members = command("members", "a folder's members: names, roles, devices")
    members.add_argument("folder", help="its label or ID")
    member = command("member", "remove a member of a folder, change its role, list its devices")
    actions = member.add_subparsers(dest="member_command", required=True, metavar="ACTION")
    remove = actions.add_parser(
        "remove",
        help="remove a member: it reads nothing new and its new changes are refused",
        description="Remove a member from a folder. A new key epoch begins, sealed to the "
        "devices that remain; what the member already had stays with it.",
        parents=[common],
    )
    remove.add_argument("folder", help="its label or ID")
    remove.add_argument("member", help="its name, member ID, or a device ID of it")
    remove.add_argument(
        "--force",
        action="store_true",
        help="leave even though changes of yours have not reached another member yet (they "
        "then stay on this device alone)",
    )
    role = actions.add_parser("role", help="change a member's role", parents=[common])
    role.add_argument("folder", help="its label or ID")
    role.add_argument("member", help="its name, member ID, or a device ID of it")
    role.add_argument("role", choices=ROLES, help="the new role")
    role.add_argument(
        "--force",
        action="store_true",
        help="make yourself a reader even though changes of yours have not reached another "
        "member yet (they then stay on this device alone)",
    )
    devices = actions.add_parser(
        "devices", help="the devices of a folder's members (or of one member)", parents=[common]
    )
    devices.add_argument("folder", help="its label or ID")
    devices.add_argument("member", nargs="?", help="its name, member ID, or a device ID of it")
    device_add = actions.add_parser(
        "device-add",
        help="share a folder with a paired device as another device of a member",
        description="Share a folder with a device you paired (`commonsync device add`) as "
        "another device of an existing member, e.g. your phone beside your laptop: it joins "
        "that member, with its role, instead of becoming a member of its own. The member "
        "itself or an admin may do it; the device then accepts the folder as usual.",
        parents=[common],
    )
    device_add.add_argument("folder", help="its label or ID")
    device_add.add_argument("member", help="its name, member ID, or a device ID of it")
    device_add.add_argument("device", help="the device's ID, or its name here")

    invite = command("invite", "invite someone to a folder: prints a link (and its QR code)")
    invite.add_argument("folder", help="its label or ID")
    invite.add_argument("--role", choices=ROLES[:3], default="writer", help="default: writer")
    invite.add_argument("--name", default="", help="the name to give the person invited")
    invite.add_argument(
        "--expires", default="7d", help="how long it lasts: 30m, 12h, 7d (default: %(default)s)"
    )
    invite.add_argument("--uses", type=int, default=1, help="how many may join with it")
    invite.add_argument("--revoke", metavar="ID", help="revoke the invitation with this ID")
    invite.add_argument(
        "--no-code", action="store_true", help="print no short code (the link only)"
    )
    join = command("join", "join a folder with an invitation link or a short code")
    join.add_argument(
        "link", help="the link you were sent (commonsync://join/...) or the code (7-guitar-orbit)"
    )
    join.add_argument("path", nargs="?", type=Path, help="where to sync it (default: ./LABEL)")
    join.add_argument("--name", default="", help="your name, as the members will see it")
    join.add_argument(
        "--relay",
        metavar="RELAYID@HOST:PORT",
        help="use this community relay too (where a code's inviter may be found)",
    )


def add_device_lost_parser(device_commands: Any, common: argparse.ArgumentParser) -> None:
    """``commonsync device lost FOLDER DEVICE``, among the ``device`` actions."""
    lost = device_commands.add_parser(
        "lost",
        help="remove one lost or stolen device of a member from a folder (the member stays)",
        description="Remove one device of a member from a folder, e.g. a stolen phone. Its "
        "changes made before stay; those it makes after are refused by every member. A new "
        "key epoch begins, sealed to the devices that remain: the lost device reads nothing "
        "new. The member keeps its other devices. Invitations written on that device, and "
        "the one that admitted its member, are revoked.",
        parents=[common],
    )
    lost.add_argument("folder", help="its label or ID")
    lost.add_argument("device", help="its name, device ID, or a unique prefix of its ID")


def device_lost_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    answer = client.request("POST", "/devices/lost", {"folder": args.folder, "device": args.device})
    if out.json:
        out.data(answer)
        return 0
    kept = (
        f"what it made up to its version {answer['credited']} stays, anything else it sends is "
        "refused"
        if answer["credited"]
        else "nothing it sends is taken"
    )
    out.line(
        f"removed device {answer['device_name']} of {answer['member']} from folder "
        f"{answer['folder']}; {kept}."
    )
    if answer["epoch_pending"]:
        out.line(
            "A new key epoch is left to the folder's admins: the first admin device that "
            "sees the removal starts it."
        )
    else:
        out.line(
            f"The folder is now at key epoch {answer['epoch']}, which the lost device does "
            "not hold."
        )
    return 0


def members_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.command == "invite":
        return _invite(args, client, out)
    if args.command == "join":
        return _join(args, client, out)
    if args.command == "members":
        answer = client.request("GET", f"/members?folder={quote(args.folder)}")
        if out.json:
            out.data(answer)
            return 0
        _print_members(answer, out)
        return 0
    if args.member_command == "devices":
        query = f"/members/devices?folder={quote(args.folder)}"
        if args.member:
            query += f"&member={quote(args.member)}"
        answer = client.request("GET", query)
        if out.json:
            out.data(answer)
        else:
            _print_devices(answer, out)
        return 0
    if args.member_command == "device-add":
        body = {"folder": args.folder, "member": args.member, "device": args.device}
        answer = client.request("POST", "/members/devices", body)
        if out.json:
            out.data(answer)
        else:
            out.line(
                f"folder {answer['folder']} is offered to {answer['device']} as a device of "
                f"{answer['member']}; it accepts it with `commonsync folder accept "
                f"{answer['folder']} PATH`"
            )
        return 0
    if args.member_command == "remove":
        answer = client.request(
            "POST",
            "/members/remove",
            {"folder": args.folder, "member": args.member, "force": args.force},
        )
        if out.json:
            out.data(answer)
        elif answer.get("left"):
            out.line(
                f"you ({answer['removed']}) left folder {answer['folder']}: its members sync "
                "with this device no more, and an admin's device starts a new key epoch. "
                "What you had stays here."
            )
        else:
            out.line(
                f"removed {answer['removed']} from folder {answer['folder']}; the folder is "
                f"now at key epoch {answer['epoch']}, which {answer['removed']} does not hold. "
                "What they had before stays with them."
            )
        return 0
    answer = client.request(
        "POST",
        "/members/role",
        {"folder": args.folder, "member": args.member, "role": args.role, "force": args.force},
    )
    if out.json:
        out.data(answer)
    else:
        out.line(f"{answer['member']} is now {_a(answer['role'])} of folder {answer['folder']}")
    return 0


def _device_state(device: dict[str, Any], now: float | None = None) -> str:
    """Whether a member's device is connected to this one, else when it last was ("last
    seen" is what this daemon saw since it started: it keeps no history across restarts)."""
    if device["this_device"]:
        return "this device"
    if device["connected"]:
        return "connected"
    seen = device.get("last_seen")
    if seen is None:
        return "not seen since this daemon started"
    ago = max(0, int((time.time() if now is None else now) - seen))
    for unit, seconds in (("day", 86400), ("h", 3600), ("min", 60)):
        if ago >= seconds:
            count = ago // seconds
            amount = f"{count} {unit}{'s' if unit == 'day' and count != 1 else ''}"
            return f"last seen {amount} ago"
    return "last seen just now"


def _print_members(answer: dict[str, Any], out: Output) -> None:
    if not answer["has_log"]:
        out.line(
            f"folder {answer['folder']} was made before members existed: every device "
            "holding its key may write"
        )
        return
    count = len(answer["members"])
    you = _a(answer["role"]) if answer["role"] else "not a member"
    out.line(
        f"folder {answer['folder']}: {count} member{'' if count == 1 else 's'}; this device "
        f"is {you}"
    )
    rows = []
    for member in answer["members"]:
        for i, device in enumerate(member["devices"]):
            state = _device_state(device)
            name = device["name"] or device["id"][:7]
            rows.append(
                (
                    member["name"] if i == 0 else "",
                    member["role"] if i == 0 else "",
                    f"{name} ({device['id'][:7]})",
                    state,
                )
            )
    out.table("Members", ["name", "role", "device", "state"], rows)
    invitations = [
        (
            i["id"],
            i["role"],
            str(i["uses_left"]),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(i["expires"])),
        )
        for i in answer["invitations"]
    ]
    if invitations:
        out.table("Pending invitations", ["id", "role", "joins left", "until"], invitations)
    codes = [
        (
            str(c["nameplate"]),
            c["invitation"],
            str(c["attempts_left"]),
            c["relay"] or "LAN only",
            time.strftime("%H:%M", time.localtime(c["until"])),
        )
        for c in answer.get("codes", [])
    ]
    if codes:
        out.table("Open codes", ["code", "invitation", "tries left", "at", "until"], codes)


def _print_devices(answer: dict[str, Any], out: Output) -> None:
    rows = []
    for member in answer["members"]:
        for device in member["devices"]:
            state = _device_state(device)
            rows.append((member["name"], device["name"], device["id"], state))
    out.table(f"Devices of folder {answer['folder']}", ["member", "name", "device", "state"], rows)
    if not rows:
        out.line("no devices")
    else:
        out.line(
            f"a lost or stolen one: `commonsync device lost {answer['folder']} DEVICE` (by "
            "its member or an admin)"
        )


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def _invite(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.revoke:
        answer = client.request(
            "POST", "/invites/revoke", {"folder": args.folder, "invitation": args.revoke}
        )
        out.data(answer) if out.json else out.line(f"revoked invitation {answer['revoked']}")
        return 0
    body = {
        "folder": args.folder,
        "role": args.role,
        "name": args.name,
        "expires": parse_duration(args.expires),
        "uses": args.uses,
        "code": not args.no_code,
    }
    answer = client.request("POST", "/invites", body)
    if out.json:
        out.data(answer)
        return 0
    joins = "1 join" if answer["uses"] == 1 else f"{answer['uses']} joins"
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(answer["expires"]))
    out.line(
        f"Invitation {answer['invitation']} to folder {answer['folder']} as "
        f"{answer['role']}, for {joins}, until {until}. Send this link to the person you "
        "invite (it holds the secret: send it privately):"
    )
    print(answer["link"])
    if out.rich:
        drawing = io.StringIO()
        segno.make(answer["link"], error="l").terminal(out=drawing, compact=True)
        print(drawing.getvalue(), end="")
    if answer.get("code"):
        code_until = time.strftime("%H:%M", time.localtime(answer["code_until"]))
        where = f"on this LAN and at {answer['code_relay']}" if answer["code_relay"] else (
            "on this LAN only (no relay gave it a number)"
        )  # fmt: skip
        out.line(
            f"Or read them this code, which works until {code_until} while this device runs, "
            f"{where}:"
        )
        print(answer["code"])
    out.line(
        f"They run: commonsync join '<link or code>'. Revoke it with: commonsync invite "
        f"{answer['folder']} --revoke {answer['invitation']}"
    )
    return 0


def _join(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    # A LinkError or CodeError says what is wrong with it (exit code 2), before any network.
    if looks_like_code(args.link):
        JoinCode.parse(args.link)
    else:
        JoinLink.parse(args.link)
    if args.relay:
        client.request("POST", "/relays", {"relay": args.relay})
    body = {"link": args.link, "name": args.name}
    if args.path is not None:
        body["path"] = str(args.path.expanduser().absolute())
    else:
        body["parent"] = str(Path.cwd())
    answer = client.request("POST", "/join", body)
    if out.json:
        out.data(answer)
    else:
        out.line(f"joined folder {answer['label']}: syncing into {answer['path']}")
    return 0


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``30m``, ``12h``, ``7d``, ``2w`` (or a number of seconds)."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise DurationError(f"{text!r} is not a duration; write it as 30m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]
