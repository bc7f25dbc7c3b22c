"""The fault-injection scenarios of ``python -m bench reliability``: each function runs one trial
against real daemons and returns its :class:`Trial`. What each scenario does and what each
figure means is in ``bench/reliability.py``'s docstring; this module is the doing."""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# After .cluster, which puts the repository on sys.path for the tests' helpers.
from tests.tmpfs import TmpfsUnavailable, mounted

from .audit import audit, survey
from .cluster import LABEL, ROOT, Cluster, DaemonFailure, Device
from .editing import NAMES, Editor, Ledger
from .report import MiB

__all__ = ["SCENARIOS", "Plan", "Trial"]


@dataclass(frozen=True)
class Plan:
    """How big and how long each scenario's trials are (``Plan.full`` or ``Plan.quick``)."""

    quick: bool
    #: Longest wait for the devices to converge after the faults, per trial.
    converge_timeout: float = 60.0
    #: kill9: sequential steps, the chance of a kill after each, the concurrent phase's
    #: length (a uniform range, s) and how many kills it holds.
    sequential_steps: int = 4
    sequential_kill_chance: float = 0.4
    concurrent_seconds: tuple[float, float] = (4.0, 8.0)
    concurrent_kills: tuple[int, int] = (1, 2)
    #: Pause between two operations of one editor (uniform range, s).
    pause: tuple[float, float] = (0.05, 0.5)
    #: A new blob's payload size, bytes (log-uniform in this range).
    sizes: tuple[int, int] = (64, 1536 * 1024)
    #: restart: restarts in one storm, and the storm's editor's file sizes.
    restarts: int = 20
    storm_sizes: tuple[int, int] = (1024, 4 * MiB)
    #: diskfull: the tmpfs, what is filled before, and what the sender then writes.
    tmpfs_size: str = "32m"
    filler_bytes: int = 20 * MiB
    diskfull_files: int = 5
    diskfull_file_bytes: int = 4 * MiB
    #: slowlink: the file's size and the link's rate (bytes/s each way).
    slowlink_bytes: int = 20 * MiB
    slowlink_rate: int = 12_500

    @classmethod
    def full(cls) -> Plan:
        return cls(quick=False)

    @classmethod
    def small(cls) -> Plan:
        return cls(
            quick=True,
            sequential_steps=3,
            concurrent_seconds=(3.0, 5.0),
            concurrent_kills=(1, 1),
            sizes=(64, 512 * 1024),
            restarts=5,
            storm_sizes=(1024, 1 * MiB),
            slowlink_bytes=256 * 1024,
        )


@dataclass
class Trial:
    """One trial's outcome: the counts of the table, and enough detail to chase a finding."""

    scenario: str
    index: int
    seed: int
    faults: int = 0
    torn: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    spurious: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    expected_conflicts: list[str] = field(default_factory=list)
    converged: bool = False
    seconds: float | None = None
    versions_kept: int = 0
    #: Versions the ledger held owed at the end (what "lost" was checked against).
    owed: int = 0
    skipped: str = ""
    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    operations: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "index": self.index,
            "seed": self.seed,
            "faults": self.faults,
            "torn": self.torn,
            "lost": self.lost,
            "spurious_conflicts": self.spurious,
            "leaked_temporary_files": self.temps,
            "expected_conflicts": self.expected_conflicts,
            "converged": self.converged,
            "seconds_to_converge": self.seconds,
            "versions_kept": self.versions_kept,
            "versions_owed": self.owed,
            "skipped": self.skipped or None,
            "notes": self.notes,
            "events": self.events,
            "operations": self.operations,
            "elapsed": round(self.elapsed, 2),
        }


Scenario = Callable[[Plan, Trial, Path], None]
#: After convergence, how long temporary files have to disappear before they count as leaked.
SETTLE = 1.5


