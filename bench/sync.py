"""Workloads W1-W4, R1 and M1: two commonsync daemons against two Syncthing instances and rsync,
on the same data, in the same run, alternating.

Each round starts every system afresh (new homes, new folders): two commonsync daemons
(``tests.daemons``: the real executables, ``--home`` each, 127.0.0.1, discovery off) paired
and sharing an empty folder; two Syncthing instances (``bench.syncthing``) likewise. The data is
written once into a pool, copied next to A's folder (untimed), then renamed into it: the clock
starts at the rename and stops when every file is on B with A's size and mtime (polled with
``stat``); the content is then checked by hash (untimed) and a mismatch fails the run.
Syncthing is asked to scan right after the rename (its watcher waits 10 s by default); the
commonsync daemon is left to its watcher, as a person would.

- W1: one file (1 GiB; 128 MiB with --quick), initial sync.
- W2: 10,000 files of 4 KiB in 100 directories (1,000 in 10 with --quick), initial sync.
- W3: after W1, 1 MiB overwritten in the middle of the file: time, and bytes A sent.
- W4: a new 1 KiB file on A, until it is on B (20 samples; p50/p95), nothing triggered by hand;
  Syncthing with its default watcher delay (fewer samples: each waits 10 s) and with 1 s.
- R1: CPU seconds per minute of each daemon, idle, with W2's files in sync.
- M1: peak RSS (VmHWM) of each daemon after W1 and after W2.
- X1: W1 between two commonsync daemons that have no address for each other, through a
  community relay (``commonsync relay serve`` on 127.0.0.1, both devices members): its time,
  and its ratio to W1 direct.

rsync runs ``rsync -a`` from A's folder to a fresh directory (W1, W2) and
``rsync -a --inplace --no-whole-file --stats`` for W3, whose "Total bytes sent" it reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .report import Benchmark, BenchmarkError, Budget, GiB, MiB, Options, Skipped

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the daemons harness lives with the tests
    sys.path.insert(0, str(ROOT))

from tests.daemons import Device, pair_and_share, wait_for  # noqa: E402
from tests.relays import RelayProcess  # noqa: E402

#: The whole benchmark's time budget at full size (BENCHMARKS.md: under 20 minutes).
BUDGET = 17 * 60
QUICK_BUDGET = 5 * 60
#: Longest one sync may take before the run counts as failed.
SYNC_TIMEOUT = 300.0
LABEL = "bench"


# -- the systems ---------------------------------------------------------------------------------


class System(Protocol):
    name: str
    folder_a: Path
    folder_b: Path

    def start(self) -> None: ...

    def changed(self) -> None:
        """A's folder changed (the benchmark says so where the system would not notice soon)."""

    def bytes_sent(self) -> int | None: ...

    def pids(self) -> list[int]: ...

    def stop(self) -> None: ...


class Commonsync:
    name = "commonsync"

    def __init__(self, base: Path) -> None:
        self.a, self.b = Device(base, "a"), Device(base, "b")
        self.folder_a, self.folder_b = self.a.folder, self.b.folder

    def start(self) -> None:
        for device in (self.a, self.b):
            device.init("--listen", "127.0.0.1:0", "--no-discovery")
            device.start()
        pair_and_share(self.a, self.b, LABEL)
        wait_for(lambda: self.b.folder_state(LABEL)["state"] == "up to date", "b to be ready")

    def changed(self) -> None:
        pass  # the daemon's watcher sees it

    def bytes_sent(self) -> int | None:
        return sum(d["bytes_sent"] for d in self.a.status()["devices"])  # type: ignore[no-any-return]

    def pids(self) -> list[int]:
        return [d.process.pid for d in (self.a, self.b) if d.process is not None]

    def stop(self) -> None:
        for device in (self.a, self.b):
            if device.process is not None:
                device.stop()


