"""L1: one 20 MiB file between two commonsync daemons through a 100 kbit/s link.

Not a speed contest but the acceptance scenario of a slow link (issue: "a 100 kbit/s link is
slow, never stuck"): at 12,500 bytes/s each way, a 1 MiB chunk takes about 84 s to arrive,
longer than any per-request time limit would allow, so the transfer completes only if
requests are given up for lack of progress, not for lack of a whole chunk. It takes about
28 minutes (20 MiB / 12.5 KB/s ≈ 1,680 s); ``--quick`` sends 2 MiB (about 3 minutes).

Two real daemons (``tests.daemons``: their own ``--home``, 127.0.0.1, discovery off); b knows
a only at the address of ``python -m tests.slowlink``, a user-space proxy on loopback that
forwards each direction at the link's rate. The clock starts when b accepts the folder offer
(a's folder already holds the file) and stops when b holds the file whole (its hash
checked). One round only: ``--repeat`` does not apply. The table says the time taken and the
effective rate; a run that does not finish within three times the link's ideal time fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import Benchmark, BenchmarkError, MiB, Options

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the daemons harness and the proxy live with the tests
    sys.path.insert(0, str(ROOT))

from tests.daemons import Device, wait_for  # noqa: E402

#: 100 kbit/s, each way.
RATE = 12_500
SIZE = 20 * MiB
QUICK_SIZE = 2 * MiB
LABEL = "slowlink"


@dataclass
class SlowLinkResult:
    name: str
    size: int
    rate: int
    seconds: float

    def table(self) -> str:
        ideal = self.size / self.rate
        return "\n".join(
            [
                f"L1: a {self.size / MiB:.0f} MiB file through a {self.rate * 8 / 1000:.0f} "
                "kbit/s link (each way), two daemons",
                "",
                f"{'time taken':<24}{self.seconds:>10.1f} s",
                f"{'the link, at best':<24}{ideal:>10.1f} s",
                f"{'effective rate':<24}{self.size / self.seconds / 1000:>10.2f} KB/s "
                f"({self.size / self.seconds / self.rate:.0%} of the link)",
            ]
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "title": "L1: a file through a slow link",
            "parameters": {"size": self.size, "rate_bytes_per_s": self.rate},
            "results": [{"name": "commonsync", "seconds": [self.seconds]}],
        }


def _holds(path: Path, digest: str, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        return hashlib.blake2b(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def run(options: Options) -> SlowLinkResult:
    size = QUICK_SIZE if options.quick else SIZE
    limit = 3 * size / RATE + 120
    with tempfile.TemporaryDirectory(prefix="commonsync-slowlink-") as temp:
        base = Path(temp)
        a, b = Device(base, "a"), Device(base, "b")
        proxy: subprocess.Popen[str] | None = None
        try:
            for device in (a, b):
                device.init("--listen", "127.0.0.1:0", "--no-discovery")
                device.start()
            a.folder.mkdir()
            data = os.urandom(size)
            (a.folder / "large.bin").write_bytes(data)
            digest = hashlib.blake2b(data).hexdigest()
            proxy = subprocess.Popen(
                [sys.executable, "-m", "tests.slowlink", str(a.status()["port"]), str(RATE)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proxy.stdout is not None
            port = int(proxy.stdout.readline())
            a.run("device", "add", b.device_id, "--name", "b")
            b.run("device", "add", a.device_id, "--name", "a", "--address", f"127.0.0.1:{port}")
            wait_for(lambda: b.connected_to(a), "b to connect to a through the slow link")
            a.run("folder", "add", str(a.folder), "--label", LABEL)
            a.run("share", LABEL, b.device_id)
            wait_for(lambda: bool(b.status()["offered_folders"]), "the offer to reach b")
            print(f"  sending {size / MiB:.0f} MiB at {RATE} B/s (ideal {size / RATE:.0f} s)")
            started = time.monotonic()
            b.run("folder", "accept", LABEL, str(b.folder))
            try:
                wait_for(
                    lambda: _holds(b.folder / "large.bin", digest, size), "the file on b", limit
                )
            except AssertionError as exc:
                raise BenchmarkError(f"{exc}: the slow link got stuck") from None
            seconds = time.monotonic() - started
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait(timeout=10)
            for device in (a, b):
                with contextlib.suppress(Exception):
                    device.kill()
    return SlowLinkResult("slowlink", size, RATE, seconds)


BENCHMARK = Benchmark(
    "slowlink",
    "L1: a 20 MiB file between two daemons through a 100 kbit/s link (~28 min; not in `all`)",
    run,
    in_all=False,
)
