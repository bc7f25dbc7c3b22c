"""C1: 1 GiB of messages through the encrypted channel between two processes, on loopback.

The channel is what every byte between two devices goes through: the Noise handshake, then
one libsodium secretstream (XChaCha20-Poly1305) per direction, each message framed as
``u32 length || sealed``. Its rate bounds how fast chunks can move between peers. Two
ceilings are measured beside it, in the same run, alternating:

- plain TCP between the same two processes, with the same 1 MiB messages and no encryption:
  what the loopback, the kernel and the event loop cost (the transport ceiling);
- the raw AEAD on one core in memory, PyNaCl's ``crypto_aead_xchacha20poly1305_ietf_encrypt``
  on 1 MiB buffers (the encryption ceiling, goal channel >= 0.8x of it, BENCHMARKS.md), with
  the secretstream push and pull the channel really calls.

Each transfer runs in two fresh processes (``python -m bench.channel_peer``, trio): the
sender connects, the receiver listens on 127.0.0.1. Only the data transfer is timed, by this
process: from the moment it tells the ready sender to start until the receiver reports that it
has received every byte (and, for the channel, the authenticated end of stream). Process
start-up and the handshake are left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
)

from commonsync import DeviceIdentity

from .channel_peer import LineReader
from .report import (
    MB,
    Benchmark,
    BenchmarkError,
    Budget,
    Contender,
    GiB,
    MiB,
    Options,
    Ratio,
    Result,
    Skipped,
    Timed,
    alternate,
)

#: Every message (and every buffer encrypted in memory) is this big: a chunk's average size.
MESSAGE = 1 * MiB
#: Distinct random buffers, cycled: 64 MiB, more than a typical L3 cache, so the bytes come
#: from memory as a real chunk's would.
POOL = 64
#: Bound on one child's start (Python, imports, buffers) and handshake.
STARTUP_S = 30.0
#: Bound on a child's exit once it reported its result.
EXIT_S = 10.0
#: Wall-clock bound on the whole benchmark; rounds beyond the first are dropped when they would
#: not fit. A full run takes about 40 s on two cores.
BUDGET_FULL_S = 150.0
BUDGET_QUICK_S = 45.0

ROOT = Path(__file__).resolve().parent.parent
TRANSFER_GROUP = "loopback TCP, two processes (trio), 1 MiB messages"
CRYPTO_GROUP = "encryption in memory, one core, 1 MiB buffers"


class Child:
    """One ``bench.channel_peer`` process: JSON events read with a bound on every wait."""

    def __init__(self, role: str, args: list[str], seed: bytes) -> None:
        self.role = role
        # Closed by kill(), which every path out of transfer() runs.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.channel_peer", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            env=env,
        )
        assert self.process.stdout is not None
        self._stdout = LineReader(self.process.stdout.fileno())
        self.write(seed.hex())

    def write(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise Skipped(f"the {self.role} process is gone: {self._stderr_tail()}") from None

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be ``event``; Skipped on an error, an exit, a timeout."""
        try:
            line = self._stdout.line(timeout)
        except TimeoutError:
            raise Skipped(
                f"the {self.role} process did not report {event!r} within {timeout:.0f} s"
            ) from None
        if line is None:
            self.process.wait(EXIT_S)
            raise Skipped(
                f"the {self.role} process exited ({self.process.returncode}) before "
                f"{event!r}: {self._stderr_tail()}"
            )
        report: dict[str, Any] = json.loads(line)
        if report.get("event") == "error":
            raise Skipped(f"{self.role}: {report.get('type')}: {report.get('message')}")
        if report.get("event") != event:
            raise BenchmarkError(f"the {self.role} process said {line!r}, expected {event!r}")
        return report

    def finish(self) -> None:
        """Wait for a clean exit; a non-zero status fails the contender."""
        try:
            status = self.process.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            raise Skipped(f"the {self.role} process did not exit within {EXIT_S:.0f} s") from None
        if status != 0:
            raise Skipped(f"the {self.role} process exited with {status}: {self._stderr_tail()}")

    def kill(self) -> None:
        """Whatever happened: the process is gone and its pipes closed when this returns."""
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(EXIT_S)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._stderr.close()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text.splitlines()[-1] if text else "(nothing on stderr)"


