"""``commonsyncd``: the sync daemon, in the foreground (``commonsync daemon`` is the same).

    commonsyncd [--home DIR] [--log-level LEVEL]

Stops cleanly on SIGTERM or SIGINT. Logs go to standard error, one JSON object per line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from commonsync import CommonsyncError

from .daemon import run_daemon
from .home import Home
from .logs import setup_logging


def run(home: Home, log_level: str = "info", *, watch: bool = True) -> int:
    setup_logging(log_level)
    try:
        trio.run(lambda: run_daemon(home, watch=watch))
    except CommonsyncError as exc:
        print(f"commonsyncd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="commonsyncd", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="keep keys, configuration and state here")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    try:
        home = Home.resolve(args.home)
        home.require_initialised()
    except CommonsyncError as exc:
        print(f"commonsyncd: {exc}", file=sys.stderr)
        return 2
    return run(home, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
