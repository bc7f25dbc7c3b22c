"""The daemon's log (and a relay's): lines a person can read on a terminal, one JSON object
per line anywhere else, so that journald, a file or a script can read them. Messages name
devices by their short IDs and folders by their labels; they never carry keys or file
contents.

``--log-format auto`` (the default) picks by where the log goes: text when standard error is
a terminal, JSON otherwise (a pipe, a file, the journal). ``--log-file PATH`` writes the log
there instead of standard error (appended; reopened if logrotate moves it). Where the log
goes is remembered (:func:`destination`), so that ``commonsync status`` and ``commonsync
logs`` can say where to read it.
"""

from __future__ import annotations

import argparse
import calendar
import json
import logging
import logging.handlers
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from commonsync import CommonsyncError

from .terminal import json_visible, visible

LEVELS = ["debug", "info", "warning", "error"]
FORMATS = ["auto", "json", "text"]


class LogFileError(CommonsyncError):
    """The log file cannot be opened for writing."""


@dataclass(frozen=True)
class LogOptions:
    """How to log: ``format`` is one of :data:`FORMATS`; ``file`` None means standard error."""

    format: str = "auto"
    file: Path | None = None


#: What :func:`setup_logging` uses when given no options (see :func:`set_log_options`).
_defaults = LogOptions()
#: Where the log went at the last :func:`setup_logging`.
_destination: dict[str, str | None] = {"kind": "stderr", "path": None}


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, ``--log-format`` and ``--log-file``: the same three wherever a
    long-running program starts (``commonsyncd``, ``commonsync daemon``, ``relay serve``)."""
    parser.add_argument(
        "--log-level", default="info", choices=LEVELS, help="least important level logged"
    )
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=FORMATS,
        help="text lines or JSON lines (default: text on a terminal, JSON otherwise)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        metavar="PATH",
        help="append the log to this file instead of standard error",
    )


def options_from(args: argparse.Namespace) -> LogOptions:
    return LogOptions(getattr(args, "log_format", "auto"), getattr(args, "log_file", None))


def set_log_options(options: LogOptions) -> None:
    """Make ``options`` what later :func:`setup_logging` calls without options use: for a
    program whose own start calls ``setup_logging(level)`` (the relay's)."""
    global _defaults
    _defaults = options


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        # Names in messages come from peers: nothing in a line may act on a terminal.
        return json_visible(json.dumps(line, ensure_ascii=False))


class TextLines(logging.Formatter):
    """``2026-05-12 19:02:03 warning commonsync.node.peers: message``, in local time."""

    def format(self, record: logging.LogRecord) -> str:
        error = self.formatException(record.exc_info) if record.exc_info else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return text_line(when, record.levelname.lower(), record.name, record.getMessage(), error)


def text_line(when: str, level: str, logger: str, message: str, error: str = "") -> str:
    """One log entry as a person reads it; a traceback follows on its own lines. Every part
    goes through :func:`visible`: a newline in a peer's name cannot forge a log line."""
    line = f"{when} {visible(level):<7} {visible(logger)}: {visible(message)}"
    if error:
        line += "\n" + visible(error.rstrip("\n"), keep_lines=True)
    return line


def as_text(line: str) -> str:
    """A JSON log line (as :class:`JsonLines` writes it) as :func:`text_line`, in local time;
    a line that is not one is shown as it is (escaped)."""
    try:
        entry = json.loads(line)
        stamp = time.strptime(str(entry["time"])[:19], "%Y-%m-%dT%H:%M:%S")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_utc_seconds(stamp)))
        return text_line(
            when,
            str(entry["level"]),
            str(entry["logger"]),
            str(entry["message"]),
            str(entry.get("error", "")),
        )
    except (ValueError, KeyError, TypeError):
        return visible(line.rstrip("\n"))


def _utc_seconds(stamp: time.struct_time) -> float:
    return float(calendar.timegm(stamp))


def setup_logging(level: str = "info", options: LogOptions | None = None) -> None:
    """Send every log record (and what Python would print on standard error) to the log
    ``options`` describe; :class:`LogFileError` if its file cannot be written."""
    options = options or _defaults
    handler: logging.Handler
    if options.file is not None:
        handler = _file_handler(options.file)
        to_terminal = False
        _destination.update(kind="file", path=str(options.file.expanduser().absolute()))
    else:
        handler = logging.StreamHandler(sys.stderr)
        to_terminal = sys.stderr.isatty()
        _destination.update(_stderr_destination())
    text = options.format == "text" or (options.format == "auto" and to_terminal)
    handler.setFormatter(TextLines() if text else JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchfiles says "N changes detected" at info level for every batch: noise here.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))
    # What Python itself would print on standard error goes through the log too, so that
    # every line there is in one format: warnings, an exception ending a thread (zeroconf's,
    # a worker's), one that cannot be raised (in a __del__, a finaliser).
    logging.captureWarnings(True)
    threading.excepthook = _thread_died
    sys.unraisablehook = _unraisable


