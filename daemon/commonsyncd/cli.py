"""The ``commonsync`` command: set up this device, and drive its daemon.

``init``, ``id``, ``daemon``, ``demo``, ``core-demo`` and the hoster's ``relay serve``,
``relay id``, ``relay allow`` and ``relay disallow`` work on their own; every other command
talks to the running daemon through its control socket (so the daemon, which owns the
configuration, applies the change at once).

Exit codes:

- 0: done;
- 1: the command ran and found a problem (a folder in error, a wait that timed out);
- 2: a usage or user error: the message says what to change (unknown device, mistyped
  device ID, folder already shared, not set up yet);
- 3: the daemon is not running (start it with ``commonsync daemon``);
- 130: interrupted.

User errors print one sentence and a hint, never a traceback. ``--json`` prints the daemon's
answer as JSON for scripts; without it, a terminal gets tables and progress bars, and a pipe
gets plain lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from commonsync import CommonsyncError, DeviceId
from commonsync.errors import DeviceIdError

from . import __version__
from .background import ensure_running, set_up
from .config import Config, ConfigError, parse_address
from .control import ControlClient, ControlError, DaemonNotRunningError
from .home import Home
from .ignore_cli import add_parsers as add_ignore_parsers
from .ignore_cli import ignore_command
from .lifecycle_cli import add_device_parsers, add_folder_parsers, lifecycle_command
from .lifecycle_cli import add_parsers as add_lifecycle_parsers
from .lifecycle_cli import handles as lifecycle_handles
from .logs import add_log_arguments, options_from, set_log_options
from .members_cli import ROLES, add_device_lost_parser, device_lost_command, members_command
from .members_cli import add_parsers as add_member_parsers
from .ops_cli import OpsError, ParseError, Parser, ops_command
from .ops_cli import add_parsers as add_ops_parsers
from .output import Output, plural
from .status_cli import StatusUsageError, event_line, status_command
from .status_cli import add_parser as add_status_parser
from .status_cli import relay_rows as _relay_rows
from .terminal import json_visible
from .versions_cli import add_parsers as add_versions_parsers
from .versions_cli import versions_command

if TYPE_CHECKING:
    from .relay.config import RelayServerConfig

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130
#: Standard output was closed early (`commonsync status | head -1`): 128 + SIGPIPE, as a
#: program killed by SIGPIPE would end, but quietly.
EXIT_BROKEN_PIPE = 141
#: Where a device set up by `init` listens for peers, unless told otherwise.
DEFAULT_LISTEN = "0.0.0.0:22070"


class UsageError(CommonsyncError):
    """A mistake in what the person asked; printed as one sentence (and a hint)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


