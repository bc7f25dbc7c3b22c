"""The daemon's log: one JSON object per line on standard error, so that journald, a file or
a script can read it. Messages name devices by their short IDs and folders by their labels;
they never carry keys or file contents."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType

from .terminal import json_visible


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


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchfiles says "N changes detected" at info level for every batch: noise here.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))
    # What Python itself would print on standard error goes through the log too, so that
    # every line there is JSON: warnings, an exception ending a thread (zeroconf's, a
    # worker's), one that cannot be raised (in a __del__, a finaliser).
    logging.captureWarnings(True)
    threading.excepthook = _thread_died
    sys.unraisablehook = _unraisable


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
