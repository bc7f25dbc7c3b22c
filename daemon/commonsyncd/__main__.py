"""commonsyncd: the sync daemon, in the foreground (`commonsync daemon` is the same).

    commonsyncd [--home DIR] [--log-level LEVEL] [--log-format auto|json|text] [--log-file PATH]

Stops cleanly on SIGTERM or SIGINT. Logs go to standard error (or --log-file): lines a person
reads on a terminal, one JSON object per line otherwise; that includes the one sentence that
says why it could not start, and a crash's traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from commonsync import CommonsyncError

from . import __version__
from .daemon import run_daemon
from .home import Home
from .logs import LogFileError, LogOptions, add_log_arguments, options_from, setup_logging
from .memory import return_large_buffers

log = logging.getLogger(__name__)

#: The exit code of a program stopped by an unexpected error (a bug): BSD's EX_SOFTWARE.
EXIT_CRASHED = 70


def run(
    home: Home,
    log_level: str = "info",
    *,
    watch: bool = True,
    log_options: LogOptions | None = None,
) -> int:
    try:
        setup_logging(log_level, log_options)
    except LogFileError as exc:
        print(f"commonsyncd: {exc}", file=sys.stderr)
        return 2
    return run_process(lambda: run_daemon(home, watch=watch), "commonsyncd")


def run_process(main: Callable[[], Awaitable[None]], name: str) -> int:
    """Run a long-lived trio program (the daemon, a relay) until it stops; its exit code.

    0 when it stopped on a signal, 2 when it could not start (a start-up error is one
    sentence, prefixed with ``name``), 130 on Ctrl-C, :data:`EXIT_CRASHED` on a bug. Each is
    logged, so that standard error holds nothing but log lines."""
    return_large_buffers()
    try:
        trio.run(main)
    except CommonsyncError as exc:
        log.error("%s: %s", name, exc)
        return 2
    except BaseExceptionGroup as group:
        # A task could not start (the port is taken, another daemon runs with this home):
        # say so in one sentence; anything else is a bug and keeps its traceback.
        leaves = _leaves(group)
        if not all(isinstance(e, CommonsyncError | KeyboardInterrupt) for e in leaves):
            log.critical("%s stopped on an unexpected error", name, exc_info=group)
            return EXIT_CRASHED
        errors = [e for e in leaves if isinstance(e, CommonsyncError)]
        if not errors:
            return 130
        log.error("%s: %s", name, errors[0])
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.critical("%s stopped on an unexpected error", name, exc_info=exc)
        return EXIT_CRASHED
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="commonsyncd",
        description="The commonsync sync daemon, in the foreground (stop it with SIGTERM or "
        "Ctrl-C). `commonsync daemon` is the same; `commonsync --help` lists what drives it.",
    )
    parser.add_argument("--version", action="version", version=f"commonsyncd {__version__}")
    parser.add_argument("--home", type=Path, help="keep keys, configuration and state here")
    add_log_arguments(parser)
    args = parser.parse_args(argv)
    options = options_from(args)
    try:
        setup_logging(args.log_level, options)
    except LogFileError as exc:
        print(f"commonsyncd: {exc}", file=sys.stderr)
        return 2
    try:
        home = Home.resolve(args.home)
        home.require_initialised()
    except CommonsyncError as exc:
        log.error("commonsyncd: %s", exc)
        return 2
    return run(home, args.log_level, log_options=options)


if __name__ == "__main__":
    sys.exit(main())