class RelayedCommonsync(Commonsync):
    """Two commonsync daemons with no address for each other, meeting through a relay."""

    name = "commonsync via relay"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.relay = RelayProcess(base)

    def start(self) -> None:
        for device in (self.a, self.b):
            device.init("--listen", "127.0.0.1:0", "--no-discovery")
            device.start()
        self.relay.init(self.a.device_id, self.b.device_id)
        self.relay.start()
        for device, other in ((self.a, self.b), (self.b, self.a)):
            device.run("relay", "add", self.relay.address)
            device.run("device", "add", other.device_id, "--name", other.name)
        wait_for(
            lambda: self.a.connected_to(self.b) and self.b.connected_to(self.a),
            "a session through the relay",
        )
        via = {d["id"]: d["via"] for d in self.b.status()["devices"]}
        if via.get(self.a.device_id) != "relay":
            raise BenchmarkError(f"the session is not through the relay: {via}")
        self.a.folder.mkdir(exist_ok=True)
        self.a.run("folder", "add", str(self.a.folder), "--label", LABEL)
        self.a.run("share", LABEL, self.b.device_id)
        wait_for(lambda: bool(self.b.status()["offered_folders"]), "the offer to reach b")
        self.b.run("folder", "accept", LABEL, str(self.b.folder))
        wait_for(lambda: self.b.folder_state(LABEL)["state"] == "up to date", "b to be ready")

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.relay.process is not None:
                self.relay.stop()


class Syncthing:
    def __init__(self, base: Path, *, watcher_delay: float = 10.0, name: str = "syncthing") -> None:
        from .syncthing import SyncthingPair

        self.name = name
        self.folder_a, self.folder_b = base / "a-files", base / "b-files"
        for folder in (self.folder_a, self.folder_b):
            folder.mkdir(parents=True, exist_ok=True)
        self._pair = SyncthingPair(base, self.folder_a, self.folder_b, watcher_delay=watcher_delay)
        self._trigger = True

    def start(self) -> None:
        self._pair.__enter__()

    def changed(self) -> None:
        if self._trigger:
            # Its REST scan call returns when the scan is done; the sync runs meanwhile.
            threading.Thread(target=self._pair.rescan, args=("a",), daemon=True).start()

    def bytes_sent(self) -> int | None:
        return self._pair.bytes_sent("a")

    def pids(self) -> list[int]:
        return self._pair.pids()

    def stop(self) -> None:
        self._pair.__exit__(None, None, None)


# -- data and completion ---------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            out.write(block)
            left -= len(block)


def write_small_files(root: Path, count: int, directories: int, size: int = 4096) -> None:
    for n in range(count):
        path = root / f"dir{n % directories:03}" / f"file{n:05}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