# -- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument(
        "--home",
        type=Path,
        default=argparse.SUPPRESS,
        help="keep everything (keys, configuration, state) in this directory",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, for scripts"
    )
    parser = Parser(
        prog="commonsync",
        description="Peer-to-peer, end-to-end encrypted file sync.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"commonsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common], **kw)

    init = command("init", "set up this device: create its identity and configuration")
    init.add_argument("--name", default="", help="a name for this device (default: host name)")
    init.add_argument(
        "--listen",
        default=None,
        help=f"address and port for peers to connect to (default: {DEFAULT_LISTEN})",
    )
    init.add_argument(
        "--discovery-interface",
        action="append",
        default=[],
        metavar="IP",
        help="announce and look for devices only on this address (repeatable; "
        "default: every address of this machine)",
    )
    init.add_argument(
        "--no-discovery",
        action="store_true",
        help="do not announce this device on the local network",
    )
    command("id", "print this device's ID (give it to the devices you pair with)")
    daemon = command("daemon", "run the sync daemon in the foreground (as commonsyncd does)")
    add_log_arguments(daemon)

    folder = command("folder", "add, list, accept, pause, move and remove folders")
    folder_commands = folder.add_subparsers(dest="folder_command", required=True, metavar="ACTION")
    add = folder_commands.add_parser("add", help="sync a directory", parents=[common])
    add.add_argument("path", type=Path, help="the directory (created if missing)")
    add.add_argument("--label", default="", help="a short name (default: the directory's name)")
    folder_commands.add_parser("list", help="folders, and folders offered to you", parents=[common])
    accept = folder_commands.add_parser(
        "accept", help="accept a folder another device offered", parents=[common]
    )
    accept.add_argument("folder", help="its label or ID, as `folder list` shows it")
    accept.add_argument("path", type=Path, help="where to keep it (created if missing)")
    rescan = folder_commands.add_parser("rescan", help="scan a folder now", parents=[common])
    rescan.add_argument("folder", help="its label or ID")
    confirm = folder_commands.add_parser(
        "confirm-deletions",
        parents=[common],
        help="send the deletions the mass-deletion guard held back to the other devices",
    )
    confirm.add_argument("folder", help="its label or ID")
    add_folder_parsers(folder_commands, common)  # remove, move, pause, resume

    device = command(
        "device", "add, list, rename, pause and remove devices; remove a lost one from a folder"
    )
    device_commands = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    device_add = device_commands.add_parser(
        "add", help="accept a device (pairing: each side adds the other)", parents=[common]
    )
    device_add.add_argument("device_id", help="its device ID (`commonsync id` on it)")
    device_add.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where to reach it (repeatable; LAN discovery finds it too)",
    )
    device_add.add_argument("--name", default="", help="a name for it")
    device_commands.add_parser("list", help="known and pending devices", parents=[common])
    add_device_lost_parser(device_commands, common)
    add_device_parsers(device_commands, common)  # remove, pause, resume, rename

    relay = command(
        "relay",
        "community relays: run one for your members (serve, id, allow, disallow), or use one "
        "(add, list)",
    )
    relay_commands = relay.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    serve = relay_commands.add_parser(
        "serve", help="run this machine's relay in the foreground", parents=[common]
    )
    serve.add_argument(
        "--listen",
        default="",
        metavar="HOST:PORT",
        help="address and port to listen on (default: `listen` in relay.toml, 0.0.0.0:22071)",
    )
    serve.add_argument(
        "--open", action="store_true", help="let any device use the relay, not only members"
    )
    add_log_arguments(serve)
    relay_commands.add_parser(
        "id", help="print the relay's ID (members add the relay with it)", parents=[common]
    )
    allow = relay_commands.add_parser(
        "allow",
        help="let devices use this relay (members); with --delegate, let them vouch for others",
        description="Let devices use this relay. With --delegate, the devices (an "
        "association's admin devices) may also vouch for other devices: the relay then admits "
        "the members of their folders without you adding each one, and drops those they stop "
        "vouching for. The relay learns device IDs only, never folders, names or roles.",
        parents=[common],
    )
    allow.add_argument(
        "device_id", nargs="+", metavar="DEVICE_ID", help="device IDs (`commonsync id` on each)"
    )
    allow.add_argument(
        "--delegate",
        action="store_true",
        help="also let these devices vouch for the devices the relay admits",
    )
    disallow = relay_commands.add_parser(
        "disallow",
        help="stop letting devices use this relay; with --delegate, withdraw only a delegation",
        description="Remove devices from the relay's members and delegates. With --delegate, "
        "only withdraw their delegation (they stay members if they were). A running relay "
        "closes the connections of devices it no longer admits within a second.",
        parents=[common],
    )
    disallow.add_argument(
        "device_id", nargs="+", metavar="DEVICE_ID", help="device IDs (`commonsync id` on each)"
    )
    disallow.add_argument("--delegate", action="store_true", help="withdraw the delegation only")
    relay_add = relay_commands.add_parser(
        "add", help="use a relay: this device keeps a connection to it", parents=[common]
    )
    relay_add.add_argument(
        "relay", metavar="RELAYID@HOST:PORT", help="the relay's ID (`relay id` there) and address"
    )
    relay_commands.add_parser(
        "list", help="this device's relays, and whether they are connected", parents=[common]
    )

    share = command("share", "offer a folder to a device (it accepts with `folder accept`)")
    share.add_argument("folder", help="its label or ID")
    share.add_argument("device", help="the device: its name, short ID, ID or a unique prefix")
    share.add_argument(
        "--role",
        choices=ROLES,
        default="writer",
        help="what it may do in the folder (default: %(default)s; only admins and owners "
        "share, and only owners make owners)",
    )
    add_member_parsers(command, common)
    add_ops_parsers(command, common)

    add_status_parser(command)  # status [--wait] [--folder F] [--device D]
    add_versions_parsers(command, common)  # versions ..., conflicts ...
    add_lifecycle_parsers(command, common)  # unshare
    add_ignore_parsers(command, common)  # ignore ..., limit
    events = command("events", "follow what happens, one line per event (Ctrl-C to stop)")
    events.add_argument("--replay", action="store_true", help="start with the recent events")

    demo = command("demo", "two daemons on this machine: pair them, share a folder, sync files")
    demo.add_argument("--dir", type=Path, help="keep the demo's homes and folders here")
    core = command("core-demo", "the encrypted core at work on a folder (no network)")
    core.add_argument(
        "folder",
        nargs="?",
        type=Path,
        help="folder to process (read only; default: a generated sample)",
    )
    return parser