def transfer(transport: str, nbytes: int, timeout: float) -> tuple[float, dict[str, Any]]:
    """One transfer of ``nbytes`` between two fresh processes; the seconds this process
    measured (go to done), and the receiver's report.

    New identities every time: each side accepts only the other's device ID.
    """
    sender_id, receiver_id = DeviceIdentity.generate(), DeviceIdentity.generate()
    common = ["--transport", transport, "--timeout", f"{timeout + STARTUP_S:.0f}"]
    children: list[Child] = []
    try:
        receiver = Child(
            "receive", [*common, "--peer", sender_id.public_key.hex()], receiver_id.seed
        )
        children.append(receiver)
        sender_args = [
            *common,
            *("--peer", receiver_id.public_key.hex(), "--bytes", str(nbytes)),
            *("--message-size", str(MESSAGE), "--pool", str(POOL)),
        ]
        sender = Child("send", sender_args, sender_id.seed)
        children.append(sender)
        port = receiver.expect("listening", STARTUP_S)["port"]
        sender.write(str(port))
        sender.expect("ready", STARTUP_S)
        receiver.expect("ready", STARTUP_S)
        started = time.perf_counter()
        sender.write("go")
        done = receiver.expect("done", timeout)
        elapsed = time.perf_counter() - started
        sender.expect("sent", EXIT_S)
        for child in children:
            child.finish()
    finally:
        for child in children:
            child.kill()
    if done["bytes"] != nbytes:
        raise BenchmarkError(f"{transport}: the receiver got {done['bytes']} bytes of {nbytes}")
    messages = -(-nbytes // MESSAGE)
    if transport == "channel" and done["messages"] != messages:
        raise BenchmarkError(
            f"channel: the receiver got {done['messages']} messages, {messages} were sent"
        )
    return elapsed, done


def transfer_contender(
    name: str, transport: str, nbytes: int, receiver_seconds: list[float]
) -> Contender:
    def action(timeout: float) -> Timed:
        elapsed, done = transfer(transport, nbytes, timeout)
        receiver_seconds.append(done["seconds"])
        return Timed(elapsed)

    return Contender(name, nbytes, action, TRANSFER_GROUP)


def crypto_contenders(nbytes: int) -> list[Contender]:
    """The raw AEAD (the ceiling), then the secretstream push and pull the channel calls.

    The same POOL of random 1 MiB buffers is cycled until ``nbytes`` went through. Pull needs
    ciphertexts in stream order: POOL messages are pushed once, and their stream is pulled
    again from its header as many times as needed. The raw AEAD reuses one nonce: harmless
    here, nothing leaves the process.
    """
    pool = [os.urandom(MESSAGE) for _ in range(POOL)]
    count = nbytes // MESSAGE
    key, nonce = os.urandom(32), os.urandom(24)
    tag = crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
    state = crypto_secretstream_xchacha20poly1305_state()
    header = crypto_secretstream_xchacha20poly1305_init_push(state, key)
    sealed = [crypto_secretstream_xchacha20poly1305_push(state, m, None, tag) for m in pool]

    def encrypt(_timeout: float) -> None:
        for i in range(count):
            crypto_aead_xchacha20poly1305_ietf_encrypt(pool[i % POOL], None, nonce, key)

    def push(_timeout: float) -> None:
        out = crypto_secretstream_xchacha20poly1305_state()
        crypto_secretstream_xchacha20poly1305_init_push(out, key)
        for i in range(count):
            crypto_secretstream_xchacha20poly1305_push(out, pool[i % POOL], None, tag)

    def pull(_timeout: float) -> None:
        into = crypto_secretstream_xchacha20poly1305_state()
        for i in range(count):
            if i % POOL == 0:
                crypto_secretstream_xchacha20poly1305_init_pull(into, header, key)
            crypto_secretstream_xchacha20poly1305_pull(into, sealed[i % POOL])

    return [
        Contender("raw XChaCha20-Poly1305 (ceiling)", count * MESSAGE, encrypt, CRYPTO_GROUP),
        Contender(
            "  secretstream push (the channel's sealing)", count * MESSAGE, push, CRYPTO_GROUP
        ),
        Contender(
            "  secretstream pull (the channel's opening)", count * MESSAGE, pull, CRYPTO_GROUP
        ),
    ]


def _rate(nbytes: int, seconds: list[float]) -> str:
    return f"{nbytes / MB / statistics.median(seconds):.0f} MB/s" if seconds else "n/a"


def run(options: Options) -> Result:
    """Alternate the two transfers and the in-memory encryption; no child outlives a round."""
    budget = Budget(BUDGET_QUICK_S if options.quick else BUDGET_FULL_S)
    nbytes = GiB // 8 if options.quick else GiB
    receiver_seconds: dict[str, list[float]] = {"channel": [], "tcp": []}
    channel = transfer_contender(
        "commonsync channel (connect/accept_channel)",
        "channel",
        nbytes,
        receiver_seconds["channel"],
    )
    tcp = transfer_contender(
        "plain TCP (anyio streams, no encryption)", "tcp", nbytes, receiver_seconds["tcp"]
    )
    crypto = crypto_contenders(nbytes)
    raw, push = crypto[0], crypto[1]
    contenders = [channel, tcp, *crypto]
    rounds = alternate(contenders, options.repeat, budget)

    notes = [
        f"transfer: {nbytes // MiB} MiB as {nbytes // MESSAGE} messages of 1 MiB (from {POOL} "
        "random buffers, cycled) from one process to another over 127.0.0.1, both under trio; "
        "timed from 'go' to the receiver's report of every byte (and, for the channel, the "
        "authenticated end of stream); process start-up and the handshake are not timed",
        "receiver's own clock (first message to end of stream), median: channel "
        f"{_rate(nbytes, receiver_seconds['channel'])}, plain TCP "
        f"{_rate(nbytes, receiver_seconds['tcp'])}",
        "encryption: the same total on 1 MiB buffers in this process, one core; raw AEAD = "
        "PyNaCl crypto_aead_xchacha20poly1305_ietf_encrypt; push/pull = "
        "crypto_secretstream_xchacha20poly1305_push/pull, as commonsync/wire/transport.py "
        "calls them",
        "MB/s with 1 MB = 10^6 bytes; median of the rounds; contenders alternate within a "
        "round, the order rotating each round",
    ]
    if rounds < options.repeat:
        notes.append(
            f"only {rounds} of {options.repeat} rounds fit the {budget.seconds:.0f} s time budget"
        )
    return Result(
        name="channel",
        title=f"C1 channel: {nbytes // MiB} MiB between two processes on loopback; {rounds} "
        f"rounds ({budget.elapsed():.0f} s in all)",
        notes=notes,
        contenders=contenders,
        ratios=[
            Ratio("channel / raw AEAD", channel, raw, goal=0.8),
            Ratio("channel / plain TCP", channel, tcp),
            Ratio("channel / secretstream push", channel, push),
        ],
        parameters={
            "workload": "C1",
            "bytes": nbytes,
            "message_bytes": MESSAGE,
            "buffer_pool": POOL,
            "backend": "trio",
            "receiver_seconds": receiver_seconds,
            "rounds": rounds,
            "rounds_requested": options.repeat,
            "budget_seconds": budget.seconds,
            "elapsed_seconds": round(budget.elapsed(), 1),
        },
    )


BENCHMARK = Benchmark(
    "channel",
    "C1: 1 GiB through the encrypted channel, two processes, beside plain TCP and raw AEAD",
    run,
)
