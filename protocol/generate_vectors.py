#!/usr/bin/env python3
"""Generate the test vectors in protocol/vectors/ from fixed seeds.

Run once when a format is introduced or changed on purpose
(``.venv/bin/python protocol/generate_vectors.py``),
review the diff, and commit it. Tests never run this script: they recompute every output from
the inputs stored in the vector files and compare byte for byte, so the files pin the formats.

Every input is derived from a fixed label, so the vectors are the same on every machine:
``seed(label, n)`` is the first ``n`` bytes of ``BLAKE2b-512(label || u64le(0)) ||
BLAKE2b-512(label || u64le(1)) || ...`` (unkeyed BLAKE2b, 64-byte output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from commonsync.errors import CommonsyncError
from commonsync.formats import encoding, messages, padding, paths
from commonsync.formats.chunking import iter_chunks
from commonsync.formats.chunks import CHUNK_PAD_FLOOR, chunk_id, seal_chunk
from commonsync.formats.hashing import blake2b
from commonsync.formats.identity import DeviceIdentity
from commonsync.formats.keys import FolderKey, Purpose
from commonsync.formats.records import (
    RECORD_PAD_FLOOR,
    ChunkEntry,
    Kind,
    Record,
    seal_record,
    sign_record,
)
from commonsync.formats.versionvector import VersionVector
from commonsync.wire.handshake import (
    NOISE_PROTOCOL,
    PROLOGUE,
    VERSIONS,
    ChannelHandshake,
    noise_static_key,
)
from commonsync.wire.noise import HandshakeState
from commonsync.wire.session import folder_proof

OUT = Path(__file__).resolve().parent / "vectors"


def seed(label: str, n: int) -> bytes:
    """Deterministic pseudo-random bytes (see the module docstring)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += blake2b(label.encode() + counter.to_bytes(8, "little"), size=64)
        counter += 1
    return bytes(out[:n])


def identities() -> dict[str, Any]:
    cases = []
    for i in range(4):
        s = seed(f"identity {i}", 32)
        ident = DeviceIdentity.from_seed(s)
        message = seed(f"identity message {i}", 16 + i)
        cases.append(
            {
                "seed": s.hex(),
                "public_key": ident.public_key.hex(),
                "device_id_digest": ident.device_id.digest.hex(),
                "device_id": str(ident.device_id),
                "short_id": ident.device_id.short,
                "message": message.hex(),
                "signature": ident.sign(message).hex(),
            }
        )
    return {"description": "Ed25519 identities from seeds, device IDs, signatures", "cases": cases}


def folder_keys() -> dict[str, Any]:
    cases = []
    for i, epoch in enumerate((0, 1, 4294967295)):
        key = FolderKey(seed(f"folder id {i}", 32), epoch, seed(f"folder secret {i}", 32))
        cases.append(
            {
                "folder_id": key.folder_id.hex(),
                "epoch": epoch,
                "secret": key.secret.hex(),
                "encoded": key.to_bytes().hex(),
                "subkeys": {p.name.lower(): key.subkey(p).hex() for p in Purpose},
                "contexts": {p.name.lower(): p.value.decode() for p in Purpose},
            }
        )
    return {"description": "folder key encodings and derived subkeys", "cases": cases}


def chunking() -> dict[str, Any]:
    import io

    key = seed("chunking key", 32)
    size = 12 * 1024 * 1024 + 12345
    data = seed("chunking data", size)
    chunks = [
        {"offset": off, "size": len(d), "id": chunk_id(key, d).hex()}
        for off, d in iter_chunks(io.BytesIO(data))
    ]
    return {
        "description": "FastCDC boundaries and chunk IDs of seed('chunking data', size)",
        "data_label": "chunking data",
        "data_size": size,
        "chunk_id_key": key.hex(),
        "chunks": chunks,
        "small_inputs": [
            {
                "data": seed(f"small {n}", n).hex(),
                "chunk_id_key": key.hex(),
                "id": chunk_id(key, seed(f"small {n}", n)).hex(),
            }
            for n in (0, 1, 64, 1000)
        ],
    }


