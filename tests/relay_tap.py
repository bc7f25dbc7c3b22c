"""A community relay process that also appends every byte it forwards to a file, so that a
test can check that what crosses the relay is ciphertext.

    python -m tests.relay_tap --home DIR --listen HOST:PORT --tap FILE

It is ``commonsync relay serve`` (the same code, the same log) plus the tap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commonsyncd.home import Home
from commonsyncd.relay.server import run_relay_process


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tap", type=Path, required=True)
    args = parser.parse_args()
    with args.tap.open("ab", buffering=0) as tap:
        return run_relay_process(Home.at(args.home), args.listen, False, "info", tap=tap.write)


if __name__ == "__main__":
    sys.exit(main())