# -- running a command ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code.

    Standard output closed early (`commonsync status | head -1`) ends the command quietly,
    as Python's documentation advises for SIGPIPE: what is left to write goes to /dev/null,
    so that the interpreter's last flush cannot fail again with a traceback."""
    try:
        try:
            return _main(sys.argv[1:] if argv is None else argv)
        finally:
            sys.stdout.flush()  # here, not at exit: after --help too (argparse's SystemExit)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    # Errors are JSON with --json, even the parser's own (before the arguments are parsed).
    out = Output("--json" in argv)
    try:
        args = build_parser().parse_args(argv)
        out = Output(getattr(args, "json", False))
        home = Home.resolve(getattr(args, "home", None))
        return run_command(args, home, out)
    except ParseError as exc:
        if not out.json:
            exc.print_text()
            return EXIT_USAGE
        out.error(str(exc), exc.hint, exit_code=EXIT_USAGE)
        return EXIT_USAGE
    except (UsageError, OpsError) as exc:
        out.error(str(exc), exc.hint, exit_code=EXIT_USAGE)
        return EXIT_USAGE
    except DaemonNotRunningError as exc:
        hint = "start it with `commonsync daemon` (or `commonsyncd`)"
        out.error(str(exc), hint, exit_code=EXIT_NOT_RUNNING)
        return EXIT_NOT_RUNNING
    except ControlError as exc:
        code = EXIT_USAGE if exc.status < 500 else EXIT_PROBLEM
        out.error(exc.message, exc.hint, exit_code=code)
        return code
    except CommonsyncError as exc:
        out.error(str(exc), getattr(exc, "hint", ""), exit_code=EXIT_USAGE)
        return EXIT_USAGE
    except KeyboardInterrupt:
        out.error("interrupted", exit_code=EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


def run_command(args: argparse.Namespace, home: Home, out: Output) -> int:
    match args.command:
        case "init":
            return init(args, home, out)
        case "id":
            identity = home.load_identity()
            if out.json:
                out.data({"device_id": str(identity.device_id)})
            else:
                print(identity.device_id)
            return EXIT_OK
        case "daemon":
            from .__main__ import run

            return run(home, args.log_level, log_options=options_from(args))
        case "logs" | "service" | "completion":
            return ops_command(args, home, out, build_parser)
        case "demo":
            from .demo import run_demo

            return run_demo(args.dir, out.console)
        case "core-demo":
            from .core_demo import run_demo as run_core_demo

            if args.folder is not None and not args.folder.is_dir():
                raise UsageError(f"{args.folder} is not a folder. Give the path of a directory.")
            core_home = getattr(args, "home", None)
            return trio.run(run_core_demo, args.folder, core_home, out.console)
        case "relay" if args.relay_command in ("serve", "id", "allow", "disallow"):
            return relay_host_command(args, home, out)
    if args.command == "join":
        ensure_running(home, getattr(args, "home", None), out)
    home.require_initialised()
    client = ControlClient(home.socket_path)
    if lifecycle_handles(args):  # folder remove/move/pause/resume, device remove/..., unshare
        return lifecycle_command(args, client, out)
    match args.command:
        case "folder":
            return folder_command(args, client, out)
        case "device":
            return device_command(args, client, out)
        case "relay":
            return relay_command(args, client, out)
        case "share":
            answer = client.request(
                "POST",
                "/folders/share",
                {"folder": args.folder, "device": args.device, "role": args.role},
            )
            if out.json:
                out.data(answer)
            else:
                out.line(
                    f"offered folder {answer['folder']} to {answer['device']} as "
                    f"{answer['role']}; it appears there under `commonsync folder list` to "
                    "accept"
                )
            return EXIT_OK
        case "members" | "member" | "invite" | "join":
            return members_command(args, client, out)
        case "status":
            try:
                return status_command(args, client, out)
            except StatusUsageError as exc:
                raise UsageError(str(exc), exc.hint) from None
        case "versions" | "conflicts":
            return versions_command(args, client, out)
        case "ignore" | "limit":
            return ignore_command(args, client, out)
        case "events":
            for event in client.stream("/events?replay=1" if args.replay else "/events"):
                if out.json:
                    print(json_visible(json.dumps(event, ensure_ascii=False)), flush=True)
                else:
                    out.line(event_line(event))
            return EXIT_OK
    raise UsageError(f"unknown command {args.command}")


def init(args: argparse.Namespace, home: Home, out: Output) -> int:
    if home.initialised:
        return _init_again(args, home, out)
    try:
        parse_address(args.listen or DEFAULT_LISTEN)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    identity = set_up(
        home,
        name=args.name,
        listen=args.listen or DEFAULT_LISTEN,
        discovery=not args.no_discovery,
        interfaces=args.discovery_interface,
    )
    if out.json:
        out.data({"device_id": str(identity.device_id), "config": str(home.config_file)})
        return EXIT_OK
    out.line(f"set up this device in {home.config_dir}. Its ID:")
    print(identity.device_id)
    out.line(
        "Start the daemon with `commonsync daemon`, and give this ID to the devices "
        "you pair with (`commonsync device add ID` on each)."
    )
    return EXIT_OK


def _init_again(args: argparse.Namespace, home: Home, out: Output) -> int:
    """``init`` on a device set up before: its ID, and with ``--name``, its new name. A name
    is configuration only (peers see it from their next connection), so renaming is safe;
    but a running daemon owns the configuration and would write the old name back."""
    identity = home.load_identity()
    config = Config.load(home.config_file)
    old_name = config.name
    if args.name and args.name != old_name:
        try:
            ControlClient(home.socket_path, timeout=5).request("GET", "/status")
        except DaemonNotRunningError:
            config.name = args.name
            config.save(home.config_file)
        else:
            raise UsageError(
                f"this device is already set up (as {old_name!r}), and its daemon is running: "
                "the name cannot be changed under it",
                f"stop the daemon, run `commonsync init --name {args.name}` again, then start it",
            )
    renamed = config.name != old_name
    unchanged = [
        option
        for option, given in [
            ("--listen", args.listen is not None),
            ("--no-discovery", args.no_discovery),
            ("--discovery-interface", bool(args.discovery_interface)),
        ]
        if given
    ]
    if unchanged and not out.json:
        out.errors.print(
            f"{' and '.join(unchanged)} changed nothing: they apply when a device is set up. "
            f"Change listen, discovery_enabled or discovery_interfaces in {home.config_file} "
            "instead, with the daemon stopped.",
            markup=False,
        )
    if out.json:
        out.data(
            {
                "device_id": str(identity.device_id),
                "config": str(home.config_file),
                "name": config.name,
                "renamed_from": old_name if renamed else None,
                "unchanged_options": unchanged,
            }
        )
        return EXIT_OK
    if renamed:
        out.line(
            f"this device was already set up in {home.config_dir}: renamed it from "
            f"{old_name!r} to {config.name!r} (peers see the new name from their next "
            "connection); its ID is"
        )
    else:
        out.line(
            f"this device is already set up in {home.config_dir} as {config.name!r}; its ID is"
        )
    print(identity.device_id)
    return EXIT_OK


def folder_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    match args.folder_command:
        case "add":
            path = args.path.expanduser().absolute()
            answer = client.request(
                "POST", "/folders", {"path": str(path), "label": args.label or path.name}
            )
            if out.json:
                out.data(answer)
            else:
                out.line(
                    f"syncing {answer['path']} as folder {answer['label']} "
                    f"(ID {answer['id']}); offer it with `commonsync share "
                    f"{answer['label']} DEVICE_ID`"
                )
            return EXIT_OK
        case "accept":
            path = args.path.expanduser().absolute()
            answer = client.request(
                "POST", "/folders/accept", {"folder": args.folder, "path": str(path)}
            )
            if out.json:
                out.data(answer)
            else:
                out.line(f"accepted folder {answer['label']}: syncing into {answer['path']}")
            return EXIT_OK
        case "rescan":
            answer = client.request("POST", "/folders/rescan", {"folder": args.folder})
            out.data(answer) if out.json else out.line(answer["report"] or "scanned")
            return EXIT_OK
        case "confirm-deletions":
            answer = client.request("POST", "/folders/confirm-deletions", {"folder": args.folder})
            if out.json:
                out.data(answer)
            else:
                out.line(f"sent {plural(answer['deleted'], 'deletion')} to the other devices")
            return EXIT_OK
    answer = client.request("GET", "/folders")
    if out.json:
        out.data(answer)
        return EXIT_OK
    rows = [(f["label"], f["summary"], f["path"], f["id"][:12]) for f in answer["folders"]]
    if rows or not answer["offered"]:
        out.table("Folders", ["label", "state", "path", "id"], rows)
    if not rows:
        out.line("no folders yet: add one with `commonsync folder add PATH`")
    if answer["offered"]:
        offered = [
            (o["label"], o["id"][:12], ", ".join(d[:7] for d in o["offered_by"]))
            for o in answer["offered"]
        ]
        out.table(
            "Offered to this device (accept with `commonsync folder accept LABEL PATH`)",
            ["label", "id", "offered by"],
            offered,
        )
    return EXIT_OK


def device_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    if args.device_command == "lost":
        return device_lost_command(args, client, out)
    if args.device_command == "add":
        answer = client.request(
            "POST",
            "/devices",
            {
                "device": args.device_id,
                "name": args.name,
                "addresses": args.address,
            },
        )
        if out.json:
            out.data(answer)
        else:
            out.line(
                f"added device {answer['id']}; share a folder with it with "
                "`commonsync share FOLDER DEVICE_ID`"
            )
        return EXIT_OK
    answer = client.request("GET", "/devices")
    if out.json:
        out.data(answer)
        return EXIT_OK
    rows = [
        (
            d["id"],
            d["name"],
            "paused" if d.get("paused") else "connected" if d["connected"] else "not connected",
            d["address"] or ", ".join(d["addresses"] + d["discovered"]),
            ", ".join(d["folders"]),
        )
        for d in answer["devices"]
    ]
    out.table("Devices", ["id", "name", "state", "address", "folders"], rows)
    if not rows:
        out.line("no devices yet: pair one with `commonsync device add DEVICE_ID`")
    if answer["pending"]:
        pending = [(p["id"], p["how"], ", ".join(p["addresses"])) for p in answer["pending"]]
        out.table(
            "Waiting to be accepted (`commonsync device add ID`)", ["id", "how", "address"], pending
        )
    return EXIT_OK


def relay_host_command(args: argparse.Namespace, home: Home, out: Output) -> int:
    """The hoster's side: the relay's identity and members, and running it."""
    from .relay.server import load_or_create, run_relay_process

    if args.relay_command == "serve":
        set_log_options(options_from(args))  # run_relay_process sets the log up with them
        return run_relay_process(home, args.listen, args.open, args.log_level)
    identity, config, created = load_or_create(home)
    if created and not out.json:
        out.errors.print(
            f"created the relay's key and configuration in {home.relay_config_file.parent}",
            markup=False,
        )
    if args.relay_command == "id":
        if out.json:
            out.data({"relay_id": str(identity.device_id)})
        else:
            print(identity.device_id)
        return EXIT_OK
    devices = []
    for text in args.device_id:
        try:
            devices.append(DeviceId.parse(text))
        except DeviceIdError as exc:
            raise UsageError(
                f"{text!r} is not a valid device ID: {exc}",
                "copy it from `commonsync id` on the device",
            ) from None
    if args.relay_command == "disallow":
        return _relay_disallow(config, devices, args.delegate, home, out)
    if args.delegate:
        return _relay_delegate(config, devices, home, out)
    added = [d for d in dict.fromkeys(devices) if d not in config.members]
    if added:
        config.members.extend(added)
        config.save(home.relay_config_file)
    if out.json:
        out.data({"added": [str(d) for d in added], "members": len(config.members)})
        return EXIT_OK
    for device in devices:
        if device in added:
            out.line(f"device {device} may use this relay")
        else:
            out.line(f"device {device} is already a member")
    if added:
        out.line(
            f"{plural(len(config.members), 'member')}; a running relay admits new ones at their "
            "next connection"
        )
    return EXIT_OK


def _relay_delegate(
    config: RelayServerConfig, devices: list[DeviceId], home: Home, out: Output
) -> int:
    """``relay allow --delegate``: the devices may vouch for others (and use the relay)."""
    added = [d for d in dict.fromkeys(devices) if d not in config.delegates]
    if added:
        config.delegates.extend(added)
        config.save(home.relay_config_file)
    if out.json:
        out.data({"delegates_added": [str(d) for d in added], "delegates": len(config.delegates)})
        return EXIT_OK
    for device in devices:
        state = "may now vouch for" if device in added else "already vouches for"
        out.line(f"device {device} {state} the devices this relay admits")
    if added:
        out.line(
            "a running relay takes a new delegate's vouches when its device next offers them "
            "(within 5 minutes); the relay learns device IDs only"
        )
    return EXIT_OK


def _relay_disallow(
    config: RelayServerConfig, devices: list[DeviceId], delegate_only: bool, home: Home, out: Output
) -> int:
    """``relay disallow [--delegate]``: members (and delegations) removed."""
    wanted = set(devices)
    delegations = [d for d in config.delegates if d in wanted]
    members = [] if delegate_only else [d for d in config.members if d in wanted]
    config.delegates = [d for d in config.delegates if d not in wanted]
    if not delegate_only:
        config.members = [d for d in config.members if d not in wanted]
    if delegations or members:
        config.save(home.relay_config_file)
    if out.json:
        out.data(
            {
                "members_removed": [str(d) for d in members],
                "delegations_withdrawn": [str(d) for d in delegations],
            }
        )
        return EXIT_OK
    for device in devices:
        what = []
        if device in members:
            what.append("is no longer a member")
        if device in delegations:
            what.append("no longer vouches for anyone")
        out.line(f"device {device} " + (" and ".join(what) or "was neither member nor delegate"))
    if delegations or members:
        out.line("a running relay closes the connections of devices it no longer admits")
    return EXIT_OK


def relay_command(args: argparse.Namespace, client: ControlClient, out: Output) -> int:
    """The device's side: the relays this device uses."""
    if args.relay_command == "add":
        answer = client.request("POST", "/relays", {"relay": args.relay})
        if out.json:
            out.data(answer)
        else:
            out.line(
                f"using relay {answer['id']} at {answer['address']}; devices with no working "
                "address are reached through it (`commonsync relay list` shows the connection)"
            )
        return EXIT_OK
    answer = client.request("GET", "/relays")
    if out.json:
        out.data(answer)
        return EXIT_OK
    if not answer["relays"]:
        out.line("no relays: add one with `commonsync relay add RELAYID@HOST:PORT`")
    out.table("Relays", ["id", "address", "state"], _relay_rows(answer["relays"], full_id=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