def paddings() -> dict[str, Any]:
    lengths = [
        0,
        1,
        2,
        3,
        7,
        9,
        100,
        255,
        256,
        1000,
        1023,
        1024,
        1025,
        4096,
        65537,
        1048576,
        1048577,
        3000000,
        4194304,
    ]
    return {
        "description": "Padme bucket sizes and padded sizes for each floor",
        "cases": [
            {
                "length": n,
                "padme": padding.padme(n),
                "padded_chunk": padding.padded_size(n, CHUNK_PAD_FLOOR),
                "padded_record": padding.padded_size(n, RECORD_PAD_FLOOR),
            }
            for n in lengths
        ],
    }


def sealed_chunks() -> dict[str, Any]:
    key = FolderKey(seed("chunk folder id", 32), 7, seed("chunk folder secret", 32))
    cases = []
    for n in (1, 1000, 1021, 1022, 5000):
        plaintext = seed(f"chunk plaintext {n}", n)
        cid, sealed = seal_chunk(key, plaintext)
        cases.append({"plaintext": plaintext.hex(), "id": cid.hex(), "sealed": sealed.hex()})
    return {
        "description": "sealed chunks (deterministic: nonce derived from the chunk ID)",
        "folder_key": key.to_bytes().hex(),
        "cases": cases,
    }


def version_vectors() -> dict[str, Any]:
    def vv(d: dict[int, int]) -> VersionVector:
        return VersionVector.from_mapping(d)

    pairs = [
        ({}, {}),
        ({1: 1}, {}),
        ({}, {1: 1}),
        ({1: 1}, {1: 1}),
        ({1: 2}, {1: 1, 2: 1}),
        ({1: 2, 2: 1}, {1: 1, 2: 1}),
        ({1: 1, 3: 5}, {1: 1, 3: 5, 9: 1}),
        ({2**64 - 1: 3}, {2**64 - 1: 4}),
        ({5: 1, 6: 2}, {5: 2, 6: 1}),
    ]
    compare = [
        {
            "a": vv(a).to_wire(),
            "b": vv(b).to_wire(),
            "order": vv(a).compare(vv(b)).value,
            "merge": vv(a).merge(vv(b)).to_wire(),
            "encoded_a": encoding.pack(vv(a).to_wire()).hex(),
        }
        for a, b in pairs
    ]
    bumps = [
        {
            "vector": vv(v).to_wire(),
            "device": dev,
            "now": now,
            "result": vv(v).bump(dev, now).to_wire(),
        }
        for v, dev, now in [
            ({}, 7, 0),
            ({7: 3}, 7, 0),
            ({7: 3}, 7, 1700000000),
            ({7: 1800000000}, 7, 1700000000),
            ({1: 4}, 7, 2),
        ]
    ]
    return {
        "description": "version vector order, merge and bump",
        "compare": compare,
        "bump": bumps,
    }