#: The tools' own directories, and the marks of their temporary files.
_TOOL_NAMES = frozenset({".commonsync", ".stfolder", ".stversions"})
_TEMP_MARKS = (".syncthing.", ".cs-tmp-")


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (outside the tools' own directories): size and mtime."""
    found: dict[str, tuple[int, int]] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if (
                entry.name in (".commonsync", ".stfolder", ".stversions")
                or ".syncthing." in entry.name
            ):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    relative = os.path.relpath(entry.path, root)
                    found[relative] = (st.st_size, st.st_mtime_ns // 10**9)
            except FileNotFoundError:
                continue  # a temporary file renamed meanwhile
    return found


def digest_tree(root: Path, paths: Iterator[str] | list[str]) -> dict[str, str]:
    digests = {}
    for relative in paths:
        h = hashlib.blake2b()
        with (root / relative).open("rb") as stream:
            while block := stream.read(8 * MiB):
                h.update(block)
        digests[relative] = h.hexdigest()
    return digests


def wait_identical(a: Path, b: Path, timeout: float = SYNC_TIMEOUT) -> float:
    """Seconds until B lists A's files with A's sizes and mtimes (whole seconds: Syncthing
    keeps mtimes to the second on some file systems); then the contents are compared."""
    started = time.perf_counter()
    want = listing(a)
    deadline = time.monotonic() + timeout
    while listing(b) != want:
        if time.monotonic() > deadline:
            missing = len(set(want) - set(listing(b)))
            raise Skipped(f"not in sync after {timeout:.0f} s ({missing} files missing)")
        time.sleep(0.01 if len(want) < 100 else 0.05)
    elapsed = time.perf_counter() - started
    if digest_tree(a, list(want)) != digest_tree(b, list(want)):
        raise BenchmarkError(f"{b} has A's file names and sizes but not its contents")
    return elapsed


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the workloads ---------------------------------------------------------------------------------


@dataclass
class Sizes:
    big: int
    small_files: int
    small_dirs: int
    latency_samples: int
    slow_latency_samples: int
    idle_seconds: float

    @classmethod
    def of(cls, options: Options) -> Sizes:
        if options.quick:
            return cls(128 * MiB, 1000, 10, 10, 2, 15.0)
        return cls(1 * GiB, 10_000, 100, 20, 5, 60.0)


@dataclass
class Measures:
    """Everything measured for one system, by workload: lists of repetitions."""

    values: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def median(self, key: str) -> float | None:
        found = self.values.get(key)
        return statistics.median(found) if found else None


@contextlib.contextmanager
def running(factory: Callable[[Path], System], scratch: Path) -> Iterator[System]:
    base = Path(tempfile.mkdtemp(dir=scratch))
    system = factory(base)
    try:
        system.start()
        yield system
    finally:
        system.stop()
        shutil.rmtree(base, ignore_errors=True)


def move_in(staged: Path, folder: Path) -> None:
    """Rename everything in ``staged`` into ``folder`` (the clock starts after this)."""
    for entry in staged.iterdir():
        os.rename(entry, folder / entry.name)


def big_file_round(system: System, pool: Path, measures: Measures) -> None:
    """W1 then W3 (and M1 after W1) on one running pair."""
    staged = system.folder_a.parent / "staged"
    staged.mkdir()
    shutil.copyfile(pool / "big.bin", staged / "big.bin")
    before = system.bytes_sent() or 0
    move_in(staged, system.folder_a)
    system.changed()
    measures.add("W1", wait_identical(system.folder_a, system.folder_b))
    measures.add("W1 sent MiB", ((system.bytes_sent() or 0) - before) / MiB)
    for n, pid in enumerate(system.pids()):
        measures.add(f"M1 W1 {'AB'[n]}", peak_rss_mib(pid))
    time.sleep(1.5)  # let the index settle (and Syncthing's mtime granularity pass)
    before = system.bytes_sent() or 0
    overwrite_middle(system.folder_a / "big.bin")
    system.changed()
    measures.add("W3", wait_identical(system.folder_a, system.folder_b))
    time.sleep(0.5)
    measures.add("W3 sent MiB", ((system.bytes_sent() or 0) - before) / MiB)


def overwrite_middle(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as stream:
        stream.seek(size // 2)
        stream.write(os.urandom(MiB))
    future = time.time() + 2  # a new mtime whatever the file system's granularity
    os.utime(path, (future, future))


def small_files_round(system: System, pool: Path, measures: Measures, idle: float) -> None:
    """W2, then M1 after W2, then (``idle`` seconds, if any) R1: idle CPU."""
    staged = system.folder_a.parent / "staged"
    shutil.copytree(pool / "small", staged)
    move_in(staged, system.folder_a)
    system.changed()
    measures.add("W2", wait_identical(system.folder_a, system.folder_b))
    for n, pid in enumerate(system.pids()):
        measures.add(f"M1 W2 {'AB'[n]}", peak_rss_mib(pid))
    if not idle:
        return
    time.sleep(5)  # let post-sync work finish before measuring idleness
    pids = system.pids()
    before = [cpu_seconds(p) for p in pids]
    time.sleep(idle)
    for n, (pid, start) in enumerate(zip(pids, before, strict=True)):
        measures.add(f"R1 {'AB'[n]}", (cpu_seconds(pid) - start) * 60 / idle)


def latency_round(system: System, samples: int, measures: Measures, key: str) -> None:
    """W4: nothing is triggered by hand."""
    for n in range(samples):
        path = system.folder_a / f"new-{n}.txt"
        content = os.urandom(1024)
        started = time.perf_counter()
        path.write_bytes(content)
        target = system.folder_b / path.name
        deadline = time.monotonic() + 60
        while not (target.exists() and target.read_bytes() == content):
            if time.monotonic() > deadline:
                raise Skipped(f"{path.name} did not arrive within 60 s")
            time.sleep(0.005)
        measures.add(key, time.perf_counter() - started)
        time.sleep(0.2)


def rsync_rounds(pool: Path, scratch: Path, measures: Measures) -> None:
    from .syncthing import ensure_tool

    try:
        ensure_tool("rsync", "rsync")
    except Skipped as exc:
        measures.skipped["rsync"] = str(exc)
        return
    base = Path(tempfile.mkdtemp(dir=scratch))
    try:
        source, target = base / "src", base / "dst"
        source.mkdir()
        shutil.copyfile(pool / "big.bin", source / "big.bin")
        measures.add("W1", timed(["rsync", "-a", f"{source}/", f"{target}/"]))
        overwrite_middle(source / "big.bin")
        started = time.perf_counter()
        done = subprocess.run(
            ["rsync", "-a", "--inplace", "--no-whole-file", "--stats", f"{source}/", f"{target}/"],
            capture_output=True,
            text=True,
            check=True,
            timeout=SYNC_TIMEOUT,
        )
        measures.add("W3", time.perf_counter() - started)
        sent = re.search(r"Total bytes sent: ([\d,.]+)", done.stdout)
        if sent:
            measures.add("W3 sent MiB", int(re.sub(r"[,.]", "", sent.group(1))) / MiB)
        shutil.rmtree(source)
        shutil.rmtree(target)
        shutil.copytree(pool / "small", source)
        measures.add("W2", timed(["rsync", "-a", f"{source}/", f"{target}/"]))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=SYNC_TIMEOUT, capture_output=True)
    return time.perf_counter() - started


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class SyncResult:
    name: str
    title: str
    notes: list[str]
    systems: dict[str, Measures]
    parameters: dict[str, Any]

    ROWS = (
        ("W1", "W1 initial sync, 1 big file (s)"),
        ("W1 sent MiB", "   bytes A sent (MiB)"),
        ("W2", "W2 initial sync, small files (s)"),
        ("W3", "W3 1 MiB changed in the big file (s)"),
        ("W3 sent MiB", "   bytes A sent (MiB)"),
        ("W4 p50", "W4 new 1 KiB file, p50 (s)"),
        ("W4 p95", "W4 new 1 KiB file, p95 (s)"),
        ("R1 A", "R1 idle CPU s/min, A"),
        ("R1 B", "R1 idle CPU s/min, B"),
        ("M1 W1 A", "M1 peak RSS after W1, A (MiB)"),
        ("M1 W1 B", "M1 peak RSS after W1, B (MiB)"),
        ("M1 W2 A", "M1 peak RSS after W2, A (MiB)"),
        ("M1 W2 B", "M1 peak RSS after W2, B (MiB)"),
        ("X1", "X1 W1 through a relay (s)"),
    )

    def cell(self, system: str, key: str) -> float | None:
        measures = self.systems.get(system)
        return None if measures is None else measures.median(key)

    def table(self) -> str:
        names = list(self.systems)
        lines = [self.title, *("  " + n for n in self.notes), ""]
        header = f"{'workload':<38}" + "".join(f"{n:>16}" for n in names)
        header += "".join(f"{'cs / ' + n:>20}" for n in names[1:])
        lines.append(header)
        for key, label in self.ROWS:
            values = [self.cell(n, key) for n in names]
            if all(v is None for v in values):
                continue
            row = f"{label:<38}" + "".join(f"{_fmt(v):>16}" for v in values)
            ours = values[0]
            for other in values[1:]:
                ratio = ours / other if ours is not None and other else None
                row += f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>20}"
            lines.append(row)
        relayed, direct = self.cell(names[0], "X1"), self.cell(names[0], "W1")
        if relayed is not None and direct:
            lines.append(f"{'   X1 / W1 direct':<38}{relayed / direct:>15.2f}x")
        for name, measures in self.systems.items():
            for what, reason in measures.skipped.items():
                lines.append(f"  {name}: {what} skipped: {reason}")
        lines.append(
            "  (ratios: commonsync's median over the other's; below 1 is better for time, "
            "bytes, CPU and memory)"
        )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "notes": self.notes,
            "parameters": self.parameters,
            "systems": {
                name: {
                    "runs": m.values,
                    "medians": {k: m.median(k) for k in m.values},
                    "skipped": m.skipped,
                }
                for name, m in self.systems.items()
            },
        }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def run(options: Options) -> SyncResult:
    sizes = Sizes.of(options)
    budget = Budget(QUICK_BUDGET if options.quick else BUDGET)
    scratch = Path(tempfile.mkdtemp(prefix="commonsync-bench-sync-"))
    systems: dict[str, Callable[[Path], System]] = {"commonsync": Commonsync}
    syncthing_reason = ""
    try:
        from .syncthing import ensure_syncthing

        ensure_syncthing()
        systems["syncthing"] = Syncthing
    except Skipped as exc:
        syncthing_reason = str(exc)
        print(f"  syncthing: skipped, {exc}", flush=True)
    measures = {name: Measures() for name in [*systems, "rsync"]}
    if syncthing_reason:
        measures.pop("syncthing", None)
    try:
        pool = scratch / "pool"
        print(
            f"  writing the data: {sizes.big / MiB:.0f} MiB file, {sizes.small_files} small files",
            flush=True,
        )
        write_random_file(pool / "big.bin", sizes.big)
        write_small_files(pool / "small", sizes.small_files, sizes.small_dirs)
        order = list(systems)
        for round_ in range(options.repeat):
            if round_ and budget.remaining() < budget.elapsed() / round_ * 1.1:
                print(f"  stopping after {round_} rounds: time budget", flush=True)
                break
            shift = round_ % len(order)
            idle = sizes.idle_seconds if round_ == 0 else 0.0  # R1 once per system
            for name in order[shift:] + order[:shift]:
                print(f"  round {round_ + 1}: {name}", flush=True)
                m = measures[name]
                _guarded(m, "W1/W3", _big, systems[name], pool, scratch, m)
                _guarded(m, "W2/R1", _small, systems[name], pool, scratch, m, idle)
                if name == "commonsync":
                    _guarded(m, "X1", _relayed, pool, scratch, m)
            print(f"  round {round_ + 1}: rsync", flush=True)
            rsync_rounds(pool, scratch, measures["rsync"])
        # W4: latency, nothing triggered by hand.
        print("  W4: latency", flush=True)
        m = measures["commonsync"]
        _guarded(m, "W4", _latency, Commonsync, scratch, sizes.latency_samples, m)
        if "syncthing" in systems:
            fast = measures["syncthing 1 s"] = Measures()
            _guarded(fast, "W4", _latency, _syncthing_fast, scratch, sizes.latency_samples, fast)
            m = measures["syncthing"]
            _guarded(m, "W4", _latency, Syncthing, scratch, sizes.slow_latency_samples, m)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for m in measures.values():
        samples = m.values.pop("W4", None)
        if samples:
            m.add("W4 p50", statistics.median(samples))
            m.add("W4 p95", _percentile(samples, 0.95))
    notes = [
        f"W1 {sizes.big / MiB:.0f} MiB; W2 {sizes.small_files} x 4 KiB in {sizes.small_dirs} "
        f"directories; W4 {sizes.latency_samples} samples (syncthing default delay: "
        f"{sizes.slow_latency_samples}); R1 over {sizes.idle_seconds:.0f} s; loopback",
    ]
    if syncthing_reason:
        notes.append(f"syncthing skipped: {syncthing_reason}")
    return SyncResult(
        "sync",
        "Sync workloads W1-W4, R1, M1: commonsync, Syncthing, rsync",
        notes,
        measures,
        {"big_bytes": sizes.big, "small_files": sizes.small_files, "repeat": options.repeat},
    )


def _big(factory: Callable[[Path], System], pool: Path, scratch: Path, m: Measures) -> None:
    with running(factory, scratch) as system:
        big_file_round(system, pool, m)


def _relayed(pool: Path, scratch: Path, m: Measures) -> None:
    """X1: W1 through a relay (only W1: W3 and M1 are measured direct)."""
    with running(RelayedCommonsync, scratch) as system:
        staged = system.folder_a.parent / "staged"
        staged.mkdir()
        shutil.copyfile(pool / "big.bin", staged / "big.bin")
        move_in(staged, system.folder_a)
        m.add("X1", wait_identical(system.folder_a, system.folder_b))


def _small(
    factory: Callable[[Path], System], pool: Path, scratch: Path, m: Measures, idle: float
) -> None:
    with running(factory, scratch) as system:
        small_files_round(system, pool, m, idle)


def _latency(factory: Callable[[Path], System], scratch: Path, samples: int, m: Measures) -> None:
    with running(factory, scratch) as system:
        time.sleep(1)
        latency_round(system, samples, m, "W4")


def _syncthing_fast(base: Path) -> System:
    return Syncthing(base, watcher_delay=1.0, name="syncthing 1 s")


def _guarded(m: Measures, what: str, action: Callable[..., None], *args: Any) -> None:
    try:
        action(*args)
    except Skipped as exc:
        m.skipped[what] = str(exc)
        print(f"    {what} skipped: {exc}", flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


BENCHMARK = Benchmark(
    "sync",
    "W1-W4, R1, M1: two daemons against Syncthing and rsync on the same data",
    run,
)
