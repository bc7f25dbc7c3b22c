"""Run commonsync's benchmarks.

``python -m bench [BENCHMARK] [--quick] [--repeat N] [--json PATH]``

Without a benchmark name, lists the benchmarks and runs them all. Each prints one table; the
whole invocation writes one JSON file (default bench/results/<name or all>-<UTC time>.json).
See bench/README.md for what each measures and how to read the ratios.

A new benchmark is a module in bench/ defining ``BENCHMARK = Benchmark(name, summary, run)``,
added to ``BENCHMARKS`` below.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

from . import channel, reliability, removal, scan, slowlink, sync
from .report import Benchmark, BenchmarkError, Options, Report, default_json_path, utc_now
from .report import write_json as write_results

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        scan.BENCHMARK,
        channel.BENCHMARK,
        sync.BENCHMARK,
        slowlink.BENCHMARK,
        reliability.BENCHMARK,
        removal.BENCHMARK,
    )
}


def _repeat(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("needs at least one repetition")
    return value


def _parser() -> argparse.ArgumentParser:
    # The options are accepted before and after the benchmark's name. Their defaults are
    # SUPPRESS so that a subcommand's parser does not overwrite what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quick",
        action="store_true",
        default=argparse.SUPPRESS,
        help="smaller data (128 MiB instead of 1 GiB) for a fast look",
    )
    common.add_argument(
        "--repeat",
        type=_repeat,
        metavar="N",
        default=argparse.SUPPRESS,
        help="rounds to run, median reported (default 3)",
    )
    common.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="where to write the results (default bench/results/<name>-<UTC time>.json)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        parents=[common],
        epilog="Without BENCHMARK: list the benchmarks, then run them all (not the long ones).",
    )
    commands = parser.add_subparsers(dest="command", metavar="BENCHMARK")
    commands.add_parser("list", help="list the benchmarks and exit")
    commands.add_parser("all", help="run every benchmark but the long ones", parents=[common])
    for bench in BENCHMARKS.values():
        command = commands.add_parser(
            bench.name, help=bench.summary, description=bench.summary, parents=[common]
        )
        if bench.arguments is not None:
            bench.arguments(command)
    return parser


def _listing() -> str:
    width = max(len(name) for name in BENCHMARKS)
    return "\n".join(f"  {b.name:<{width}}  {b.summary}" for b in BENCHMARKS.values())


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every benchmark's clean-up (finally) still runs."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        print(_listing())
        return 0
    if args.command in (None, "all"):
        print(f"benchmarks:\n{_listing()}\n")
        names = [name for name, bench in BENCHMARKS.items() if bench.in_all]
    else:
        names = [args.command]
    shared = {"command", "quick", "repeat", "json"}
    options = Options(
        quick=getattr(args, "quick", False),
        repeat=getattr(args, "repeat", 3),
        settings={k: v for k, v in vars(args).items() if k not in shared},
    )
    started = utc_now()
    signal.signal(signal.SIGTERM, _terminate)

    results: list[Report] = []
    failed = False
    try:
        for name in names:
            print(f"== {name}{' (quick)' if options.quick else ''}", flush=True)
            try:
                result = BENCHMARKS[name].run(options)
            except BenchmarkError as exc:
                print(f"{name}: cannot run: {exc}", file=sys.stderr)
                failed = True
                continue
            results.append(result)
            print(f"\n{result.table()}\n", flush=True)
            # A report that judges its own figures (reliability's targets) fails the run.
            failed = failed or getattr(result, "ok", True) is False
    except KeyboardInterrupt:
        print(
            "\ninterrupted: temporary files and processes cleaned up, no results written",
            file=sys.stderr,
        )
        return 130

    if results:
        path = getattr(args, "json", None) or default_json_path(names, started)
        command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
        written = write_results(path, results, command, started)
        print(f"results written to {written}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
