"""S1: scan a large file (FastCDC chunking + keyed BLAKE2b per chunk) beside b2sum and sha256sum.

The scan is what a daemon does to every new or changed file, so its rate bounds how fast a
first sync can start. Its physical ceiling is a hash tool reading the same file, hence the
ratio to ``b2sum`` (goal >= 1.0x, bench/README.md) and, for scale, to ``sha256sum``.
Two partial variants (chunking alone, hashing alone on one thread) and a plain read show where
the scan's time goes. All of them read the same file from a warm page cache, so the disk is
out of the picture.

Sealing (what a chunk costs on its way to a relay) is measured beside the raw
XChaCha20-Poly1305 it is built on, on the same 1 MiB buffers in memory, one thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from commonsync.formats.chunking import ChunkHasher, iter_chunks
from commonsync.formats.chunks import seal_chunk
from commonsync.formats.hashing import blake2b
from commonsync.formats.keys import FolderKey

from .report import (
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
    alternate,
    available_memory,
)

#: Writes and plain reads go in blocks of this size, so memory stays low whatever the file size.
BLOCK = 8 * MiB
#: The hash-only variant hashes blocks of the scan's average chunk size.
HASH_BLOCK = 1 * MiB
SEAL_CHUNK = 1 * MiB
#: Wall-clock bound on the whole benchmark, file creation included; rounds beyond the first
#: are dropped when they would not fit. A full run takes about a minute on two cores.
BUDGET_FULL_S = 150.0
BUDGET_QUICK_S = 45.0

SCAN_GROUP = "scan: the same file, read from the page cache"
SEAL_GROUP = "sealing: 1 MiB chunks in memory, one thread"


def make_file(path: Path, size: int) -> None:
    """Random bytes, so nothing deduplicates or compresses; written block by block."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            f.write(os.urandom(n))
            left -= n


def read_through(path: Path, block: int = BLOCK) -> None:
    """Read the whole file and drop it: warms the page cache, and is the read-only contender."""
    with open(path, "rb", buffering=0) as f:
        while f.read(block):
            pass


def scan_action(chunk_id_key: bytes, workers: int, path: Path, size: int) -> Contender:
    """commonsync's scan, exactly as the daemon will run it, consuming every ChunkRef.

    The refs are checked to tile the file, so a broken scan cannot pass for a fast one.
    """

    def action(_timeout: float) -> None:
        covered = 0
        with (
            ChunkHasher(chunk_id_key, workers=workers) as hasher,
            open(path, "rb", buffering=0) as f,
        ):
            for ref in hasher.hash_stream(f):
                if ref.offset != covered or len(ref.id) != 32:
                    raise BenchmarkError(f"scan produced a bad chunk ref at offset {covered}")
                covered += ref.size
        if covered != size:
            raise BenchmarkError(f"scan covered {covered} bytes of {size}")

    return Contender(f"commonsync scan (ChunkHasher, {workers} threads)", size, action, SCAN_GROUP)


def chunking_action(path: Path, size: int) -> Contender:
    def action(_timeout: float) -> None:
        with open(path, "rb", buffering=0) as f:
            for _ in iter_chunks(f):
                pass

    return Contender("  chunking only (iter_chunks)", size, action, SCAN_GROUP)


def hashing_action(chunk_id_key: bytes, path: Path, size: int) -> Contender:
    def action(_timeout: float) -> None:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(HASH_BLOCK):
                blake2b(block, key=chunk_id_key)

    return Contender("  keyed BLAKE2b only, 1 thread", size, action, SCAN_GROUP)


def reading_action(path: Path, size: int) -> Contender:
    return Contender("  read only (8 MiB blocks)", size, lambda _t: read_through(path), SCAN_GROUP)


