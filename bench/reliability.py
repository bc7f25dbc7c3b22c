"""``python -m bench reliability``: fault injection against real daemons, measured.

Not a speed contest: each *trial* starts two fresh ``commonsyncd`` processes (``bench.cluster``:
their own ``--home``, 127.0.0.1 only, LAN discovery off), makes them share a folder, injects
faults while people edit (``bench.editing``), waits for convergence and audits every device's
disk (``bench.audit``). The scenarios (``bench.faults``):

kill9
    A sequential phase, then a concurrent one. *Sequential*: ``sequential_steps`` edits (4; 3
    with ``--quick``), each by a random device, each followed with a chance of 0.4 by a
    ``kill -9`` of a random device 0-0.6 s later and its restart 0-1 s after that; the next
    edit comes only once both devices have converged, after 0-2.5 s of quiet. No two edits are
    concurrent, so any conflict copy that exists at the end of this phase is *spurious*.
    *Concurrent*: both people edit the same seven names for 4-8 s (3-5 s), an operation every
    0.05-0.5 s (write a new file, overwrite, append in place, rename without replacing,
    delete), while one or two ``kill -9`` (one) hit a random device at random moments, each
    restarted 0.1-2 s later. Conflict copies made here are expected (not counted).
restart
    A storm of ``--restarts`` (20; 5) restarts of one daemon (the receiver's in even trials,
    the editing device's own in odd ones), SIGTERM or ``kill -9`` at random, each after 0-1.5 s
    of running and followed by a start 0-0.3 s later, while one person edits files of
    1 KiB-4 MiB (1 MiB) on one device. One person edits: every conflict copy is spurious.
diskfull
    b's folder on a 32 MiB tmpfs (``mount -t tmpfs``; without it the scenario is "skipped:
    cannot mount tmpfs"), 20 MiB of it taken by a filler outside the folder; a writes five
    4 MiB files, more than fits; after b's status says the disk is full (or 30 s), 3 s more,
    then the filler goes. b must converge without a restart (its pid is checked).
damaged-index
    b stopped (SIGTERM); meanwhile a overwrites a file and writes a new one, b's person
    writes two new files; then a third of the pages (at least two; page 1 half the time) of
    b's ``state.db`` are overwritten with random bytes. b is started and what the daemon
    offers is used, in order: nothing (it recovers by itself); one restart if its status
    says a restart rebuilds the index; a command of ``commonsync --help`` whose name (or
    action's) says repair, recover, rebuild, reindex, fsck or doctor. Not recovered: the
    trial does not converge. The notes say which way it went.
slowlink
    One file (``--slowlink-size``: 20 MiB; 256 KiB with ``--quick``) from a to b, b dialling a
    through ``python -m tests.slowlink``, a user-space TCP proxy on loopback that forwards
    each direction at ``--slowlink-rate`` (100 kbit/s), a knowing no address of b's. The time
    to converge is the transfer's; the bound is three times the link's ideal time + 120 s.

What each column counts (per scenario, and in total):

trials
    Trials run (a skipped one is listed in the notes instead).
faults
    Faults injected: each ``kill -9``, each SIGTERM of a storm, each full disk, each damaged
    index, each slow link.
torn
    Files whose content is not one complete written version. Every write is a self-describing
    blob (``bench.blobs``: a unique tag, the payload's length and BLAKE2b checksum); a whole
    version is a head blob and zero or more appended ones, each whole, its checksum right and
    its tag one an editor wrote. Checked on every device for every file outside
    ``.commonsync/`` but temporary files (conflict copies included) and for every file in
    ``.commonsync/versions/``, converged or not.
lost
    Versions owed that exist nowhere. The ledger (``bench.editing.Ledger``) records every
    version a person wrote (written, fsynced, in place), and which ones its own writer later
    overwrote, appended to or deleted while the file still held exactly that version on its
    device: those are *retired* (a person replacing their own work is no loss; neither is an
    append that landed in a file the daemon had already moved off its path). Every other
    version (replaced by the daemon, on its writer's device or elsewhere) is owed: its exact
    content must be a file on some device, at any path, in a conflict copy or in
    ``.commonsync/versions/``. That covers the last version each side wrote before it was
    killed and before the end, unless the same person overwrote it afterwards.
spurious conflicts
    Conflict copies (``*.sync-conflict-*``) that no concurrent edit explains: in kill9 those
    present at the end of the sequential phase, in every other scenario all of them (one
    person edits, or edits touch different files).
leaked temp files
    ``.NAME.cs-tmp-HEX`` files on any device 1.5 s after convergence (or at the end of a trial
    that did not converge).
non-converged
    Trials in which, within the bound (60 s after the last fault; 90 s after space returns;
    the slow link's own), the devices' folders did not come to hold the same files with the
    same contents (``.commonsync/`` and temporary files aside) with every daemon's folder
    "up to date"; a daemon that exits, fails to start or to stop within 20 s of SIGTERM, or a
    damaged index not recovered, also counts.
converge median / max
    Seconds from the end of the faults (the last restart done and the edits stopped; the
    filler removed; for slowlink, the folder accepted) until converged, over converged trials.

The seed (``--seed``, printed and stored; random by default) fixes every trial's schedule:
operations, names, sizes, contents, which device is hit and when. Trial ``i`` of a scenario
gets its own seed from (seed, scenario, i), so ``--seed S --scenario kill9 --trials i+1``
replays trial ``i`` as its last. The machine's timing is not fixed by any seed. ``--budget``
bounds the run: no trial starts once it is spent (a trial started finishes; each of its waits
is bounded as above). Scenarios take turns: one trial of each, then the next round.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .faults import SCENARIOS, Plan, Trial, run_trial
from .report import Benchmark, Budget, MiB, Options

__all__ = ["BENCHMARK", "ReliabilityReport", "run"]

#: Trials of kill9 in the full run and with --quick; every other scenario runs once.
TRIALS = {False: 40, True: 3}
#: The whole run's time budget, seconds, by default (the full run takes about 50 minutes, 28
#: of them the 20 MiB slow link).
BUDGET = {False: 90 * 60.0, True: 5 * 60.0}
COLUMNS = (
    "trials",
    "faults",
    "torn",
    "lost",
    "spurious conflicts",
    "leaked temp files",
    "non-converged",
    "converge median s",
    "converge max s",
)
#: The columns' headers, on two lines to keep the table narrow.
HEADERS = {
    "spurious conflicts": "spurious\nconflicts",
    "leaked temp files": "leaked\ntemp files",
    "non-converged": "non-\nconverged",
    "converge median s": "converge\nmedian s",
    "converge max s": "converge\nmax s",
}


def _size(text: str) -> int:
    """``20MiB``, ``256KiB``, ``1000000``: bytes."""
    units = {"kib": 1024, "mib": MiB, "gib": 1024 * MiB, "kb": 1000, "mb": 1000_000, "b": 1}
    lowered = text.strip().lower()
    for unit, scale in units.items():
        if lowered.endswith(unit):
            number, factor = lowered.removesuffix(unit).strip(), scale
            break
    else:
        number, factor = lowered, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 20MiB, 256KiB)") from None
    if value < 1024:
        raise argparse.ArgumentTypeError("a size of at least 1 KiB")
    return value


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be more than 0")
        return value

    return parse


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, help="fixes every trial's schedule (default: random)")
    parser.add_argument(
        "--budget",
        type=_positive(float),
        metavar="SECONDS",
        help="no trial starts once this is spent (default 5400; 300 with --quick)",
    )
    parser.add_argument(
        "--trials",
        type=_positive(int),
        metavar="N",
        help="trials of kill9, or of the --scenario named (default 40; 3 with --quick; "
        "the other scenarios run once)",
    )
    parser.add_argument("--scenario", choices=list(SCENARIOS), help="run only this scenario")
    parser.add_argument(
        "--restarts", type=_positive(int), metavar="N", help="restarts in a storm (20; 5 quick)"
    )
    parser.add_argument(
        "--slowlink-size",
        type=_size,
        metavar="SIZE",
        help="the file sent through the slow link (default 20MiB; 256KiB with --quick)",
    )
    parser.add_argument(
        "--slowlink-rate",
        type=_positive(float),
        metavar="KBIT",
        help="the slow link's rate each way, kbit/s (default 100)",
    )


def trial_seed(seed: int, scenario: str, index: int) -> int:
    material = f"{seed}:{scenario}:{index}".encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big")


@dataclass
class Row:
    """One scenario's figures (or the total's)."""

    name: str
    trials: list[Trial] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        ran = self.trials
        times = [t.seconds for t in ran if t.converged and t.seconds is not None]
        return {
            "trials": len(ran),
            "faults": sum(t.faults for t in ran),
            "torn": sum(len(t.torn) for t in ran),
            "lost": sum(len(t.lost) for t in ran),
            "spurious conflicts": sum(len(t.spurious) for t in ran),
            "leaked temp files": sum(len(t.temps) for t in ran),
            "non-converged": sum(not t.converged for t in ran),
            "converge median s": statistics.median(times) if times else None,
            "converge max s": max(times) if times else None,
        }


_ZERO = ("torn", "lost", "spurious conflicts", "leaked temp files", "non-converged")


@dataclass
class ReliabilityReport:
    name: str
    seed: int
    plan: Plan
    rows: list[Row]
    budget: float
    elapsed: float
    stopped_by_budget: list[str]

    @property
    def total(self) -> Row:
        return Row("total", [t for row in self.rows for t in row.trials])

    @property
    def ok(self) -> bool:
        """Whether every figure the acceptance target wants at 0 is 0 (skips aside)."""
        counts = self.total.counts()
        return counts["trials"] > 0 and all(counts[k] == 0 for k in _ZERO)

    def table(self) -> str:
        table = Table(
            title=f"Reliability: faults injected into real daemons (seed {self.seed})",
            box=box.SIMPLE_HEAD,
            title_justify="left",
        )
        table.add_column("scenario")
        for column in COLUMNS:
            table.add_column(HEADERS.get(column, column), justify="right")
        for row in [*self.rows, self.total]:
            counts = row.counts()
            cells = [_cell(counts[c]) for c in COLUMNS]
            if not row.trials and row.skipped:
                cells = ["-"] * len(COLUMNS)
            table.add_row(row.name, *cells, end_section=row.name == self.rows[-1].name)
        out = io.StringIO()
        console = Console(file=out, width=120, no_color=True, highlight=False, soft_wrap=False)
        console.print(table)
        lines = [line.rstrip() for line in out.getvalue().rstrip().splitlines()]
        lines += [f"  {note}" for note in self.notes()]
        return "\n".join(lines)

    def notes(self) -> list[str]:
        notes = [
            f"{'quick' if self.plan.quick else 'full'} plan; {self.elapsed / 60:.1f} of "
            f"{self.budget / 60:.0f} minutes of budget used"
        ]
        for name in self.stopped_by_budget:
            notes.append(f"{name}: the budget ran out before all its trials")
        for row in self.rows:
            notes += [f"{row.name}: skipped: {reason}" for reason in row.skipped]
            for trial in row.trials:
                if trial.scenario in ("damaged-index", "diskfull", "slowlink"):
                    notes += [f"{trial.scenario}: {n}" for n in trial.notes[:3]]
                notes += _findings(trial)
        verdict = "met" if self.ok else "NOT met"
        notes.append(
            f"acceptance target (0 torn, lost, spurious, leaked, non-converged): {verdict}"
        )
        return notes

    def as_json(self) -> dict[str, Any]:
        return {
            "title": "Reliability: faults injected into real daemons",
            "seed": self.seed,
            "parameters": {k: v for k, v in vars(self.plan).items() if not k.startswith("_")},
            "budget_seconds": self.budget,
            "elapsed_seconds": round(self.elapsed, 1),
            "stopped_by_budget": self.stopped_by_budget,
            "target_met": self.ok,
            "scenarios": {row.name: {**row.counts(), "skipped": row.skipped} for row in self.rows},
            "total": self.total.counts(),
            "trials": [t.as_json() for row in self.rows for t in row.trials],
        }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _findings(trial: Trial) -> list[str]:
    """One line per finding, naming the trial so that it can be replayed."""
    where = f"{trial.scenario} #{trial.index} (trial seed {trial.seed})"
    found = []
    for label, items in (
        ("torn", trial.torn),
        ("lost", trial.lost),
        ("spurious conflict copy", trial.spurious),
        ("leaked", trial.temps),
    ):
        found += [f"{where}: {label}: {item}" for item in items[:3]]
        if len(items) > 3:
            found.append(f"{where}: {label}: ... {len(items) - 3} more")
    if not trial.converged and not trial.skipped:
        reason = next((n for n in reversed(trial.notes) if n), "no reason recorded")
        found.append(f"{where}: not converged: {reason}")
    return found


def _summary(trial: Trial) -> str:
    if trial.skipped:
        return f"skipped: {trial.skipped}"
    outcome = (
        f"converged in {trial.seconds:.1f} s" if trial.converged and trial.seconds is not None
        else "NOT converged"
    )  # fmt: skip
    return (
        f"{outcome}; {trial.faults} faults; torn {len(trial.torn)}, lost {len(trial.lost)}, "
        f"spurious {len(trial.spurious)}, temp {len(trial.temps)} "
        f"({trial.elapsed:.0f} s)"
    )


def run(options: Options) -> ReliabilityReport:
    settings = options.settings
    quick = options.quick
    plan = Plan.small() if quick else Plan.full()
    if settings.get("restarts"):
        plan = replace(plan, restarts=settings["restarts"])
    if settings.get("slowlink_size"):
        plan = replace(plan, slowlink_bytes=settings["slowlink_size"])
    if settings.get("slowlink_rate"):
        plan = replace(plan, slowlink_rate=int(settings["slowlink_rate"] * 1000 / 8))
    seed = settings.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 1_000_000)
    chosen = settings.get("scenario")
    names: Sequence[str] = [chosen] if chosen else list(SCENARIOS)
    wanted = settings.get("trials")
    trials = {name: TRIALS[quick] if name == "kill9" else 1 for name in names}
    if wanted:
        trials[chosen or "kill9"] = wanted
    budget = Budget(settings.get("budget") or BUDGET[quick])
    rows = {name: Row(name) for name in names}
    stopped: list[str] = []
    print(
        f"  seed {seed}; trials: {', '.join(f'{n} {k}' for n, k in trials.items())}; "
        f"budget {budget.seconds:.0f} s",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="commonsync-reliability-"))
    try:
        for index in range(max(trials.values())):
            for name in names:
                if index >= trials[name]:
                    continue
                if budget.remaining() <= 0:
                    stopped += [n for n in names if trials[n] > index and n not in stopped]
                    break
                trial = Trial(name, index, trial_seed(seed, name, index))
                print(f"  {name} #{index} (trial seed {trial.seed})...", end=" ", flush=True)
                run_trial(name, plan, trial, scratch)
                print(_summary(trial), flush=True)
                for line in _findings(trial):
                    print(f"    {line}", flush=True)
                if trial.skipped:
                    rows[name].skipped.append(trial.skipped)
                else:
                    rows[name].trials.append(trial)
            else:
                continue
            break
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ReliabilityReport(
        "reliability", seed, plan, list(rows.values()), budget.seconds, budget.elapsed(), stopped
    )


BENCHMARK = Benchmark(
    "reliability",
    "fault injection into real daemons: torn, lost, spurious conflicts, leaked temp files, "
    "convergence (~50 min; not in `all`)",
    run,
    in_all=False,
    arguments=arguments,
)