def records() -> dict[str, Any]:
    author = DeviceIdentity.from_seed(seed("record author", 32))
    key = FolderKey(seed("record folder id", 32), 2, seed("record folder secret", 32))
    short = author.device_id.short
    chunk_ids = [seed(f"record chunk {i}", 32) for i in range(3)]
    samples = [
        Record(
            "notes/todo.txt",
            Kind.FILE,
            300000,
            1700000000123456789,
            0o644,
            False,
            VersionVector.from_mapping({short: 1700000000, 42: 3}),
            (ChunkEntry(chunk_ids[0], 262144), ChunkEntry(chunk_ids[1], 37856)),
            "",
            author.public_key,
            17,
            seed("previous digest", 32),
        ),
        Record(
            "Überordner/日本語 ñ.md",
            Kind.FILE,
            0,
            -5,
            0o755,
            False,
            VersionVector.from_mapping({short: 1}),
            (),
            "",
            author.public_key,
            1,
        ),
        Record(
            "photos",
            Kind.DIRECTORY,
            0,
            0,
            0o700,
            False,
            VersionVector.from_mapping({short: 2}),
            (),
            "",
            author.public_key,
            2,
        ),
        Record(
            "link",
            Kind.SYMLINK,
            0,
            1,
            0o777,
            False,
            VersionVector.from_mapping({short: 3}),
            (),
            "photos/../x",
            author.public_key,
            3,
        ),
        Record(
            "gone.bin",
            Kind.FILE,
            0,
            1,
            0o644,
            True,
            VersionVector.from_mapping({short: 9, 1: 1}),
            (),
            "",
            author.public_key,
            9,
        ),
    ]
    cases = []
    for i, record in enumerate(samples):
        signed = sign_record(author, key.folder_id, record)
        nonce = seed(f"record nonce {i}", 24)
        cases.append(
            {
                "fields": {
                    "path": record.path,
                    "kind": int(record.kind),
                    "size": record.size,
                    "mtime_ns": record.mtime_ns,
                    "mode": record.mode,
                    "deleted": record.deleted,
                    "version": record.version.to_wire(),
                    "chunks": [[c.id.hex(), c.size] for c in record.chunks],
                    "symlink_target": record.symlink_target,
                    "author": record.author.hex(),
                    "sequence": record.sequence,
                    "previous": record.previous.hex(),
                },
                "encoded": record.encode().hex(),
                "content_digest": record.content_digest().hex(),
                "signed": signed.hex(),
                "nonce": nonce.hex(),
                "sealed": seal_record(key, signed, nonce=nonce).hex(),
            }
        )
    return {
        "description": "records: canonical encoding, signature, sealing (fixed nonces)",
        "author_seed": author.seed.hex(),
        "folder_key": key.to_bytes().hex(),
        "cases": cases,
        "invalid_encodings": invalid_records(author),
    }


def invalid_records(author: DeviceIdentity) -> list[dict[str, str]]:
    """Encodings every implementation must refuse, each with the reason."""
    good = [1, "a.txt", 0, 0, 0, 0o644, False, [[1, 1]], [], "", author.public_key, 1, b""]

    def variant(reason: str, **changes: Any) -> dict[str, str]:
        fields = list(good)
        names = [
            "format",
            "path",
            "kind",
            "size",
            "mtime_ns",
            "mode",
            "deleted",
            "version",
            "chunks",
            "symlink_target",
            "author",
            "sequence",
            "previous",
        ]
        for name, value in changes.items():
            fields[names.index(name)] = value
        return {"reason": reason, "encoded": encoding.pack(fields).hex()}

    cases = [
        variant("absolute path", path="/etc/passwd"),
        variant("parent component", path="../outside"),
        variant("parent component inside", path="a/../../b"),
        variant("empty component", path="a//b"),
        variant("dot component", path="./a"),
        variant("NUL byte", path="a\x00b"),
        variant("not NFC", path="cafe\u0301"),
        variant("empty path", path=""),
        variant("unknown format", format=2),
        variant("unknown kind", kind=3),
        variant("mode beyond permission bits", mode=0o10000),
        variant("sizes do not add up", size=5),
        variant("deleted with size", deleted=True, size=1, chunks=[[b"\x01" * 32, 1]]),
        variant("unsorted version vector", version=[[2, 1], [1, 1]]),
        variant("zero counter", version=[[1, 0]]),
        variant("short chunk id", size=1, chunks=[[b"\x01" * 31, 1]]),
        variant("zero sequence", sequence=0),
        variant("short author key", author=b"\x01" * 31),
        {
            "reason": "non-canonical integer",
            "encoded": encoding.pack(good).hex().replace("a5612e747874" + "00", "a5612e747874d000"),
        },
        {"reason": "map instead of array", "encoded": encoding.pack({"path": "a"}).hex()},
        {"reason": "trailing bytes", "encoded": encoding.pack(good).hex() + "c0"},
    ]
    for case in cases:
        try:
            Record.decode(bytes.fromhex(case["encoded"]))
        except CommonsyncError:
            continue
        raise SystemExit(f"invalid case {case['reason']!r} decodes without error")
    return cases


