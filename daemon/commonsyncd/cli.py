"""The ``commonsync`` command.

Exit codes: 0 success, 1 the command ran but found a problem, 2 a usage or user error (the
message says what to change). User errors print one sentence and a hint, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio
from rich.console import Console

from commonsync import CommonsyncError

from .demo import run_demo

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="commonsync",
        description="Peer-to-peer, end-to-end encrypted file sync.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show the core at work: identity, folder key, chunking, sealing, index",
        description="Create a device identity and a folder key, chunk, hash and seal a folder "
        "as it would go to a relay, store the index in SQLite, then rebuild and check "
        "everything from the sealed bytes alone.",
    )
    demo.add_argument(
        "folder",
        nargs="?",
        type=Path,
        help="folder to process (read only; default: a generated sample folder)",
    )
    demo.add_argument(
        "--home",
        type=Path,
        help="where to keep the key, index and sealed output (default: a temporary directory)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.command == "demo":
            if args.folder is not None and not args.folder.is_dir():
                errors.print(f"{args.folder} is not a folder. Give the path of a directory.")
                return EXIT_USAGE
            return trio.run(run_demo, args.folder, args.home, console)
    except CommonsyncError as exc:
        errors.print(f"commonsync: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