class _Clock:
    """Seconds since the trial started, for its event log."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> str:
        return f"{time.monotonic() - self.started:7.2f}"


@contextlib.contextmanager
def _cluster(trial: Trial, base: Path, names: tuple[str, ...] = ("a", "b")) -> Iterator[Cluster]:
    cluster = Cluster(base, names)
    try:
        yield cluster
    finally:
        trial.faults += cluster.faults
        cluster.close()


def _finish(trial: Trial, cluster: Cluster, ledger: Ledger, converged: float | None) -> None:
    """Survey every device and fill in the trial's findings. Conflict copies already in
    ``trial.spurious`` stay spurious; the scenario decides whether the others are."""
    if converged is not None:
        trial.converged, trial.seconds = True, converged
        time.sleep(SETTLE)
    surveys = [survey(d.name, d.folder) for d in cluster.devices]
    findings = audit(surveys, ledger)
    trial.torn, trial.lost, trial.temps = findings.torn, findings.lost, findings.temps
    trial.versions_kept = findings.versions_kept
    trial.expected_conflicts = [c for c in findings.conflicts if c not in trial.spurious]
    trial.operations = dict(ledger.operations)
    trial.owed = len(ledger.owed())


def _converge(trial: Trial, cluster: Cluster, timeout: float, what: str) -> float | None:
    outcome = cluster.converge(timeout)
    if outcome.seconds is None:
        trial.note(f"{what}: {outcome.reason}")
        trial.events.append(f"{what}: {outcome.reason}")
    return outcome.seconds


def _editors(
    cluster: Cluster, base: Path, ledger: Ledger, rng: random.Random, **options: Any
) -> dict[str, Editor]:
    return {
        d.name: Editor(
            d.name,
            d.folder,
            base / f"stage-{d.name}",
            ledger,
            random.Random(rng.random()),
            **options,
        )
        for d in cluster.devices
    }


def _restart(cluster: Cluster, device: Device, *, term: bool, down: float) -> None:
    if term:
        cluster.terminate(device)
    else:
        cluster.kill9(device)
    time.sleep(down)
    cluster.start_one(device)


# -- kill9 ---------------------------------------------------------------------------------------


def kill9(plan: Plan, trial: Trial, base: Path) -> None:
    rng = random.Random(trial.seed)
    clock = _Clock()
    ledger = Ledger()
    with _cluster(trial, base) as cluster:
        editors = _editors(cluster, base, ledger, rng, sizes=plan.sizes)
        cluster.init()
        cluster.start()
        a = cluster["a"]
        a.folder.mkdir(parents=True)
        for _ in range(3):
            editors["a"].step("write")
        cluster.share()
        converged = _converge(trial, cluster, plan.converge_timeout, "first sync")
        if converged is None:
            _finish(trial, cluster, ledger, None)
            return

        # Sequential: one edit, maybe a kill, everything converged before the next edit.
        for step in range(plan.sequential_steps):
            device = rng.choice(cluster.devices)
            trial.events.append(f"{clock()} {device.name}: {editors[device.name].step()}")
            if rng.random() < plan.sequential_kill_chance:
                time.sleep(rng.uniform(0.0, 0.6))
                victim = rng.choice(cluster.devices)
                trial.events.append(f"{clock()} kill -9 {victim.name}")
                _restart(cluster, victim, term=False, down=rng.uniform(0.0, 1.0))
            converged = _converge(trial, cluster, plan.converge_timeout, f"sequential {step}")
            if converged is None:
                trial.spurious = sorted({c for d in cluster.devices for c in _copies(d)})
                _finish(trial, cluster, ledger, None)
                return
            time.sleep(rng.uniform(0.0, 2.5))  # quiet: a racy window passes, or not
        trial.spurious = sorted({c for d in cluster.devices for c in _copies(d)})

        # Concurrent: both edit the same names while either daemon is killed and restarted.
        stop = threading.Event()
        threads = [e.spawn(stop, plan.pause) for e in editors.values()]
        duration = rng.uniform(*plan.concurrent_seconds)
        kills = sorted(
            (rng.uniform(0.0, duration), rng.choice(cluster.devices).name, rng.uniform(0.1, 2.0))
            for _ in range(rng.randint(*plan.concurrent_kills))
        )
        started = time.monotonic()
        try:
            for at, name, down in kills:
                time.sleep(max(0.0, started + at - time.monotonic()))
                trial.events.append(f"{clock()} kill -9 {name} (down {down:.2f} s)")
                _restart(cluster, cluster[name], term=False, down=down)
            time.sleep(max(0.0, started + duration - time.monotonic()))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        for editor in editors.values():
            trial.notes += editor.errors
            editor.cleanup()
        trial.events.append(f"{clock()} edits stop")
        converged = _converge(trial, cluster, plan.converge_timeout, "after the faults")
        _finish(trial, cluster, ledger, converged)


def _copies(device: Device) -> list[str]:
    return survey(device.name, device.folder).conflicts


# -- restart -------------------------------------------------------------------------------------


def restart(plan: Plan, trial: Trial, base: Path) -> None:
    """A storm of restarts of one daemon (the receiver's in even trials, the editing device's
    own in odd ones) while a person edits on device a."""
    rng = random.Random(trial.seed)
    clock = _Clock()
    ledger = Ledger()
    with _cluster(trial, base) as cluster:
        editors = _editors(cluster, base, ledger, rng, sizes=plan.storm_sizes)
        cluster.init()
        cluster.start()
        cluster["a"].folder.mkdir(parents=True)
        for _ in range(3):
            editors["a"].step("write")
        cluster.share()
        if _converge(trial, cluster, plan.converge_timeout, "first sync") is None:
            _finish(trial, cluster, ledger, None)
            return
        editor = editors["a"]  # a edits; the storm hits b (even trials) or a's own daemon
        target = cluster["b"] if trial.index % 2 == 0 else cluster["a"]
        trial.note(f"restarts {target.name} while {editor.writer} edits")
        stop = threading.Event()
        thread = editor.spawn(stop, (0.1, 0.6))
        try:
            for n in range(plan.restarts):
                time.sleep(rng.uniform(0.0, 1.5))
                term = rng.random() < 0.5
                trial.events.append(f"{clock()} {'SIGTERM' if term else 'kill -9'} {n + 1}")
                _restart(cluster, target, term=term, down=rng.uniform(0.0, 0.3))
        finally:
            stop.set()
            thread.join(timeout=10)
        trial.notes += editor.errors
        editor.cleanup()
        converged = _converge(trial, cluster, plan.converge_timeout, "after the storm")
        # One person edits: no edit is concurrent with another, so every copy is spurious.
        _finish(trial, cluster, ledger, converged)
        trial.spurious, trial.expected_conflicts = trial.expected_conflicts, []


# -- diskfull ------------------------------------------------------------------------------------


def diskfull(plan: Plan, trial: Trial, base: Path) -> None:
    try:
        with mounted(base / "disk", plan.tmpfs_size) as disk:
            _diskfull_on(plan, trial, base, disk)
    except TmpfsUnavailable as exc:
        trial.skipped = f"cannot mount tmpfs: {exc}"


def _diskfull_on(plan: Plan, trial: Trial, base: Path, disk: Path) -> None:
    rng = random.Random(trial.seed)
    ledger = Ledger()
    with _cluster(trial, base) as cluster:
        a, b = cluster["a"], cluster["b"]
        b.folder = disk / "b-files"
        sender = Editor(
            "a", a.folder, base / "stage-a", ledger, random.Random(rng.random()),
            names=tuple(f"big{n}.bin" for n in range(plan.diskfull_files)),
            sizes=(plan.diskfull_file_bytes, plan.diskfull_file_bytes + 1),
        )  # fmt: skip
        cluster.init()
        cluster.start()
        a.folder.mkdir(parents=True)
        cluster.share()
        if _converge(trial, cluster, plan.converge_timeout, "first sync") is None:
            _finish(trial, cluster, ledger, None)
            return
        assert b.process is not None
        pid = b.process.pid
        filler = disk / "filler"
        with filler.open("wb") as out:
            for _ in range(plan.filler_bytes // MiB):
                out.write(bytes(MiB))
        cluster.faults += 1
        for _ in range(plan.diskfull_files):
            sender.step("write")
        total = plan.diskfull_files * plan.diskfull_file_bytes
        trial.events.append(f"{total / MiB:.0f} MiB written on a; b's disk holds less")
        said = _wait_for_words(cluster, b, ("space", "full"), 30.0)
        trial.note(
            f"b's status said the disk is full: {said}"
            if said
            else f"b's status never said the disk is full ({cluster.state(b)[1]})"
        )
        time.sleep(3.0)
        filler.unlink()
        trial.events.append("space freed")
        converged = _converge(trial, cluster, 90.0, "after space was freed")
        if b.process.pid != pid:
            trial.note("b's daemon was restarted")
        _finish(trial, cluster, ledger, converged)
        trial.spurious, trial.expected_conflicts = trial.expected_conflicts, []


def _wait_for_words(
    cluster: Cluster, device: Device, words: tuple[str, ...], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, summary = cluster.state(device)
        if state == "error" and any(w in summary for w in words):
            return summary
        if cluster.exited():
            return ""
        time.sleep(0.25)
    return ""


# -- damaged-index -------------------------------------------------------------------------------

#: Commands and actions that name an index repair, if the CLI offers one.
_REPAIR = re.compile(r"repair|recover|rebuild|reindex|fsck|doctor")


def damaged_index(plan: Plan, trial: Trial, base: Path) -> None:
    rng = random.Random(trial.seed)
    ledger = Ledger()
    with _cluster(trial, base) as cluster:
        a, b = cluster["a"], cluster["b"]
        alice = Editor("a", a.folder, base / "stage-a", ledger, random.Random(rng.random()),
                       names=NAMES[:5], sizes=plan.sizes)  # fmt: skip
        bob = Editor("b", b.folder, base / "stage-b", ledger, random.Random(rng.random()),
                     names=("b-new0.txt", "b-new1.txt"), sizes=plan.sizes)  # fmt: skip
        cluster.init()
        cluster.start()
        a.folder.mkdir(parents=True)
        for _ in range(4):
            alice.step("write")
        cluster.share()
        if _converge(trial, cluster, plan.converge_timeout, "first sync") is None:
            _finish(trial, cluster, ledger, None)
            return
        cluster.terminate(b, fault=False)  # a clean stop: the damage is the fault
        for op in ("overwrite", "write"):
            trial.events.append(f"a: {alice.step(op)}")
        for _ in range(2):
            trial.events.append(f"b (stopped): {bob.step('write')}")
        trial.events.append(corrupt(b.home / "state.db", rng))
        cluster.faults += 1
        started = time.monotonic()
        how = _recover(plan, trial, cluster, b)
        trial.note(f"recovered: {how}" if how else "not recovered")
        trial.notes += _said_about_index(b.log)
        if how and _converge(trial, cluster, 5.0, "at the end") is not None:
            _finish(trial, cluster, ledger, time.monotonic() - started)
        else:
            _finish(trial, cluster, ledger, None)
        trial.spurious, trial.expected_conflicts = trial.expected_conflicts, []
        for editor in (alice, bob):
            editor.cleanup()


def corrupt(database: Path, rng: random.Random) -> str:
    """Overwrite a third of the pages (at least two) of a stopped daemon's SQLite index with
    random bytes; page 1, the header and the schema, is among them half the time."""
    with database.open("r+b") as db:
        header = db.read(100)
        size = int.from_bytes(header[16:18], "big") if len(header) >= 18 else 4096
        page = 65536 if size == 1 else (size or 4096)
        pages = max(1, database.stat().st_size // page)
        chosen = rng.sample(range(2, pages + 1), min(pages - 1, max(2, pages // 3)))
        if rng.random() < 0.5 or not chosen:
            chosen.append(1)
        for number in chosen:
            db.seek((number - 1) * page)
            db.write(rng.randbytes(page))
        db.flush()
        os.fsync(db.fileno())
    return f"state.db: pages {sorted(chosen)} of {pages} ({page} bytes each) overwritten"


def _recover(plan: Plan, trial: Trial, cluster: Cluster, b: Device) -> str:
    """Start the daemon on the damaged index and use what it offers, in this order: nothing
    (it recovers by itself), a restart (if its status says one rebuilds the index), a repair
    command of the CLI (found in ``commonsync --help``). Returns how it recovered, or ""."""
    timeout = plan.converge_timeout
    try:
        cluster.start_one(b)
        if _converge(trial, cluster, timeout, "on the damaged index") is not None:
            return "by itself (the daemon started and converged)"
        summary = cluster.state(b)[1]
        trial.note(f"b said: {summary}")
        if "restart" in summary and cluster.alive(b):
            cluster.terminate(b, fault=False)
            cluster.start_one(b)
            if _converge(trial, cluster, timeout, "after the restart its status asked for"):
                return "after a restart, as its status said"
    except DaemonFailure as exc:
        trial.note(str(exc))
    commands = repair_commands(b)
    if not commands:
        trial.note("`commonsync --help` offers no index repair command")
        return ""
    for words in commands:
        cluster.close()
        done = b.run(*words, check=False)
        trial.events.append(f"commonsync {' '.join(words)}: exit {done.returncode}")
        output = (done.stdout + done.stderr).strip().splitlines()
        shown = " | ".join(output[-3:])
        trial.note(f"`commonsync {' '.join(words)}` exited {done.returncode}: {shown}")
        try:
            cluster.start_one(b)
            if not cluster.alive(cluster["a"]):
                cluster.start_one(cluster["a"])
        except DaemonFailure as exc:
            trial.note(str(exc))
            continue
        if _converge(trial, cluster, timeout, f"after `commonsync {' '.join(words)}`"):
            return f"with `commonsync {' '.join(words)}`"
    return ""


_INDEX_WORDS = re.compile(r"damaged|malformed|corrupt|aside|rebuil|not a database", re.I)


def _said_about_index(log: Path) -> list[str]:
    """What the daemon logged about its index (the first three such lines)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [f"b logged: {line.strip()[:240]}" for line in lines if _INDEX_WORDS.search(line)][:3]