def path_cases() -> dict[str, Any]:
    valid = ["a", "a/b/c", "日本語/ñ", "name with spaces", ".hidden", "a..b", "...", "x" * 255]
    invalid = [
        "",
        "/a",
        "a/",
        "a//b",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "a\x00b",
        "cafe\u0301",
        "x" * 256,
        "/".join(["y" * 200] * 21),
    ]
    for p in valid:
        paths.validate(p)
    return {
        "description": "paths every implementation accepts or refuses",
        "valid": valid,
        "invalid": invalid,
    }


def wire_messages() -> dict[str, Any]:
    examples = [
        messages.Hello(1, ["index-v1", "relay-v1"], "Anne's laptop", "commonsync 0.1.0"),
        messages.Folders([[seed("proof", 32), seed("index id", 16), 1234]]),
        messages.IndexRequest(seed("folder", 32), seed("index id", 16), 0),
        messages.Index(
            seed("folder", 32),
            seed("index id", 16),
            [[1, seed("sealed 1", 600)], [2, seed("sealed 2", 1100)]],
            2,
        ),
        messages.ChunkRequest(7, seed("folder", 32), seed("chunk", 32), 1048576),
        messages.ChunkResponse(7, 0, seed("chunk data", 100)),
        messages.ChunkResponse(8, 1, b""),
        messages.Ping(99),
        messages.Pong(99),
        messages.Close(int(messages.CloseReason.UNKNOWN_DEVICE), "device not accepted"),
        messages.Offer(bytes(range(32)), "Choir scores", bytes(range(80))),
        messages.ChunkBatchRequest(
            9, seed("folder", 32), [[seed("chunk a", 32), 40], [seed("chunk b", 32), 70]]
        ),
        messages.ChunkBatchResponse(9, [[0, seed("chunk a data", 40)], [1, b""]]),
    ]
    return {
        "description": "encoded wire messages (see protocol/messages.json for the schema)",
        "cases": [
            {
                "name": type(m).__name__,
                "fields": {f.name: _jsonable(getattr(m, f.name)) for f in m.FIELDS},
                "encoded": messages.encode(m).hex(),
            }
            for m in examples
        ],
    }


