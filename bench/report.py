"""What every benchmark shares: timing under a budget, medians, ratios, the table, the JSON file.

The rules (bench/README.md): machines here are shared and noisy, so an absolute
time means little on its own. Every contender therefore runs in the same process run, on the
same data, alternating round by round (the order rotates so none is always first), and what is
reported is the median of the repetitions, the ratio to the reference, and the absolute
figures beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

#: Throughput is reported in decimal megabytes per second (1 MB = 10^6 bytes), as b2sum & co. do.
MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchmarkError(Exception):
    """A benchmark cannot run here at all (no disk space, say); the message says why."""


class Skipped(Exception):
    """One contender cannot run (tool missing, timed out); the others still do."""


@dataclass(frozen=True)
class Options:
    """The command-line options every benchmark understands."""

    quick: bool = False
    repeat: int = 3
    #: The options a benchmark adds for itself (``Benchmark.arguments``), by their dest.
    settings: Mapping[str, Any] = field(default_factory=dict)


class Report(Protocol):
    """What a benchmark returns: a name, one printed table, and its JSON."""

    name: str

    def table(self) -> str: ...

    def as_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as the dispatcher sees it: a name, one line, and the function to run."""

    name: str
    summary: str
    run: Callable[[Options], Report]
    #: Whether ``python -m bench`` (all) runs it; a long scenario runs only by its name.
    in_all: bool = True
    #: Adds the benchmark's own options to its subcommand's parser (they reach ``run`` as
    #: ``Options.settings``).
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


class Budget:
    """Wall-clock time a benchmark allows itself, so that a slow machine trims repetitions
    instead of running for ever."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


@dataclass(frozen=True)
class Timed:
    """What an action returns when it times itself, leaving out its set-up (starting
    processes, a handshake): these seconds are recorded instead of the whole call's."""

    seconds: float


@dataclass
class Contender:
    """One thing being timed. ``action`` gets the seconds it may take at most (for the
    subprocesses' timeouts) and raises :class:`Skipped` when it cannot run. The whole call is
    timed, unless it returns :class:`Timed`."""

    name: str
    nbytes: int
    action: Callable[[float], object]
    group: str = ""
    seconds: list[float] = field(default_factory=list)
    skipped: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def mb_per_s(self) -> float | None:
        median = self.median
        return None if median is None else self.nbytes / MB / median

    def skip(self, reason: str) -> Contender:
        self.skipped = reason
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name.strip(),
            "group": self.group,
            "bytes": self.nbytes,
            "seconds": self.seconds,
            "median_seconds": self.median,
            "mb_per_s": self.mb_per_s,
            "skipped": self.skipped or None,
        }


@dataclass(frozen=True)
class Ratio:
    """Throughput of ``numerator`` over that of ``denominator`` (> 1: numerator is faster)."""

    label: str
    numerator: Contender
    denominator: Contender
    goal: float | None = None

    @property
    def value(self) -> float | None:
        top, bottom = self.numerator.mb_per_s, self.denominator.mb_per_s
        return None if top is None or bottom is None else top / bottom

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "numerator": self.numerator.name.strip(),
            "denominator": self.denominator.name.strip(),
            "value": self.value,
            "goal": self.goal,
        }


def alternate(contenders: Sequence[Contender], repeat: int, budget: Budget) -> int:
    """Run each contender once per round, ``repeat`` rounds, rotating the order every round.

    The first round always runs; a further round starts only if the budget still holds the
    longest round so far. Returns the number of rounds run.
    """
    longest = 0.0
    for round_ in range(repeat):
        active = [c for c in contenders if not c.skipped]
        if not active:
            return round_
        if round_ > 0 and budget.remaining() < 1.1 * longest:
            print(
                f"  stopping after {round_} of {repeat} rounds: time budget of "
                f"{budget.seconds:.0f} s",
                flush=True,
            )
            return round_
        shift = round_ % len(active)
        started = time.monotonic()
        for contender in active[shift:] + active[:shift]:
            begin = time.perf_counter()
            try:
                outcome = contender.action(max(budget.remaining(), 30.0))
            except Skipped as exc:
                contender.skipped = str(exc)
                print(f"  {contender.name.strip()}: skipped, {exc}", flush=True)
                continue
            elapsed = time.perf_counter() - begin
            contender.seconds.append(outcome.seconds if isinstance(outcome, Timed) else elapsed)
        longest = max(longest, time.monotonic() - started)
        print(
            f"  round {round_ + 1}/{repeat} done in {time.monotonic() - started:.1f} s", flush=True
        )
    return repeat


@dataclass
class Result:
    """What one benchmark measured, ready to print and to store."""

    name: str
    title: str
    notes: list[str]
    contenders: list[Contender]
    ratios: list[Ratio]
    parameters: dict[str, Any]

    def table(self) -> str:
        """One plain-text table (no third-party dependency): contenders, then ratios."""
        width = max(len(c.name) for c in self.contenders) + 2
        lines = [self.title]
        for note in self.notes:
            lines += textwrap.wrap(note, 98, initial_indent="  ", subsequent_indent="    ")
        lines.append("")
        lines.append(f"{'contender':<{width}}{'MB/s':>8}{'median s':>10}  all runs (s)")
        group = None
        for c in self.contenders:
            if c.group != group:
                group = c.group
                lines.append(f"[{group}]")
            if c.median is None or c.mb_per_s is None:
                lines.append(f"{c.name:<{width}}{'-':>8}{'-':>10}  skipped: {c.skipped}")
                continue
            runs = " ".join(f"{s:.3f}" for s in c.seconds)
            lines.append(f"{c.name:<{width}}{c.mb_per_s:>8.0f}{c.median:>10.3f}  {runs}")
        lines.append("")
        label_width = max(len(r.label) for r in self.ratios) + 2
        lines.append(f"{'ratio (throughput)':<{label_width}}{'value':>7}  absolute")
        for r in self.ratios:
            goal = f", goal >= {r.goal:.2f}x" if r.goal is not None else ""
            if r.value is None:
                lines.append(f"{r.label:<{label_width}}{'n/a':>7}  (a contender was skipped)")
                continue
            lines.append(
                f"{r.label:<{label_width}}{r.value:>6.2f}x  "
                f"{r.numerator.mb_per_s:.0f} / {r.denominator.mb_per_s:.0f} MB/s{goal}"
            )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "notes": self.notes,
            "parameters": self.parameters,
            "results": [c.as_json() for c in self.contenders],
            "ratios": [r.as_json() for r in self.ratios],
        }


def machine() -> dict[str, Any]:
    """Enough about the machine to tell two result files apart."""
    cpu = "unknown"
    memory_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("pynacl", "pyfastcdc"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib * 1024 / GiB, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "packages": versions,
    }


def available_memory() -> int | None:
    """MemAvailable in bytes, or None where /proc/meminfo does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_json_path(names: Sequence[str], now: datetime) -> Path:
    stem = names[0] if len(names) == 1 else "all"
    return RESULTS_DIR / f"{stem}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"


def write_json(path: Path, results: Sequence[Report], command: str, now: datetime) -> Path:
    """One file per invocation, the same shape whatever ran, so runs can be compared."""
    payload = {
        "format": 1,
        "date": now.isoformat(timespec="seconds"),
        "command": command,
        "units": {"throughput": "MB/s, 1 MB = 10^6 bytes", "time": "seconds"},
        "machine": machine(),
        "benchmarks": {r.name: r.as_json() for r in results},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def utc_now() -> datetime:
    return datetime.now(UTC)