def tool_action(tool: str, path: Path, size: int) -> Contender:
    """A coreutils hash over the file, as a subprocess; skipped when the tool is missing."""
    exe = shutil.which(tool)
    name = f"{tool} (coreutils, 1 thread)"

    def action(timeout: float) -> None:
        if exe is None:
            raise Skipped(f"{tool} is not on PATH")
        try:
            subprocess.run(
                [exe, str(path)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise Skipped(f"{tool} took more than {timeout:.0f} s and was killed") from None
        except subprocess.CalledProcessError as exc:
            raise Skipped(f"{tool} exited with {exc.returncode}: {exc.stderr!r}") from None

    contender = Contender(name, size, action, SCAN_GROUP)
    return contender if exe else contender.skip(f"{tool} is not on PATH")


def tool_version(tool: str) -> str | None:
    exe = shutil.which(tool)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0] if out else None


def sealing_contenders(key: FolderKey, chunks: list[bytes]) -> list[Contender]:
    """seal_chunk, then its two passes done bare, then the bare AEAD (the ceiling).

    seal_chunk hashes the chunk (for its ID and nonce), pads it and encrypts it, so the middle
    line shows how much of the gap to the ceiling is the hash and how much is the rest.
    The bare AEAD reuses one nonce: harmless here, nothing leaves the process.
    """
    nbytes = len(chunks) * SEAL_CHUNK
    nonce = os.urandom(24)
    seal_key, id_key = key.chunk_seal_key, key.chunk_id_key

    def seal(_timeout: float) -> None:
        for chunk in chunks:
            seal_chunk(key, chunk)

    def hash_then_encrypt(_timeout: float) -> None:
        for chunk in chunks:
            blake2b(chunk, key=id_key)
            crypto_aead_xchacha20poly1305_ietf_encrypt(chunk, None, nonce, seal_key)

    def encrypt(_timeout: float) -> None:
        for chunk in chunks:
            crypto_aead_xchacha20poly1305_ietf_encrypt(chunk, None, nonce, seal_key)

    return [
        Contender("seal_chunk", nbytes, seal, SEAL_GROUP),
        Contender("  keyed BLAKE2b + raw AEAD", nbytes, hash_then_encrypt, SEAL_GROUP),
        Contender("raw XChaCha20-Poly1305 (ceiling)", nbytes, encrypt, SEAL_GROUP),
    ]


def run(options: Options) -> Result:
    """Create the file, warm the cache, alternate every contender, always remove the file."""
    budget = Budget(BUDGET_QUICK_S if options.quick else BUDGET_FULL_S)
    size = GiB // 8 if options.quick else GiB
    seal_count = 64 if options.quick else 256
    workers = os.cpu_count() or 2
    key = FolderKey.generate()
    tmp_root = tempfile.gettempdir()
    if shutil.disk_usage(tmp_root).free < size + 256 * MiB:
        raise BenchmarkError(f"not enough free space in {tmp_root} for a {size // MiB} MiB file")

    notes = [
        f"file: {size // MiB} MiB of random bytes under {tmp_root}, read once beforehand so "
        "every contender reads it from the page cache (no disk I/O measured)",
        f"scan: {workers} hashing threads (os.cpu_count()); b2sum and sha256sum use one",
        f"sealing: {seal_count} random chunks of 1 MiB; raw AEAD = PyNaCl "
        "crypto_aead_xchacha20poly1305_ietf_encrypt, no padding, no chunk ID",
        "MB/s with 1 MB = 10^6 bytes; median of the rounds; contenders alternate within a "
        "round, the order rotating each round",
    ]
    memory = available_memory()
    if memory is not None and memory < 2 * size + seal_count * SEAL_CHUNK:
        notes.append(
            f"WARNING: only {memory // MiB} MiB available; the file may not stay in the "
            "page cache, so figures may include disk reads"
        )

    scratch = Path(tempfile.mkdtemp(prefix="commonsync-bench-scan-", dir=tmp_root))
    try:
        data = scratch / "random.bin"
        print(f"writing {size // MiB} MiB of random bytes to {data}", flush=True)
        make_file(data, size)
        print("warming the page cache (one full read)", flush=True)
        read_through(data)
        chunks = [os.urandom(SEAL_CHUNK) for _ in range(seal_count)]
        scan = scan_action(key.chunk_id_key, workers, data, size)
        b2sum = tool_action("b2sum", data, size)
        sha256sum = tool_action("sha256sum", data, size)
        sealing = sealing_contenders(key, chunks)
        seal, raw = sealing[0], sealing[-1]
        contenders = [
            scan,
            chunking_action(data, size),
            hashing_action(key.chunk_id_key, data, size),
            reading_action(data, size),
            b2sum,
            sha256sum,
            *sealing,
        ]
        for c in contenders:
            if c.skipped:
                print(f"  {c.name.strip()}: skipped, {c.skipped}", flush=True)
        rounds = alternate(contenders, options.repeat, budget)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if rounds < options.repeat:
        notes.append(
            f"only {rounds} of {options.repeat} rounds fit the {budget.seconds:.0f} s time budget"
        )
    return Result(
        name="scan",
        title=f"S1 scan: {size // MiB} MiB file, page cache warm; {rounds} rounds "
        f"({budget.elapsed():.0f} s in all)",
        notes=notes,
        contenders=contenders,
        ratios=[
            Ratio("scan / b2sum", scan, b2sum, goal=1.0),
            Ratio("scan / sha256sum", scan, sha256sum),
            Ratio("seal / raw AEAD", seal, raw),
        ],
        parameters={
            "workload": "S1",
            "file_bytes": size,
            "seal_chunks": seal_count,
            "seal_chunk_bytes": SEAL_CHUNK,
            "workers": workers,
            "rounds": rounds,
            "rounds_requested": options.repeat,
            "budget_seconds": budget.seconds,
            "elapsed_seconds": round(budget.elapsed(), 1),
            "page_cache": "warm (file read once before timing)",
            "tools": {t: tool_version(t) for t in ("b2sum", "sha256sum")},
        },
    )


BENCHMARK = Benchmark(
    "scan",
    "S1: chunk + keyed-hash a 1 GiB file beside b2sum/sha256sum; sealing beside raw AEAD",
    run,
)
