"""``commonsync core-demo``: the library's core at work on a folder, start to finish.

It does what a device does before anything goes on the network: create a device identity and a
folder key, chunk and hash every file, sign and seal one record per entry, seal every distinct
chunk as it leaves the device (all that a peer's connection, or a relay forwarding it, ever
carries), and keep the index in SQLite. Then it checks its own work the way a receiving member
would: it opens every sealed record and chunk, rebuilds every file and compares it with the
original, looks for any file name or content in the sealed bytes, and shows that a flipped bit
is refused.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from commonsync import (
    ChunkEntry,
    ChunkHasher,
    ChunkRef,
    CommonsyncError,
    DeviceIdentity,
    FolderKey,
    FolderKeyring,
    Kind,
    Record,
    VersionVector,
    open_and_verify,
    open_chunk,
    seal_chunk,
)
from commonsync.formats import paths as cs_paths
from commonsync.formats.records import seal_record, sign_record
from commonsync.sync.store import IndexEntry, open_store

from .output import plural

_SAMPLE_BIG = 48 * 1024 * 1024


@dataclass
class _Tally:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    plaintext_bytes: int = 0
    chunks: int = 0
    sealed_chunk_bytes: int = 0
    sealed_record_bytes: int = 0
    distinct_chunks: set[bytes] = field(default_factory=set)


def make_sample_folder(root: Path) -> None:
    """A small tree with the cases sync must get right, and one large file copied twice."""
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "todo.txt").write_text("buy strings for the choir's double bass\n")
    (root / "notes" / "réunion du 12 mai.md").write_text("# Ordre du jour\n\n1. Budget\n")
    (root / "empty folder").mkdir()
    (root / "photos").mkdir()
    block = os.urandom(1024 * 1024)
    with open(root / "photos" / "concert.raw", "wb") as f:
        for i in range(_SAMPLE_BIG // len(block)):
            f.write(hashlib.blake2b(block + i.to_bytes(4, "big")).digest() * (len(block) // 64))
    (root / "photos" / "concert copy.raw").write_bytes(
        (root / "photos" / "concert.raw").read_bytes()
    )
    (root / "run.sh").write_text("#!/bin/sh\necho hello\n")
    (root / "run.sh").chmod(0o755)
    (root / "zero bytes").touch()
    (root / "latest").symlink_to("notes/todo.txt")


async def run_demo(folder: Path | None, home: Path | None, console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="commonsync-demo-") as scratch:
        home = home or Path(scratch) / "home"
        home.mkdir(parents=True, exist_ok=True)
        if folder is None:
            folder = Path(scratch) / "sample folder"
            make_sample_folder(folder)
            console.print(f"Made a sample folder at [bold]{folder}[/]")
        return await _demo(folder.resolve(), home, console)


async def _demo(folder: Path, home: Path, console: Console) -> int:
    key_file = home / "device.key"
    identity = DeviceIdentity.load(key_file) if key_file.exists() else DeviceIdentity.generate()
    identity.save(key_file)
    console.print(f"Device ID   [bold cyan]{identity.device_id}[/]  (key in {key_file}, mode 0600)")
    key = FolderKey.generate()
    console.print(
        f"Folder key  folder {key.folder_id.hex()[:16]}…, epoch {key.epoch}, 256-bit secret"
    )

    outbox = home / "sealed"  # what leaves the device: ciphertext only
    (outbox / "chunks").mkdir(parents=True, exist_ok=True)
    (outbox / "records").mkdir(parents=True, exist_ok=True)
    tally = _Tally()
    started = time.perf_counter()
    async with open_store(home / "index.db") as store:
        await store.add_folder(key.folder_id, folder.name)
        entries = await trio.to_thread.run_sync(
            _scan_and_seal, folder, identity, key, outbox, tally
        )
        await store.put(key.folder_id, entries)
        scanned = time.perf_counter() - started
        console.print(
            f"Scanned and sealed {tally.plaintext_bytes / 1e6:.1f} MB in {scanned:.2f} s "
            f"({tally.plaintext_bytes / 1e6 / max(scanned, 1e-9):.0f} MB/s)"
        )
        stored = await store.records_since(key.folder_id, 0, limit=10_000)

    table = Table(title="What the device prepared", show_header=False)
    table.add_row(
        "files / directories / symlinks", f"{tally.files} / {tally.directories} / {tally.symlinks}"
    )
    table.add_row(
        "plaintext", f"{tally.plaintext_bytes:,} bytes in {plural(tally.chunks, 'chunk')}"
    )
    table.add_row("distinct chunks (sealed once each)", f"{len(tally.distinct_chunks)}")
    table.add_row("sealed chunks (what leaves the device)", f"{tally.sealed_chunk_bytes:,} bytes")
    table.add_row("sealed records (what leaves the device)", f"{tally.sealed_record_bytes:,} bytes")
    table.add_row("records in the SQLite index", f"{len(stored)} (local sequence 1..{len(stored)})")
    console.print(table)

    problems = await trio.to_thread.run_sync(_check_as_a_member, folder, key, outbox)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {problem}")
        return 1
    console.print("[green]✓[/] every file rebuilt from sealed chunks matches the original")
    console.print("[green]✓[/] no file name and no file content appears in the sealed bytes")
    _show_tamper_refusal(key, outbox, console)
    return 0


def _scan_and_seal(
    folder: Path, identity: DeviceIdentity, key: FolderKey, outbox: Path, tally: _Tally
) -> list[IndexEntry]:
    entries = []
    sequence = 0
    now = int(time.time())
    with ChunkHasher(key.chunk_id_key, workers=os.cpu_count() or 2) as hasher:
        for path in sorted(folder.rglob("*")):
            info = path.lstat()
            rel = cs_paths.from_local(str(path.relative_to(folder)))
            chunks: tuple[ChunkEntry, ...] = ()
            target = ""
            if stat.S_ISLNK(info.st_mode):
                kind, target = Kind.SYMLINK, os.readlink(path)
                tally.symlinks += 1
            elif stat.S_ISDIR(info.st_mode):
                kind = Kind.DIRECTORY
                tally.directories += 1
            elif stat.S_ISREG(info.st_mode):
                kind = Kind.FILE
                tally.files += 1
                with open(path, "rb", buffering=0) as f:
                    refs = list(hasher.hash_stream(f))
                chunks = tuple(ChunkEntry(r.id, r.size) for r in refs)
                _seal_new_chunks(path, refs, key, outbox, tally)
            else:
                continue  # sockets, devices and pipes are not synced
            sequence += 1
            record = Record(
                rel,
                kind,
                info.st_size if kind is Kind.FILE else 0,
                info.st_mtime_ns,
                stat.S_IMODE(info.st_mode),
                False,
                VersionVector().bump(identity.device_id.short, now),
                chunks,
                target,
                identity.public_key,
                sequence,
            )
            signed = sign_record(identity, key.folder_id, record)
            sealed = seal_record(key, signed)
            (outbox / "records" / f"{sequence:08d}").write_bytes(sealed)
            tally.sealed_record_bytes += len(sealed)
            entries.append(IndexEntry(record, signed, on_disk=True))
    return entries


def _seal_new_chunks(
    path: Path, refs: list[ChunkRef], key: FolderKey, outbox: Path, tally: _Tally
) -> None:
    with open(path, "rb") as f:
        for ref in refs:
            size, cid = ref.size, ref.id
            tally.chunks += 1
            tally.plaintext_bytes += size
            if cid in tally.distinct_chunks:
                f.seek(size, os.SEEK_CUR)
                continue
            sealed_id, sealed = seal_chunk(key, f.read(size))
            assert sealed_id == cid
            (outbox / "chunks" / cid.hex()).write_bytes(sealed)
            tally.distinct_chunks.add(cid)
            tally.sealed_chunk_bytes += len(sealed)


def _check_as_a_member(folder: Path, key: FolderKey, outbox: Path) -> list[str]:
    """Rebuild every file from the sealed bytes alone, as another member would."""
    keyring = FolderKeyring([key])
    problems = []
    names = {p.name.encode() for p in folder.rglob("*")}
    # A 32-byte sample from the middle of every file: none may appear in any sealed byte.
    needles = set()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size >= 32:
            with open(p, "rb") as f:
                f.seek(p.stat().st_size // 2 - 16)
                needles.add(f.read(32))
    for sealed_chunk in (outbox / "chunks").iterdir():
        data = sealed_chunk.read_bytes()
        if any(needle in data for needle in needles):
            problems.append("a sealed chunk contains file content in the clear")
    for sealed_path in sorted((outbox / "records").iterdir()):
        sealed = sealed_path.read_bytes()
        record = open_and_verify(keyring, sealed)
        if any(name in sealed for name in names if len(name) >= 4):
            problems.append(f"a sealed record contains a file name ({record.path})")
        if record.kind is not Kind.FILE:
            continue
        digest = hashlib.blake2b()
        for chunk in record.chunks:
            digest.update(
                open_chunk(keyring, chunk.id, (outbox / "chunks" / chunk.id.hex()).read_bytes())
            )
        original = hashlib.blake2b((folder / record.path).read_bytes()).digest()
        if digest.digest() != original:
            problems.append(f"{record.path} does not rebuild to the original")
    return problems


def _show_tamper_refusal(key: FolderKey, outbox: Path, console: Console) -> None:
    keyring = FolderKeyring([key])
    victim = sorted((outbox / "chunks").iterdir())[0]
    tampered = bytearray(victim.read_bytes())
    tampered[len(tampered) // 2] ^= 1
    try:
        open_chunk(keyring, bytes.fromhex(victim.name), bytes(tampered))
    except CommonsyncError as exc:
        console.print(f"[green]✓[/] a chunk with one flipped bit is refused: {exc}")
    record_file = sorted((outbox / "records").iterdir())[0]
    tampered = bytearray(record_file.read_bytes())
    tampered[-3] ^= 1
    try:
        open_and_verify(keyring, bytes(tampered))
    except CommonsyncError as exc:
        console.print(f"[green]✓[/] a record with one flipped bit is refused: {exc}")