def repair_commands(device: Device) -> list[list[str]]:
    """The CLI's commands (or command actions) whose names say repair, recover, rebuild...,
    each with the folder's label where its usage asks for one positional argument."""
    found: list[list[str]] = []
    for command in _subcommands(device, []):
        if _REPAIR.search(command):
            found.append([command])
            continue
        for action in _subcommands(device, [command]):
            if _REPAIR.search(action):
                found.append([command, action])
    with_arguments = []
    for words in found:
        usage = device.run(*words, "--help", check=False).stdout
        line = usage.split("\n\n")[0].replace("\n", " ")
        positional = [t for t in re.findall(r"(?<![\[\w-])([A-Z][A-Z_]+)(?![\]\w])", line)]
        positional = [t for t in positional if t not in ("HOME",)]
        if len(positional) <= 1:
            with_arguments.append(words + ([LABEL] if positional else []))
    return with_arguments


def _subcommands(device: Device, words: list[str]) -> list[str]:
    text = device.run(*words, "--help", check=False).stdout
    section = text.split("positional arguments:", 1)
    if len(section) < 2:
        return []
    return re.findall(r"^ {4}(\w[\w-]*)", section[1].split("options:", 1)[0], re.MULTILINE)


# -- slowlink ------------------------------------------------------------------------------------


