"""``commonsyncd``: the sync daemon's entry point."""

from __future__ import annotations

import sys


def main() -> int:
    # The daemon is built on the sync engine, which comes next (see the README's roadmap).
    # Until then this entry point says so plainly instead of pretending to run.
    print(
        "commonsyncd: the sync daemon is not part of this release yet.\n"
        "Try `commonsync demo` to see the encrypted core at work.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