def channel_handshake() -> dict[str, Any]:
    """One whole channel handshake with fixed keys: Noise messages are deterministic given the
    ephemerals, and Ed25519 signatures are deterministic."""
    initiator_seed, responder_seed = seed("initiator", 32), seed("responder", 32)
    initiator_e, responder_e = seed("initiator ephemeral", 32), seed("responder ephemeral", 32)
    alice = DeviceIdentity.from_seed(initiator_seed)
    bob = DeviceIdentity.from_seed(responder_seed)
    initiator = ChannelHandshake(
        alice,
        initiator=True,
        accept=lambda d: d == bob.device_id,
        features=["index-v1"],
        ephemeral=initiator_e,
    )
    responder = ChannelHandshake(
        bob, initiator=False, accept=lambda d: d == alice.device_id, ephemeral=responder_e
    )
    wire = []
    turns = [(initiator, responder), (responder, initiator), (initiator, responder)]
    for sender, receiver in turns:
        data = sender.data_to_send()
        wire.append(data.hex())
        receiver.receive_data(data)
    result = responder.result()
    # The split keys live inside the transport; read them from the Noise state for the record.
    to_responder, to_initiator = responder._noise.split()
    payloads, hashes = handshake_payloads(
        [bytes.fromhex(w) for w in wire], noise_static_key(alice), noise_static_key(bob),
        initiator_e, responder_e,
    )  # fmt: skip
    folder = FolderKey(seed("proof folder id", 32), 0, seed("proof folder secret", 32))
    return {
        "description": (
            "a channel handshake (SPEC.md §10): the three Noise messages as framed on the wire "
            "(u16be length || message); the plaintext payload of each (canonical msgpack) with "
            "the handshake hash each payload's signature covers (the hash just before that "
            "payload, empty for message 1); the final handshake hash and the Split() keys; the "
            "verdict (msgpack, the first transport message; its frame is not fixed, "
            "secretstream headers are random); and the folder proofs (§12) each side sends "
            "on this channel for folder_key (encoded as in §3)"
        ),
        "initiator_seed": initiator_seed.hex(),
        "initiator_noise_static": noise_static_key(alice).hex(),
        "initiator_ephemeral": initiator_e.hex(),
        "initiator_versions": list(VERSIONS),
        "initiator_features": ["index-v1"],
        "responder_seed": responder_seed.hex(),
        "responder_noise_static": noise_static_key(bob).hex(),
        "responder_ephemeral": responder_e.hex(),
        "responder_versions": list(VERSIONS),
        "responder_features": [],
        "chosen_version": result.version,
        "wire": wire,
        "payloads": [payload.hex() for payload in payloads],
        "payload_hashes": [h.hex() for h in hashes],
        "handshake_hash": result.handshake_hash.hex(),
        "initiator_to_responder_key": to_responder.key.hex() if to_responder.key else "",
        "responder_to_initiator_key": to_initiator.key.hex() if to_initiator.key else "",
        "verdict": encoding.pack([0]).hex(),
        "folder_key": folder.to_bytes().hex(),
        "proof_from_initiator": folder_proof(
            folder, result.handshake_hash, sender_is_initiator=True
        ).hex(),
        "proof_from_responder": folder_proof(
            folder, result.handshake_hash, sender_is_initiator=False
        ).hex(),
    }


def handshake_payloads(
    wire: list[bytes],
    initiator_static: bytes,
    responder_static: bytes,
    initiator_e: bytes,
    responder_e: bytes,
) -> tuple[list[bytes], list[bytes]]:
    """The plaintext payload of each framed handshake message, and the handshake hash just
    before it (what message 2's and 3's signatures cover; empty for message 1), read back
    with bare Noise states that know both sides' keys."""
    frames = [w[2:] for w in wire]
    initiator = HandshakeState(
        NOISE_PROTOCOL, initiator=True, prologue=PROLOGUE, ephemeral=initiator_e
    )
    responder = HandshakeState(
        NOISE_PROTOCOL,
        initiator=False,
        prologue=PROLOGUE,
        static=responder_static,
        ephemeral=responder_e,
    )
    first = responder.read_message(frames[0])
    assert initiator.write_message(first) == frames[0]
    second = initiator.read_message(frames[1])
    second_hash = initiator.hash_before_payload
    assert responder.write_message(second) == frames[1]
    third = responder.read_message(frames[2])
    third_hash = responder.hash_before_payload
    return [first, second, third], [b"", second_hash, third_hash]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main() -> None:
    OUT.mkdir(exist_ok=True)
    schema = OUT.parent / "messages.json"
    schema.write_text(json.dumps(messages.schema_as_json(), indent=1) + "\n")
    print(f"wrote {schema}")
    files = {
        "identity.json": identities(),
        "folder-keys.json": folder_keys(),
        "chunking.json": chunking(),
        "padding.json": paddings(),
        "sealed-chunks.json": sealed_chunks(),
        "version-vectors.json": version_vectors(),
        "records.json": records(),
        "paths.json": path_cases(),
        "messages.json": wire_messages(),
        "channel-handshake.json": channel_handshake(),
    }
    for name, content in files.items():
        (OUT / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
