"""``commonsync logs``, ``service`` and ``completion``: what running commonsync day to day
needs around the daemon (reading its log, starting it with the session or the machine,
completing commands in the shell), and how the command line reports its own usage errors
(:class:`Parser`), as text or as JSON."""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from commonsync import CommonsyncError

from .background import log_file
from .completion import SHELLS, script
from .control import ControlClient, DaemonNotRunningError
from .home import Home
from .logs import as_text, describe, journal_command
from .output import Output
from .service import Installed, ServiceError, install, render
from .terminal import visible

#: How often ``logs --follow`` looks for new lines.
FOLLOW_INTERVAL = 0.25


class OpsError(CommonsyncError):
    """A command here cannot do what was asked; one sentence, and a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ParseError(CommonsyncError):
    """A usage error found by the parser (an unknown option, a missing argument)."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser
        self.hint = f"see `{parser.prog} --help`"

    def print_text(self) -> None:
        """What argparse itself prints: the usage, then the error."""
        self.parser.print_usage(sys.stderr)
        print(f"{self.parser.prog}: error: {self}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are raised, not printed, so that ``--json``
    gets them as JSON like every other error (subcommands' parsers are of this class too:
    argparse makes them of their parent's class), and whose subcommands' ``--help`` says what
    they do (:class:`_Subcommands`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)

    def error(self, message: str) -> NoReturn:
        raise ParseError(message, self)


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose description is their help unless given one: argparse shows a
    subcommand's help only in its parent's list, so `commonsync folder add --help` would
    otherwise not say what the command does."""

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"]
        return super().add_parser(name, **kwargs)


def add_parsers(command: Any, common: argparse.ArgumentParser) -> None:
    """The commands of this module, made with the CLI's ``command`` factory."""
    logs = command("logs", "print the daemon's log: its last lines, or follow it with -f")
    logs.add_argument(
        "-n",
        "--lines",
        type=int,
        default=20,
        metavar="N",
        help="how many of the last lines to print (default: %(default)s)",
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)"
    )

    service = command("service", "run the daemon (or a relay) as a systemd service")
    actions = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    install_parser = actions.add_parser(
        "install",
        help="write the systemd unit (a user unit by default) and say how to enable it",
        description="Write the systemd unit that runs this installation's daemon: a user "
        "unit in ~/.config/systemd/user/ (started at login) by default. systemctl is not run: "
        "the commands to run are printed.",
        parents=[common],
    )
    show = actions.add_parser(
        "show", help="print the unit `service install` would write", parents=[common]
    )
    for parser in (install_parser, show):
        kind = parser.add_mutually_exclusive_group()
        kind.add_argument(
            "--system",
            action="store_true",
            help="a system unit in /etc/systemd/system/ running as --user with --home "
            "(for a machine that syncs with nobody logged in; run as root)",
        )
        kind.add_argument(
            "--relay",
            action="store_true",
            help="the community relay's system unit (`relay serve`, as user commonsync-relay)",
        )
        parser.add_argument(
            "--user",
            default="",
            metavar="NAME",
            help="with --system: the account it runs as (default: the one sudo was run by)",
        )
    install_parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="write the unit into DIR instead of systemd's directory (to package or look)",
    )
    install_parser.add_argument(
        "--force", action="store_true", help="replace a unit that exists with other contents"
    )

    completion = command("completion", "print a shell completion script (bash, zsh or fish)")
    completion.add_argument(
        "shell",
        choices=SHELLS,
        help="the shell: bash (source <(commonsync completion bash)), zsh, or fish",
    )


def ops_command(
    args: argparse.Namespace,
    home: Home,
    out: Output,
    build_parser: Callable[[], argparse.ArgumentParser],
) -> int:
    """Run ``logs``, ``service`` or ``completion`` (whose script is made from the parser
    ``build_parser`` returns: the whole command's)."""
    if args.command == "completion":
        print(script(args.shell, build_parser()), end="")
        return 0
    if args.command == "logs":
        return _logs(args, home, out)
    return _service(args, out)


# -- logs ------------------------------------------------------------------------------------


def _logs(args: argparse.Namespace, home: Home, out: Output) -> int:
    if args.lines < 0:
        raise OpsError(f"-n {args.lines}: give a number of lines, 0 or more")
    source, note = find_log(home, args.lines, args.follow)
    if note and not out.json:
        out.errors.print(note, markup=False)

    def emit(line: str) -> None:
        print(as_text(line) if out.rich else visible(line.rstrip("\n")), flush=True)

    if isinstance(source, list):  # the journal's, through journalctl
        return _journal(source, emit)
    for line in last_lines(source, args.lines):
        emit(line)
    if args.follow:
        for line in follow(source):
            emit(line)
    return 0


def _journal(command: list[str], emit: Callable[[str], None]) -> int:
    """Print what ``command`` (journalctl) prints, line by line; its exit code (0 when it was
    ended by Ctrl-C or a closed pipe, as ``logs -f`` is)."""
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"
        )
    except OSError as exc:
        raise OpsError(
            f"cannot run {command[0]}: {exc.strerror or exc}",
            f"read the journal another way: {' '.join(command)}",
        ) from None
    assert process.stdout is not None
    try:
        for line in process.stdout:
            emit(line)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait()
        process.stdout.close()
    return 0 if process.returncode in (0, -signal.SIGTERM) else 1