def destination() -> dict[str, str | None]:
    """Where the log goes: ``{"kind": "file", "path": ...}``, or kind ``journal`` (systemd's
    journal, with the ``unit`` and its ``scope``, user or system, when known), ``terminal``,
    or ``stderr`` (a pipe or anything else), with path None."""
    return dict(_destination)


def _file_handler(path: Path) -> logging.Handler:
    path = path.expanduser().absolute()
    try:
        # Created private (it names this device's folders and peers); appended to after.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        # Reopened when logrotate moves the file away, so no restart is needed after rotation.
        return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise LogFileError(
            f"cannot write the log file {path}: {exc.strerror or exc}; "
            "give another --log-file, or none to log on standard error"
        ) from None


def _stderr_destination() -> dict[str, str | None]:
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return {"kind": "stderr", "path": None}
    # systemd names the journal's stream in JOURNAL_STREAM (device:inode); a child that
    # inherited the variable but writes elsewhere does not match it.
    if os.environ.get("JOURNAL_STREAM") == f"{info.st_dev}:{info.st_ino}":
        try:
            unit = systemd_unit(Path("/proc/self/cgroup").read_text())
        except OSError:
            unit = None
        if unit is None:
            return {"kind": "journal", "path": None}
        name, scope = unit
        return {"kind": "journal", "path": None, "unit": name, "scope": scope}
    if sys.stderr.isatty():
        return {"kind": "terminal", "path": None}
    if stat.S_ISREG(info.st_mode):
        # Redirected to a file (`commonsync join` starts the daemon so): its path, on Linux.
        try:
            path = os.readlink(f"/proc/self/fd/{sys.stderr.fileno()}")
        except OSError:
            path = None
        if path is not None and os.path.isabs(path):
            return {"kind": "file", "path": path}
    return {"kind": "stderr", "path": None}


def systemd_unit(cgroup: str) -> tuple[str, str] | None:
    """The systemd service this process runs as, from ``/proc/self/cgroup``'s text: its
    name, and ``"user"`` (a user manager's unit) or ``"system"``; None outside a service."""
    for line in cgroup.splitlines():
        if not line.startswith("0::"):
            continue  # only the unified hierarchy names units reliably
        parts = line[3:].strip("/").split("/")
        services = [i for i, part in enumerate(parts) if part.endswith(".service")]
        if not services or parts[services[-1]].startswith("user@"):
            return None  # the user manager itself, or an app scope below it
        last = services[-1]
        user = any(part.startswith("user@") for part in parts[:last])
        return parts[last], "user" if user else "system"
    return None


def journal_command(where: dict[str, Any], lines: int, follow: bool) -> list[str] | None:
    """The ``journalctl`` command that prints the log of the service ``where`` describes (as
    :func:`destination` gives it: kind ``journal`` with its unit), only its messages (the
    lines the daemon wrote); None when the unit is not known."""
    unit = where.get("unit")
    if where.get("kind") != "journal" or not unit:
        return None
    command = ["journalctl", "--user"] if where.get("scope") == "user" else ["journalctl"]
    command += ["--unit", str(unit), "--output", "cat", "--no-pager", "--lines", str(lines)]
    return [*command, "--follow"] if follow else command


def describe(where: dict[str, Any]) -> str:
    """Where a log goes, in words (``where`` as :func:`destination` gives it)."""
    kind, path = where.get("kind"), where.get("path")
    if kind == "file" and path:
        return str(path)
    if kind == "journal":
        command = journal_command(where, 20, True)
        reads = " ".join(command) if command else "journalctl --user -u commonsyncd -f"
        return f"the systemd journal (`commonsync logs -f` or `{reads}` reads it)"
    if kind == "terminal":
        return "the terminal the daemon runs in"
    return "the daemon's standard error"


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("commonsyncd").error(
        "thread %s stopped on an unexpected error", name, exc_info=_info(args)
    )


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    logging.getLogger("commonsyncd").error(
        "%s: %r", args.err_msg or "exception ignored", args.object, exc_info=_info(args)
    )


def _info(
    args: threading.ExceptHookArgs | sys.UnraisableHookArgs,
) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if args.exc_value is None:
        return None
    return (args.exc_type, args.exc_value, args.exc_traceback)