def slowlink(plan: Plan, trial: Trial, base: Path) -> None:
    """One file from a to b, b dialling a through ``tests.slowlink`` (a rate-limited TCP proxy
    on loopback) and a knowing no address of b's: every byte goes through the link."""
    rng = random.Random(trial.seed)
    ledger = Ledger()
    size, rate = plan.slowlink_bytes, plan.slowlink_rate
    limit = 3 * size / rate + 120
    proxy: subprocess.Popen[str] | None = None
    with _cluster(trial, base) as cluster:
        a = cluster["a"]
        try:
            cluster.init()
            cluster.start()
            a.folder.mkdir(parents=True)
            Editor(
                "a", a.folder, base / "stage-a", ledger, random.Random(rng.random()),
                names=("large.bin",), sizes=(size - 80, size - 79),
            ).step("write")  # fmt: skip
            proxy = subprocess.Popen(
                [sys.executable, "-m", "tests.slowlink", str(cluster.ports["a"]), str(rate)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            port = _first_line(proxy, 30.0)
            cluster.faults += 1
            trial.note(
                f"{size / 1024:.0f} KiB at {rate * 8 / 1000:.0f} kbit/s each way "
                f"(ideal {size / rate:.0f} s, bound {limit:.0f} s)"
            )
            cluster.share(via={"a": int(port), "b": None})
            converged = _converge(trial, cluster, limit, "through the slow link")
            _finish(trial, cluster, ledger, converged)
            trial.spurious, trial.expected_conflicts = trial.expected_conflicts, []
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait(timeout=10)


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().strip() if ready else ""
    if not line.isdigit():
        raise DaemonFailure(f"the slow-link proxy did not say its port within {timeout:.0f} s")
    return line


#: In the order they run; the names are what ``--scenario`` takes.
SCENARIOS: dict[str, Scenario] = {
    "kill9": kill9,
    "restart": restart,
    "diskfull": diskfull,
    "damaged-index": damaged_index,
    "slowlink": slowlink,
}


def run_trial(scenario: str, plan: Plan, trial: Trial, scratch: Path) -> Trial:
    """One trial in its own directory (removed after); a daemon that fails to start or stop,
    or a wait that gives up, is a non-converged trial with the reason in its notes."""
    base = scratch / f"{scenario}-{trial.index:03d}"
    base.mkdir(parents=True)
    started = time.monotonic()
    try:
        SCENARIOS[scenario](plan, trial, base)
    except (DaemonFailure, AssertionError, OSError, subprocess.SubprocessError) as exc:
        trial.converged, trial.seconds = False, None
        trial.note(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    finally:
        trial.elapsed = time.monotonic() - started
        _keep_logs(base, trial)
        shutil.rmtree(base, ignore_errors=True)
    return trial


def _keep_logs(base: Path, trial: Trial) -> None:
    """The daemons' last log lines of a trial that went wrong, into its notes."""
    if trial.converged and not (trial.torn or trial.lost or trial.spurious or trial.temps):
        return
    for log in sorted(base.glob("*.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        trial.events += [f"{log.stem} log: {line[:300]}" for line in lines[-8:]]