def find_log(home: Home, lines: int = 20, follow: bool = False) -> tuple[Path | list[str], str]:
    """The daemon's log file (or the journalctl command that prints its last ``lines``, and
    follows it), and a note to show with it (or ``""``).

    A running daemon says where its log goes (``/status``: ``--log-file``, the file its
    standard error was sent to, as ``commonsync join`` does, or the journal of its systemd
    unit); a daemon that is not running left its last background run's log in the data
    directory, if any."""
    home.require_initialised()
    try:
        status = ControlClient(home.socket_path, timeout=5).request("GET", "/status")
    except DaemonNotRunningError:
        status = None
    if status is not None:
        where = status.get("log") or {}
        if where.get("kind") == "file" and where.get("path"):
            return Path(where["path"]), ""
        command = journal_command(where, lines, follow)
        if command is not None and shutil.which(command[0]):
            return command, ""
        hints = {
            "journal": "read it with `journalctl --user -u commonsyncd -f` (without --user "
            "for a system service)",
            "terminal": "it is in the terminal where the daemon runs; start it with "
            "`--log-file PATH` to keep it in a file",
        }
        raise OpsError(
            f"the daemon logs to {describe(where)}, not to a file",
            hints.get(str(where.get("kind")), "start it with `--log-file PATH` to keep a file"),
        )
    fallback = log_file(home)
    if fallback.exists():
        return fallback, f"the daemon is not running; this is the log of its last run ({fallback})"
    raise DaemonNotRunningError(home.socket_path)


def last_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path``, read from its end (a log may be large)."""
    if count == 0:
        return []
    with _open(path) as f:
        f.seek(0, os.SEEK_END)
        position = f.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(64 * 1024, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def follow(
    path: Path, *, interval: float = FOLLOW_INTERVAL, stop: Callable[[], bool] = lambda: False
) -> Iterator[str]:
    """New lines of ``path`` as they are written, from its current end, until ``stop()``. A
    file that is truncated or moved away and made anew (logrotate) is read from its start."""
    f = _open(path)
    try:
        f.seek(0, os.SEEK_END)
        partial = b""
        while not stop():
            chunk = f.readline()
            if chunk:
                partial += chunk
                if partial.endswith(b"\n"):
                    yield partial.decode("utf-8", errors="replace").rstrip("\n")
                    partial = b""
                continue
            time.sleep(interval)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue  # moved away, not made anew yet
            if now.st_ino != os.fstat(f.fileno()).st_ino or now.st_size < f.tell():
                f.close()
                f = _open(path)
                partial = b""
    finally:
        f.close()


def _open(path: Path) -> Any:
    try:
        return open(path, "rb")  # closed by the callers
    except OSError as exc:
        raise OpsError(f"cannot read the log {path}: {exc.strerror or exc}") from None


# -- service ---------------------------------------------------------------------------------


def _service(args: argparse.Namespace, out: Output) -> int:
    kind = "system" if args.system else "relay" if args.relay else "user"
    home = _home_argument(args)
    user = _user(args.user) if kind == "system" else ""
    try:
        if args.service_command == "show":
            if kind == "system" and home is None:
                home = Path("/var/lib/commonsync")
            text, _ = render(kind, home=home, user=user or "commonsync")
            print(text, end="")
            return 0
        installed = install(kind, directory=args.dir, home=home, user=user, force=args.force)
    except ServiceError as exc:
        raise OpsError(str(exc), exc.hint) from None
    if out.json:
        out.data(
            {
                "unit": str(installed.path),
                "exec_start": installed.exec_start,
                "outcome": installed.outcome,
                "commands": installed.commands,
            }
        )
        return 0
    _say_installed(kind, installed, out)
    return 0


def _say_installed(kind: str, installed: Installed, out: Output) -> None:
    done = {
        "written": "wrote",
        "replaced": "replaced",
        "unchanged": "already installed, unchanged:",
    }[installed.outcome]
    out.line(f"{done} {installed.path} (it runs {installed.exec_start})")
    out.line("Now run:")
    for command in installed.commands:
        out.line(f"  {command}")
    if kind == "user":
        out.line(
            "Its log: `commonsync logs -f` or `journalctl --user -u commonsyncd -f`. To keep it "
            'running while you are logged out: loginctl enable-linger "$USER"'
        )
    elif kind == "relay":
        out.line("Its log: journalctl -u commonsync-relay -f")
    else:
        out.line("Its log: journalctl -u commonsyncd -f")


def _home_argument(args: argparse.Namespace) -> Path | None:
    """The home the person named (``--home`` or ``COMMONSYNC_HOME``), else None: the unit
    then lets the daemon find the platform's places itself."""
    home: Path | None = getattr(args, "home", None)
    if home is None and os.environ.get("COMMONSYNC_HOME"):
        home = Path(os.environ["COMMONSYNC_HOME"])
    return home


def _user(given: str) -> str:
    user = given or os.environ.get("SUDO_USER") or getpass.getuser()
    if user == "root":
        raise OpsError(
            "the daemon need not run as root, and should not: it would write peers' files as root",
            "give --user NAME, the account that owns the folders",
        )
    return user
