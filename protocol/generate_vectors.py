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

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.bindings import (
    crypto_box,
    crypto_scalarmult_base,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)

from commonsync.errors import CommonsyncError, EntryMalformedError
from commonsync.formats import encoding, messages, padding, paths
from commonsync.formats.chunking import iter_chunks
from commonsync.formats.chunks import CHUNK_PAD_FLOOR, chunk_id, seal_chunk
from commonsync.formats.hashing import blake2b, derive_key
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
from commonsync.membership import codes, epochs, invitations
from commonsync.membership import entries as membership_entries
from commonsync.membership.log import MAX_ENTRIES, MembershipLog
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
        messages.LogHeads(seed("folder", 32), 7, [seed("head a", 32), seed("head b", 32)], 2),
        messages.LogEntries(seed("folder", 32), [seed("entry 1", 180), seed("entry 2", 240)]),
        messages.EpochKeys(seed("folder", 32), [seed("epoch key 1", 75), seed("epoch key 2", 75)]),
        messages.Join(seed("folder", 32), seed("invitation", 32), "Anne", seed("admission", 64)),
        messages.Joined(0, "", "Choir scores", seed("folder key", 75)),
        messages.Joined(1, "the invitation has expired", "", b""),
        messages.CodeHello(7, b"S" + seed("code pake", 32)),
        messages.CodeProof(seed("code proof", 32)),
        messages.CodeAnswer(0, "", seed("code member proof", 32), "commonsync://join/aaaa#bbbb"),
        messages.CodeAnswer(1, "wrong code: check it with the person who gave it", b"", ""),
        messages.CodeAnswer(2, "no code 7 is open on this device", b"", ""),
        messages.Progress(seed("folder id", 32), seed("index id", 16), 1200, 3400, 7, 812_000_000),
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


# -- membership (SPEC.md §15) ---------------------------------------------------------------------

#: The vectors' clock: every entry's time is this plus some minutes.
MEMBERSHIP_T0 = 1_800_000_000


def membership() -> dict[str, Any]:
    """Membership entries of each operation, encodings every implementation refuses, a log
    with a fork and its merge, an invitation's key and admission, and an epoch's secret sealed
    to a device (SPEC.md §15). Sealed secrets use fixed ephemeral keys (:func:`_seal_with`)."""
    folder_id = seed("membership folder id", 32)
    people = {n: _member_identity(n) for n in ("ada", "bea", "bea 2", "fay", "fay 2")}
    invitation_secret = seed("membership invitation secret", 16)
    epoch_secret = seed("membership epoch secret", 32)
    cases, invite, epoch_entry = _membership_entries(
        folder_id, people, invitation_secret, epoch_secret
    )
    fay = [people["fay"].public_key, people["fay 2"].public_key]
    bea = people["bea"]
    x_public = crypto_sign_ed25519_pk_to_curve25519(bea.public_key)
    _public, ed_secret = crypto_sign_seed_keypair(bea.seed)
    ephemeral = seed("membership epoch ephemeral bea", 32)
    ephemeral_public = crypto_scalarmult_base(ephemeral)
    assert isinstance(epoch_entry.action, membership_entries.NewEpoch)
    sealed = dict(epoch_entry.action.wrapped)[bea.public_key]
    epoch_key = FolderKey(folder_id, epoch_entry.action.epoch, epoch_secret)
    secret_hash = epochs.secret_hash(epoch_secret)
    assert epochs.open_secret(bea, folder_id, epoch_key.epoch, secret_hash, sealed) == epoch_key
    return {
        "description": (
            "membership log (SPEC.md §15): entries of each operation (inputs, signed bytes, "
            "encoding, hash); encodings every implementation refuses, with the reason; a log "
            "with a fork and its merge (effect order, heads, state, entries without effect, "
            "entries refused); removals revoking invitations (a log, its effects and state); "
            "an invitation's key and admission signature; an epoch's secret "
            "sealed to a device (with the ephemeral key used: crypto_box_seal draws it at "
            "random) and the folder key it opens to. Bytes are hex; in args, "
            '{"hex": ...} is a msgpack bin and a plain string a msgpack str'
        ),
        "contexts": {
            "signature": membership_entries.SIGNATURE_CONTEXT.decode(),
            "hash": membership_entries.HASH_CONTEXT.decode(),
            "invitation_key": invitations.KEY_CONTEXT.decode(),
            "admission": invitations.ADMISSION_CONTEXT.decode(),
            "epoch_secret": epochs.SECRET_HASH_CONTEXT.decode(),
        },
        "limits": {
            "max_entry_bytes": membership_entries.MAX_ENTRY_BYTES,
            "max_parents": membership_entries.MAX_PARENTS,
            "max_devices": membership_entries.MAX_DEVICES,
            "max_name_bytes": membership_entries.MAX_NAME_BYTES,
            "sealed_secret_bytes": membership_entries.SEALED_SECRET_BYTES,
            "max_entries": MAX_ENTRIES,
        },
        "entries": [_entry_case(label, entry, by) for label, entry, by in cases],
        "invalid_entries": _invalid_entries(folder_id, people["ada"], bea),
        "log": _membership_log(),
        "revocation": _membership_revocation(),
        "invitation": {
            "secret": invitation_secret.hex(),
            "key_seed": derive_key(invitation_secret, invitations.KEY_CONTEXT).hex(),
            "key": invitations.invitation_key(invitation_secret).hex(),
            "folder_id": folder_id.hex(),
            "invitation": invite.hash.hex(),
            "name": "Fay",
            "devices": [d.hex() for d in fay],
            "admission_message": invitations.admission_message(
                folder_id, invite.hash, "Fay", fay
            ).hex(),
            "signature": invitations.sign_admission(
                invitation_secret, folder_id, invite.hash, "Fay", fay
            ).hex(),
            "refused_secret_sizes": [15, 65],
        },
        "epoch": {
            "device_seed": bea.seed.hex(),
            "device_public_key": bea.public_key.hex(),
            "device_x25519_public_key": x_public.hex(),
            "device_x25519_secret_key": crypto_sign_ed25519_sk_to_curve25519(ed_secret).hex(),
            "folder_id": folder_id.hex(),
            "epoch": epoch_key.epoch,
            "ephemeral_secret_key": ephemeral.hex(),
            "ephemeral_public_key": ephemeral_public.hex(),
            "nonce": blake2b(ephemeral_public + x_public, size=24).hex(),
            "sealed": sealed.hex(),
            "secret": epoch_secret.hex(),
            "secret_hash": secret_hash.hex(),
            "folder_key": epoch_key.to_bytes().hex(),
            "record_seal_key": epoch_key.record_seal_key.hex(),
            "entry": epoch_entry.hash.hex(),
        },
    }


def _member_identity(name: str) -> DeviceIdentity:
    return DeviceIdentity.from_seed(seed(f"membership device {name}", 32))


def _seal_with(secret: bytes, device: bytes, ephemeral: bytes) -> bytes:
    """``crypto_box_seal(secret, X25519(device))`` with the ephemeral secret key given instead
    of drawn: ``epk || crypto_box(secret, H(epk || pk, 24), pk, esk)``, libsodium's
    construction, so the vectors are the same at every run (the tests open it with
    libsodium's own ``crypto_box_seal_open``)."""
    public = crypto_sign_ed25519_pk_to_curve25519(device)
    ephemeral_public = crypto_scalarmult_base(ephemeral)
    nonce = blake2b(ephemeral_public + public, size=24)
    return ephemeral_public + crypto_box(secret, nonce, public, ephemeral)


def _new_epoch(
    number: int, secret: bytes, devices: list[bytes], label: str
) -> membership_entries.NewEpoch:
    """A new epoch sealed to ``devices``, each with the ephemeral key ``seed(label ...)``."""
    wrapped = tuple(
        (d, _seal_with(secret, d, seed(f"{label} ephemeral {d.hex()}", 32)))
        for d in sorted(devices)
    )
    return membership_entries.NewEpoch(number, epochs.secret_hash(secret), wrapped)


_Case = tuple[str, membership_entries.Entry, DeviceIdentity]


def _membership_entries(
    folder_id: bytes,
    people: dict[str, DeviceIdentity],
    invitation_secret: bytes,
    epoch_secret: bytes,
) -> tuple[list[_Case], membership_entries.Entry, membership_entries.Entry]:
    """One entry of each operation (two of add member), then valid entries at the limits;
    also the invite entry and the new epoch, which the invitation and epoch vectors use."""
    me = membership_entries
    ada, bea = people["ada"], people["bea"]
    t0 = MEMBERSHIP_T0
    p0, p1 = sorted([seed("membership parent 0", 32), seed("membership parent 1", 32)])
    member = seed("membership member id", 32)
    device = seed("membership device key", 32)  # any 32 bytes decode; the log checks more
    cases: list[_Case] = []

    def make(label: str, by: DeviceIdentity, parents: list[bytes], time: int, action: Any) -> Any:
        entry = me.make_entry(by, folder_id, parents, time, action)
        cases.append((label, entry, by))
        return entry

    make("genesis", ada, [], t0, me.Genesis("Ada Lovelace"))
    bea_devices = (bea.public_key, people["bea 2"].public_key)
    make("add member", ada, [p0], t0 + 1, me.AddMember("Bea", me.Role.ADMIN, bea_devices))
    key = invitations.invitation_key(invitation_secret)
    invite = make("invite", ada, [p0], t0 + 60, me.Invite(key, me.Role.WRITER, t0 + 7 * 86400, 3))
    fay = [people["fay"].public_key, people["fay 2"].public_key]
    proof = invitations.sign_admission(invitation_secret, folder_id, invite.hash, "Fay", fay)
    make(
        "add member by invitation",
        bea,
        [invite.hash],
        t0 + 120,
        me.AddMember("Fay", me.Role.WRITER, tuple(fay), invite.hash, proof),
    )
    credits = ((device, 17), (bea.public_key, 0))
    make("set role", bea, [p1], t0 + 180, me.SetRole(member, me.Role.READER, credits))
    make("add device", bea, [p1], t0 + 240, me.AddDevice(member, device))
    make("remove device", bea, [p1], t0 + 300, me.RemoveDevice(member, device, 99))
    credits = ((device, 41), (bea.public_key, 2**63 - 1))
    make("remove member", ada, [p0, p1], t0 + 360, me.RemoveMember(member, credits))
    # Sealed to Bea with the ephemeral key of the epoch vector.
    wrapped = tuple(
        (d, _seal_with(epoch_secret, d, seed(f"membership epoch ephemeral {name}", 32)))
        for d, name in sorted([(ada.public_key, "ada"), (bea.public_key, "bea")])
    )
    new_epoch = me.NewEpoch(1, epochs.secret_hash(epoch_secret), wrapped)
    epoch = make("new epoch", ada, [p0, p1], t0 + 420, new_epoch)
    make("revoke invitation", bea, [invite.hash], t0 + 480, me.RevokeInvitation(invite.hash))
    # Valid at the limits.
    sixteen = [seed(f"membership parent {i}", 32) for i in range(16)]
    make("16 parents", ada, sixteen, t0, me.RevokeInvitation(invite.hash))
    make("name of 128 bytes", ada, [p0], t0, me.AddMember("é" * 64, me.Role.OWNER, (device,)))
    make(
        "name with a joiner, a no-break space and a recent emoji",
        ada,
        [p0],
        t0,
        me.AddMember("👩\u200d💻\u00a0Zoë \U0001fae8", me.Role.READER, (device,)),
    )
    largest = me.Invite(device, me.Role.OWNER, 2**63 - 1, 10_000)
    make("largest time, expiry and uses", ada, [p0], 2**63 - 1, largest)
    last = _new_epoch(2**32 - 1, epoch_secret, [ada.public_key], "membership last epoch")
    make("last epoch", ada, [p0], t0, last)
    return cases, invite, epoch


def _entry_case(label: str, entry: membership_entries.Entry, by: DeviceIdentity) -> Any:
    assert membership_entries.decode_entry(entry.encoded) == entry
    return {
        "label": label,
        "author_seed": by.seed.hex(),
        "folder_id": entry.folder_id.hex(),
        "parents": [p.hex() for p in entry.parents],
        "author": entry.author.hex(),
        "time": entry.time,
        "op": int(entry.op),
        "args": _jsonable(encoding.unpack(entry.encoded, max_size=1 << 16)[6]),
        "signed": entry.signed_bytes().hex(),
        "signature": entry.signature.hex(),
        "encoded": entry.encoded.hex(),
        "hash": entry.hash.hex(),
    }


def _signed_raw(by: DeviceIdentity, fields: list[Any]) -> bytes:
    """An entry of any seven fields, validly signed: what a faulty or hostile implementation
    could send (a decoder must refuse it for the fault alone)."""
    return _signed_bytes(by, encoding.pack(fields))


def _signed_bytes(by: DeviceIdentity, fields: bytes) -> bytes:
    """``fields`` (an encoded array of seven) made an entry: the array of eight with the
    signature over the context and those very bytes."""
    assert fields[0] == 0x97
    signature = by.sign(membership_entries.SIGNATURE_CONTEXT + fields)
    return b"\x98" + fields[1:] + encoding.pack(signature)


def _invalid_entries(
    folder_id: bytes, ada: DeviceIdentity, bea: DeviceIdentity
) -> list[dict[str, str]]:
    """Encodings every implementation must refuse, each with the reason. All but the first
    carry a signature by their author over exactly their first seven fields, so that only the
    fault named refuses them."""
    me = membership_entries
    t0 = MEMBERSHIP_T0
    parent = seed("membership parent 0", 32)
    d1 = seed("membership device key", 32)
    member = seed("membership member id", 32)
    good_args: list[Any] = ["Bea", 2, [d1], b"", b""]
    good: list[Any] = [1, folder_id, [parent], ada.public_key, t0, 1, good_args]
    valid = _signed_raw(ada, good)
    assert me.decode_entry(valid).encoded == valid
    signature = valid[-64:]
    body = [encoding.pack(f) for f in good]
    names = ["format", "folder_id", "parents", "author", "time", "op", "args"]

    def variant(reason: str, by: DeviceIdentity = ada, **changes: Any) -> dict[str, str]:
        fields = list(good)
        for name, value in changes.items():
            fields[names.index(name)] = value
        return {"reason": reason, "encoded": _signed_raw(by, fields).hex()}

    def args(reason: str, op: int, arguments: list[Any]) -> dict[str, str]:
        return variant(reason, op=op, args=arguments)

    def raw(reason: str, data: bytes) -> dict[str, str]:
        return {"reason": reason, "encoded": data.hex()}

    def canonical_signed(reason: str, field: str, encoded: bytes) -> dict[str, str]:
        """A field in a non-canonical form, signed as its canonical form would be."""
        parts = list(body)
        parts[names.index(field)] = encoded
        return raw(reason, b"\x98" + b"".join(parts) + encoding.pack(signature))

    def signed_with(reason: str, field: str, encoded: bytes) -> dict[str, str]:
        """A field as raw msgpack bytes, signed as it is."""
        parts = list(body)
        parts[names.index(field)] = encoded
        return raw(reason, _signed_bytes(ada, b"\x97" + b"".join(parts)))

    tampered = bytearray(valid)
    tampered[-1] ^= 0x01
    bad_utf8 = b"\x95\xa2\xff\xfe" + b"".join(encoding.pack(a) for a in good_args[1:])
    sealed = bytes(me.SEALED_SECRET_BYTES)
    many = [seed(f"membership device {i}", 32) for i in range(me.MAX_DEVICES + 1)]
    cases = [
        raw("the signature does not verify (one bit changed)", bytes(tampered)),
        variant("signed by another device than its author", by=bea),
        canonical_signed(
            "not canonical: the time as a uint 64 (signed as its canonical form)",
            "time",
            b"\xcf" + t0.to_bytes(8, "big"),
        ),
        canonical_signed(
            "not canonical: the format as true (signed as its canonical form)", "format", b"\xc3"
        ),
        signed_with("the time a float", "time", b"\xcb" + bytes(8)),
        raw("a map instead of an array", encoding.pack({"format": 1})),
        raw("7 fields (no signature)", encoding.pack(good)),
        raw("9 fields", encoding.pack([*good, signature, 0])),
        raw("trailing bytes", valid + b"\xc0"),
        raw("it ends early", valid[:-1]),
        raw("an empty input", b""),
        raw("nested 17 levels deep", b"\x91" * 16 + b"\x90"),
        raw(
            "larger than 65,536 bytes",
            encoding.pack([*good[:6], ["Bea", 2, [d1], b"", bytes(65_536)], signature]),
        ),
        variant("unknown format 2", format=2),
        variant("a folder ID of 31 bytes", folder_id=folder_id[:31]),
        variant("an author of 31 bytes", author=ada.public_key[:31]),
        raw("a signature of 63 bytes", encoding.pack([*good, signature[:63]])),
        variant("the time negative", time=-1),
        variant("the time above 2^63 - 1", time=2**63),
        variant("parents unsorted", parents=sorted([parent, d1], reverse=True)),
        variant("a parent named twice", parents=[parent, parent]),
        variant(
            "17 parents", parents=sorted(seed(f"membership parent {i}", 32) for i in range(17))
        ),
        variant("a parent of 31 bytes", parents=[parent[:31]]),
        variant("no parents, not a genesis entry", parents=[]),
        args("a genesis entry with parents", 0, ["Ada"]),
        args("unknown operation 9", 9, ["Ada"]),
        variant("the operation as true", op=True),
        variant("the arguments not an array", args="Bea"),
        args("genesis with 2 arguments", 0, ["Ada", 3]),
        args("add member with 4 arguments", 1, ["Bea", 2, [d1], b""]),
        args("a name of 129 bytes", 1, ["é" * 64 + "x", 2, [d1], b"", b""]),
        args("a name as bin", 1, [b"Bea", 2, [d1], b"", b""]),
        args("a name with a newline", 1, ["Bea\nBoss", 2, [d1], b"", b""]),
        args("a name with a C1 control (U+0085)", 1, ["Bea\u0085", 2, [d1], b"", b""]),
        args("a name with a right-to-left override", 1, ["Bea\u202egnp", 2, [d1], b"", b""]),
        args("a name with a bidirectional isolate", 1, ["Bea\u2067", 2, [d1], b"", b""]),
        args("a name with a line separator", 1, ["Bea\u2028", 2, [d1], b"", b""]),
        signed_with("a name not valid UTF-8", "args", bad_utf8),
        args("unknown role 4", 1, ["Bea", 4, [d1], b"", b""]),
        args("the role as true", 1, ["Bea", True, [d1], b"", b""]),
        args("add member with no device", 1, ["Bea", 2, [], b"", b""]),
        args("a device named twice", 1, ["Bea", 2, [d1, d1], b"", b""]),
        args("a device key of 31 bytes", 1, ["Bea", 2, [d1[:31]], b"", b""]),
        args("513 devices", 1, ["Bea", 2, many, b"", b""]),
        args("an invitation without the joiner's signature", 1, ["Bea", 2, [d1], parent, b""]),
        args("a joiner's signature without an invitation", 1, ["Bea", 2, [d1], b"", bytes(64)]),
        args("an invitation of 16 bytes", 1, ["Bea", 2, [d1], parent[:16], bytes(64)]),
        args("a joiner's signature of 63 bytes", 1, ["Bea", 2, [d1], parent, bytes(63)]),
        args("set role with a credit not a pair", 2, [member, 0, [[d1]]]),
        args("set role crediting a device twice", 2, [member, 0, [[d1, 1], [d1, 2]]]),
        args("set role with a negative credit", 2, [member, 0, [[d1, -1]]]),
        args("add device to a member ID of 31 bytes", 3, [member[:31], d1]),
        args("remove device with a negative last sequence", 4, [member, d1, -1]),
        args("remove member with credits not an array", 5, [member, 7]),
        args("epoch 0", 6, [0, bytes(32), [[d1, sealed]]]),
        args("epoch 2^32", 6, [2**32, bytes(32), [[d1, sealed]]]),
        args("a sealed secret of 79 bytes", 6, [1, bytes(32), [[d1, sealed[:79]]]]),
        args("a secret hash of 31 bytes", 6, [1, bytes(31), [[d1, sealed]]]),
        args("an epoch sealed twice to a device", 6, [1, bytes(32), [[d1, sealed], [d1, sealed]]]),
        args("an invitation of 0 uses", 7, [d1, 1, t0, 0]),
        args("an invitation of 10,001 uses", 7, [d1, 1, t0, 10_001]),
        args("an invitation key of 33 bytes", 7, [d1 + b"\x00", 1, t0, 1]),
        args("revoking an invitation of 31 bytes", 8, [parent[:31]]),
        args("revoking nothing", 8, [b""]),
    ]
    for case in cases:
        try:
            me.decode_entry(bytes.fromhex(case["encoded"]))
        except EntryMalformedError:
            continue
        raise SystemExit(f"invalid entry {case['reason']!r} decodes without error")
    return cases


def _membership_log() -> dict[str, Any]:
    """A folder's log with a fork. Ada (owner) starts it and adds Bea (admin), who adds Cy
    (writer, two devices) and Dee (reader); Ada invites one writer. Then Ada and Bea act
    apart: Ada removes Cy while Bea makes Cy an admin and Cy, as admin, adds Eve (both voided
    by the removal); Ada and Bea each add the same device to themselves, and Ada and Dee each
    admit someone with the invitation's one use (the first in the order of effects wins); Ada
    invites readers and Bea adds Dee a device (independent: both take effect); Bea starts an
    epoch sealed to Cy too (voided by the removal). Ada's new epoch merges the two heads. Then
    six entries every device refuses."""
    me = membership_entries
    folder_id = seed("membership log folder id", 32)
    names = ["ada", "bea", "cy", "cy 2", "dee", "dee 2", "eve", "fay", "gus", "shared", "mallory"]
    ids = {n: DeviceIdentity.from_seed(seed(f"membership log device {n}", 32)) for n in names}
    secret = seed("membership log invitation secret", 16)
    epoch_secret = seed("membership log epoch secret", 32)
    day = MEMBERSHIP_T0 + 86400
    times = iter(range(MEMBERSHIP_T0, day, 60))
    written: dict[str, me.Entry] = {}

    def key(name: str) -> bytes:
        return ids[name].public_key

    def write(
        label: str,
        by: str,
        after: list[str],
        action: Any,
        folder: bytes = folder_id,
        time: int | None = None,
    ) -> bytes:
        parents = [written[p].hash for p in after]
        at = next(times) if time is None else time
        written[label] = me.make_entry(ids[by], folder, parents, at, action)
        return written[label].hash

    def admit(name: str, invitation: bytes) -> me.AddMember:
        shown = name.capitalize()
        proof = invitations.sign_admission(secret, folder_id, invitation, shown, [key(name)])
        return me.AddMember(shown, me.Role.WRITER, (key(name),), invitation, proof)

    ada = write("genesis: Ada", "ada", [], me.Genesis("Ada"))
    bea_added = me.AddMember("Bea", me.Role.ADMIN, (key("bea"),))
    bea = write("Ada adds Bea (admin)", "ada", ["genesis: Ada"], bea_added)
    cy_added = me.AddMember("Cy", me.Role.WRITER, (key("cy"), key("cy 2")))
    cy = write("Bea adds Cy (writer)", "bea", ["Ada adds Bea (admin)"], cy_added)
    dee_added = me.AddMember("Dee", me.Role.READER, (key("dee"),))
    dee = write("Bea adds Dee (reader)", "bea", ["Bea adds Cy (writer)"], dee_added)
    base = "Ada invites a writer (1 use)"
    invite_action = me.Invite(invitations.invitation_key(secret), me.Role.WRITER, day, 1)
    invite = write(base, "ada", ["Bea adds Dee (reader)"], invite_action)
    second_key = seed("membership log second invitation key", 32)
    owner_branch = [
        ("Ada removes Cy", "ada", me.RemoveMember(cy, ((key("cy"), 41), (key("cy 2"), 7)))),
        ("Ada adds the shared device to herself", "ada", me.AddDevice(ada, key("shared"))),
        ("Ada invites readers (5 uses)", "ada", me.Invite(second_key, me.Role.READER, day, 5)),
        ("Ada admits Gus with the invitation", "ada", admit("gus", invite)),
    ]
    admin_branch = [
        ("Bea makes Cy an admin", "bea", me.SetRole(cy, me.Role.ADMIN)),
        ("Cy, as admin, adds Eve", "cy", me.AddMember("Eve", me.Role.READER, (key("eve"),))),
        ("Bea adds Dee a second device", "bea", me.AddDevice(dee, key("dee 2"))),
        ("Bea adds the shared device to herself", "bea", me.AddDevice(bea, key("shared"))),
        ("Dee admits Fay with the invitation", "dee", admit("fay", invite)),
        ("Bea starts epoch 1", "bea", None),  # sealed to the devices in force on her side
    ]
    # The first times (a minute apart) at which the branches interleave in the order of
    # effects, so that the vector tells the rule from simpler ones.
    before_fork = dict(written)
    owner_labels = {label for label, _, _ in owner_branch}
    bea_secret = seed("membership log bea's epoch secret", 32)
    for shift in range(100):
        written.clear()
        written.update(before_fork)
        for branch, start in ((owner_branch, 3600 + 60 * shift), (admin_branch, 3600)):
            previous = base
            for i, (label, by, action) in enumerate(branch):
                if action is None:
                    side = [e for name, e in written.items() if name not in owner_labels]
                    devices = _devices_in_force(folder_id, side)
                    action = _new_epoch(1, bea_secret, devices, "membership log bea's epoch")
                write(label, by, [previous], action, time=MEMBERSHIP_T0 + start + 60 * i)
                previous = label
        if _interleaves(folder_id, written, owner_labels):
            break
    else:
        raise SystemExit("no times found at which the branches interleave")
    forked = list(written.values())
    before_merge = MembershipLog(folder_id, forked[0])
    assert before_merge.add(forked[1:]) == []
    heads = [label for label, e in written.items() if e.hash in before_merge.heads]
    merge_label = "Ada starts epoch 1 (the merge)"
    epoch = _new_epoch(
        1, epoch_secret, _devices_in_force(folder_id, forked), "membership log epoch"
    )
    write(merge_label, "ada", heads, epoch)
    merge = written[merge_label]
    log = MembershipLog(folder_id, forked[0])
    assert log.add([*forked[1:], merge]) == []
    labels = {e.hash: label for label, e in written.items()}

    third_key = seed("membership log third invitation key", 32)
    fourth_key = seed("membership log fourth invitation key", 32)
    other_folder = seed("membership log other folder", 32)
    refusals = [
        ("Dee makes herself an admin", "dee", [base], me.SetRole(dee, me.Role.ADMIN)),
        (
            "Dee, as if admin, invites",
            "dee",
            ["Dee makes herself an admin"],
            me.Invite(third_key, me.Role.ADMIN, day, 1),
        ),
        ("Bea adds a device to Ada", "bea", [base], me.AddDevice(ada, key("mallory"))),
        ("Mallory writes a second genesis", "mallory", [], me.Genesis("Mallory")),
        ("Cy, removed, removes Dee", "cy", [merge_label], me.RemoveMember(dee, ())),
    ]
    for label, by, after, action in refusals:
        write(label, by, after, action)
    invite_elsewhere = me.Invite(fourth_key, me.Role.READER, day, 1)
    write("Ada invites, in another folder", "ada", [base], invite_elsewhere, other_folder)
    why = {
        "Dee makes herself an admin": "only admins and owners change roles",
        "Dee, as if admin, invites": "its parents are not in the log",
        "Bea adds a device to Ada": "only owners add an owner's device",
        "Mallory writes a second genesis": "a second genesis entry",
        "Cy, removed, removes Dee": "its author is not a device of a member",
        "Ada invites, in another folder": "it is another folder's",
    }
    refused = [
        {"label": label, "encoded": written[label].encoded.hex(), "hash": written[label].hash.hex()}
        | {"reason": reason}
        for label, reason in why.items()
    ]
    again = MembershipLog(folder_id, forked[0])
    got = again.add([*forked[1:], merge, *(written[label] for label in why)])
    assert sorted((e.hash.hex(), r) for e, r in got) == sorted(
        (r["hash"], r["reason"]) for r in refused
    ), got
    assert again.state == log.state
    effects = log.effects()
    return {
        "folder_id": folder_id.hex(),
        "device_seeds": {name: ident.seed.hex() for name, ident in ids.items()},
        "invitation_secret": secret.hex(),
        "epoch_secret": epoch_secret.hex(),
        "entries": [
            {"label": labels[e.hash], "encoded": e.encoded.hex(), "hash": e.hash.hex()}
            for e in [*forked, merge]
        ],
        "heads_before_merge": [h.hex() for h in before_merge.heads],
        "state_before_merge": before_merge.state.as_json(),
        "merge": merge.hash.hex(),
        "heads_after_merge": [h.hex() for h in log.heads],
        "effect_order": [e.hash.hex() for e, _ in effects],
        "no_effect": [
            {"hash": e.hash.hex(), "label": labels[e.hash], "reason": reason}
            for e, reason in effects
            if reason is not None
        ],
        "state": log.state.as_json(),
        "refused": refused,
    }


def _entry_writer(
    ids: dict[str, DeviceIdentity], folder_id: bytes
) -> tuple[dict[str, membership_entries.Entry], Callable[[str, str, list[str], Any], bytes]]:
    """The entries a vector's log writes, by label, and the function that writes one: by
    the device named ``by``, after the entries labelled ``after``, a minute after the last."""
    times = iter(range(MEMBERSHIP_T0, MEMBERSHIP_T0 + 86400, 60))
    written: dict[str, membership_entries.Entry] = {}

    def write(label: str, by: str, after: list[str], action: Any) -> bytes:
        parents = sorted(written[p].hash for p in after)
        written[label] = membership_entries.make_entry(
            ids[by], folder_id, parents, next(times), action
        )
        return written[label].hash

    return written, write


def _membership_revocation() -> dict[str, Any]:
    """Removals revoke invitations (SPEC.md §15.6). Ada (owner) invites a group (5 uses);
    Bea joins with it, becomes an admin, adds her phone, and invites from the phone and from
    her laptop. Ada removes Bea's phone (revoking the group's invitation, which admitted Bea,
    and the phone's), then, apart from Cy, who admits Bea again under a new key with the
    group's invitation, removes Bea (revoking the laptop's): the readmission takes no effect,
    whatever the order; Dee's admission with the laptop's invitation after it is refused."""
    me = membership_entries
    folder_id = seed("membership revocation folder id", 32)
    names = ["ada", "bea", "bea phone", "bea again", "cy", "dee"]
    ids = {
        n: DeviceIdentity.from_seed(seed(f"membership revocation device {n}", 32)) for n in names
    }
    secrets = {
        n: seed(f"membership revocation secret {n}", 16) for n in ("group", "phone", "laptop")
    }
    day = MEMBERSHIP_T0 + 86400
    written, write = _entry_writer(ids, folder_id)

    def admit(name: str, shown: str, secret: str, invitation: bytes) -> me.AddMember:
        key = ids[name].public_key
        proof = invitations.sign_admission(secrets[secret], folder_id, invitation, shown, [key])
        return me.AddMember(shown, me.Role.WRITER, (key,), invitation, proof)

    def invite(secret: str, uses: int) -> me.Invite:
        return me.Invite(invitations.invitation_key(secrets[secret]), me.Role.WRITER, day, uses)

    write("genesis: Ada", "ada", [], me.Genesis("Ada"))
    group = write("Ada invites a group (5 uses)", "ada", ["genesis: Ada"], invite("group", 5))
    bea = write(
        "Bea joins with it",
        "ada",
        ["Ada invites a group (5 uses)"],
        admit("bea", "Bea", "group", group),
    )
    write("Ada makes Bea an admin", "ada", ["Bea joins with it"], me.SetRole(bea, me.Role.ADMIN))
    cy_key = ids["cy"].public_key
    write(
        "Ada adds Cy",
        "ada",
        ["Ada makes Bea an admin"],
        me.AddMember("Cy", me.Role.WRITER, (cy_key,)),
    )
    phone = ids["bea phone"].public_key
    write("Bea adds her phone", "bea", ["Ada adds Cy"], me.AddDevice(bea, phone))
    write("Bea's phone invites", "bea phone", ["Bea adds her phone"], invite("phone", 3))
    laptop = write("Bea's laptop invites", "bea", ["Bea's phone invites"], invite("laptop", 3))
    write(
        "Ada removes Bea's phone",
        "ada",
        ["Bea's laptop invites"],
        me.RemoveDevice(bea, phone, 0),
    )
    write("Ada removes Bea", "ada", ["Ada removes Bea's phone"], me.RemoveMember(bea, ()))
    readmission = admit("bea again", "Bea", "group", group)
    write(
        "Cy admits Bea again with the group's invitation",
        "cy",
        ["Bea's laptop invites"],
        readmission,
    )
    merge = ["Ada removes Bea", "Cy admits Bea again with the group's invitation"]
    dee = admit("dee", "Dee", "laptop", laptop)
    refused = write("Ada admits Dee with the laptop's invitation", "ada", merge, dee)
    entries = list(written.values())
    log = MembershipLog(folder_id, entries[0])
    got = log.add(entries[1:])
    assert [(e.hash, r) for e, r in got] == [(refused, "the invitation was revoked")], got
    labels = {e.hash: label for label, e in written.items()}
    effects = log.effects()
    no_effect = [(labels[e.hash], r) for e, r in effects if r is not None]
    assert no_effect == [
        (
            "Cy admits Bea again with the group's invitation",
            "a concurrent removal revokes the invitation it admits with",
        )
    ], no_effect
    return {
        # First, so that the keys before it (and the file's lines) stay as they were.
        "demotion": _membership_demotion(),
        "folder_id": folder_id.hex(),
        "device_seeds": {name: ident.seed.hex() for name, ident in ids.items()},
        "invitation_secrets": {name: secret.hex() for name, secret in secrets.items()},
        "entries": [
            {"label": label, "encoded": e.encoded.hex(), "hash": e.hash.hex()}
            for label, e in written.items()
            if e.hash != refused
        ],
        "effect_order": [e.hash.hex() for e, _ in effects],
        "no_effect": [
            {"hash": e.hash.hex(), "label": labels[e.hash], "reason": reason}
            for e, reason in effects
            if reason is not None
        ],
        "state": log.state.as_json(),
        "refused": [
            {
                "label": labels[refused],
                "encoded": written[labels[refused]].encoded.hex(),
                "hash": refused.hex(),
                "reason": "the invitation was revoked",
            }
        ],
    }


def _membership_demotion() -> dict[str, Any]:
    """An invitation admits only while its maker may invite (SPEC.md §15.3, add member; §15.6).
    Bea (admin) invites admins (3 uses); Cy, a writer, admits Dee with it. Ada (owner) makes
    Bea a writer: Bea, who keeps the secret, admitting a device of her own as an admin with it
    is refused, and nothing is revoked. Ada makes Bea an admin again and Cy admits Eve with
    the same invitation. Bea's admission is still refused in the final log: whether a log
    takes an entry depends on the state of its ancestors, where Bea is a writer."""
    me = membership_entries
    folder_id = seed("membership demotion folder id", 32)
    names = ["ada", "bea", "bea spare", "cy", "dee", "eve"]
    ids = {n: DeviceIdentity.from_seed(seed(f"membership demotion device {n}", 32)) for n in names}
    secret = seed("membership demotion invitation secret", 16)
    day = MEMBERSHIP_T0 + 86400
    written, write = _entry_writer(ids, folder_id)

    def admit(name: str, shown: str, role: me.Role, invitation: bytes) -> me.AddMember:
        key = ids[name].public_key
        proof = invitations.sign_admission(secret, folder_id, invitation, shown, [key])
        return me.AddMember(shown, role, (key,), invitation, proof)

    write("genesis: Ada", "ada", [], me.Genesis("Ada"))
    bea_added = me.AddMember("Bea", me.Role.ADMIN, (ids["bea"].public_key,))
    bea = write("Ada adds Bea (admin)", "ada", ["genesis: Ada"], bea_added)
    cy_added = me.AddMember("Cy", me.Role.WRITER, (ids["cy"].public_key,))
    write("Ada adds Cy (writer)", "ada", ["Ada adds Bea (admin)"], cy_added)
    invite_admins = me.Invite(invitations.invitation_key(secret), me.Role.ADMIN, day, 3)
    invite = write("Bea invites admins (3 uses)", "bea", ["Ada adds Cy (writer)"], invite_admins)
    dee = admit("dee", "Dee", me.Role.WRITER, invite)
    write("Cy admits Dee with it", "cy", ["Bea invites admins (3 uses)"], dee)
    demote = me.SetRole(bea, me.Role.WRITER)
    write("Ada makes Bea a writer", "ada", ["Cy admits Dee with it"], demote)
    own = admit("bea spare", "Spare", me.Role.ADMIN, invite)
    label_refused = "Bea admits a device of her own as an admin"
    refused = write(label_refused, "bea", ["Ada makes Bea a writer"], own)
    promote = me.SetRole(bea, me.Role.ADMIN)
    write("Ada makes Bea an admin again", "ada", ["Ada makes Bea a writer"], promote)
    eve = admit("eve", "Eve", me.Role.WRITER, invite)
    write("Cy admits Eve with it", "cy", ["Ada makes Bea an admin again"], eve)
    reason = "the member who made the invitation is no longer an admin"
    kept = [e for e in written.values() if e.hash != refused]
    before_demotion = MembershipLog(folder_id, kept[0])
    assert before_demotion.add(kept[1:5]) == []
    before_demotion.append(ids["bea"], own, MEMBERSHIP_T0)  # only the demotion refuses it
    log = MembershipLog(folder_id, kept[0])
    assert log.add(kept[1:]) == []
    assert [(e.hash, r) for e, r in log.add([written[label_refused]])] == [(refused, reason)]
    assert not log.state.invitations[invite].revoked
    labels = {e.hash: label for label, e in written.items()}
    effects = log.effects()
    assert all(r is None for _, r in effects), effects
    return {
        "folder_id": folder_id.hex(),
        "device_seeds": {name: ident.seed.hex() for name, ident in ids.items()},
        "invitation_secret": secret.hex(),
        "entries": [
            {"label": labels[e.hash], "encoded": e.encoded.hex(), "hash": e.hash.hex()}
            for e in kept
        ],
        "effect_order": [e.hash.hex() for e, _ in effects],
        "no_effect": [],
        "state": log.state.as_json(),
        "refused": [
            {
                "label": label_refused,
                "encoded": written[label_refused].encoded.hex(),
                "hash": refused.hex(),
                "reason": reason,
            }
        ],
    }


def _devices_in_force(folder_id: bytes, entries: list[membership_entries.Entry]) -> list[bytes]:
    log = MembershipLog(folder_id, entries[0])
    assert log.add(entries[1:]) == []
    return [d for m in log.state.members.values() for d in m.devices]


def _interleaves(
    folder_id: bytes, written: dict[str, membership_entries.Entry], one: set[str]
) -> bool:
    """Whether, in the order of effects of ``written``, the entries of the branch ``one`` and
    the others alternate at least three times, and the order is not the one of depth first,
    then hash (a plausible misreading of SPEC.md §15.4)."""
    entries = list(written.values())
    log = MembershipLog(folder_id, entries[0])
    log.add(entries[1:])
    labels = {e.hash: label for label, e in written.items()}
    order = [e.hash for e, _ in log.effects()]
    sides = [labels[h] in one for h in order[5:]]  # after the 5 entries before the fork
    switches = sum(a != b for a, b in itertools.pairwise(sides))
    depth: dict[bytes, int] = {}
    for entry in log.entries():
        depth[entry.hash] = 1 + max((depth[p] for p in entry.parents), default=0)
    return switches >= 3 and order != sorted(order, key=lambda h: (depth[h], h))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def join_links() -> dict[str, Any]:
    """Invitation links (SPEC.md §15.9): the fields, and the text of the link."""
    from commonsync.formats.device_id import DeviceId
    from commonsync.membership.links import JoinLink

    link = JoinLink(
        seed("link folder", 32),
        seed("link invitation", 32),
        "Choir scores",
        seed("link secret", 16),
        "Anne",
        (
            (DeviceId(seed("link device a", 32)), ("192.0.2.7:22070", "[2001:db8::7]:22070")),
            (DeviceId(seed("link device b", 32)), ()),
        ),
        ("ZS5WX2N-43CA4PY-XKRFWEW-7BIFRR2-R7VIFOG-EM3XSDJ-S7MJXZS-SMRCOQA@relay.example:22067",),
    )
    return {
        "description": "invitation links: commonsync://join/<payload>#<secret> (SPEC.md §15.9)",
        "cases": [
            {
                "folder_id": link.folder_id.hex(),
                "invitation": link.invitation.hex(),
                "label": link.label,
                "secret": link.secret.hex(),
                "name": link.name,
                "devices": [[d.digest.hex(), list(a)] for d, a in link.devices],
                "relays": list(link.relays),
                "link": str(link),
            }
        ],
    }


def _fixed_entropy(entropy: bytes) -> Any:
    """An ``entropy_f`` for the spake2 package that hands out ``entropy`` once, whole: a
    side draws its scalar from exactly 64 bytes, and a vector that drew more or fewer would
    pin something else."""
    left = [entropy]

    def draw(n: int) -> bytes:
        if n != len(entropy) or not left:
            raise SystemExit(f"the PAKE asked for {n} bytes of entropy, not {len(entropy)} once")
        return left.pop()

    return draw


def _code_side(text: str, entropy: bytes) -> tuple[Any, dict[str, Any]]:
    """One side's start of the PAKE, with the intermediate values an implementer debugs
    with: the password's scalar and this side's scalar (32 bytes little-endian, reduced mod
    L)."""
    from spake2 import ed25519_basic as ed
    from spake2.groups import password_to_scalar

    code = codes.JoinCode.parse(text)
    password = str(code).encode()
    pake = codes.CodePake(code, entropy=_fixed_entropy(entropy))
    scalar = int.from_bytes(entropy, "big") % ed.L
    return pake, {
        "code": str(code),
        "password": password.hex(),
        "password_scalar": ed.scalar_to_bytes(password_to_scalar(password, 32, ed.L)).hex(),
        "entropy": entropy.hex(),
        "scalar": ed.scalar_to_bytes(scalar).hex(),
        "message": pake.message.hex(),
    }


def _shared_point(side: dict[str, Any], peer_message: str) -> str:
    """K = scalar · (peer's point - password_scalar · S), as SPEC.md §15.10 computes it."""
    from spake2 import ed25519_basic as ed
    from spake2.parameters.ed25519 import ParamsEd25519

    pw = ed.bytes_to_scalar(bytes.fromhex(side["password_scalar"]))
    scalar = ed.bytes_to_scalar(bytes.fromhex(side["scalar"]))
    peer = ed.bytes_to_element(bytes.fromhex(peer_message)[1:])
    shared = peer.add(ParamsEd25519.S.scalarmult(ed.L - pw)).scalarmult(scalar)
    return str(shared.to_bytes().hex())


def _code_run(
    label: str, joiner_text: str, member_text: str, handshake_hash: bytes
) -> dict[str, Any]:
    """One PAKE run on one channel: each side's values, its key and the proofs (the member's
    only if it accepts: it sends none to a joiner whose proof does not check)."""
    joiner, joiner_values = _code_side(joiner_text, seed(f"join code {label} joiner", 64))
    member, member_values = _code_side(member_text, seed(f"join code {label} member", 64))
    joiner_values["shared_point"] = _shared_point(joiner_values, member_values["message"])
    member_values["shared_point"] = _shared_point(member_values, joiner_values["message"])
    joiner_keys = joiner.finish(member.message, handshake_hash)
    member_keys = member.finish(joiner.message, handshake_hash)
    accepted = member_keys.check("joiner", joiner_keys.proof("joiner"))
    if accepted != (joiner_text == member_text):
        raise SystemExit(f"code run {label!r}: the joiner's proof checks {accepted}")
    joiner_values |= {"key": joiner_keys.key.hex(), "proof": joiner_keys.proof("joiner").hex()}
    member_values |= {
        "key": member_keys.key.hex(),
        "expected_joiner_proof": member_keys.proof("joiner").hex(),
    }
    if accepted:
        member_values["proof"] = member_keys.proof("member").hex()
        if not joiner_keys.check("member", member_keys.proof("member")):
            raise SystemExit(f"code run {label!r}: the member's proof does not check")
    return {
        "label": label,
        "handshake_hash": handshake_hash.hex(),
        "joiner": joiner_values,
        "member": member_values,
        "accepted": accepted,
    }


def join_codes() -> dict[str, Any]:
    """Short join codes (SPEC.md §15.10): texts read or refused, PAKE runs with fixed entropy
    (one with the right code, one with a wrong one) and PAKE messages every side refuses."""
    from spake2 import ed25519_basic as ed
    from spake2.parameters.ed25519 import ParamsEd25519

    def word_indexes(code: codes.JoinCode) -> list[int]:
        return [codes.WORDS.index(w) for w in code.words]

    readable = [
        "7-guitar-orbit",
        " 7 Guitar ORBIT ",
        "7--guitar - orbit",
        "7\tguitar\r\norbit",
        "-7-guitar-orbit-",
        "0042-acorn-zebra",
        "9999-zebra-acorn",
        "1-kiwi-kiwi",
    ]
    parsed = []
    for text in readable:
        code = codes.JoinCode.parse(text)
        parsed.append(
            {
                "text": text,
                "code": str(code),
                "nameplate": code.nameplate,
                "words": list(code.words),
                "word_indexes": word_indexes(code),
            }
        )
    unreadable = [
        ("", "empty"),
        ("7-guitar", "two parts"),
        ("7-guitar-orbit-otter", "four parts"),
        ("guitar-orbit-7", "the number is not first"),
        ("7 guitarorbit", "words not separated"),
        ("7_guitar_orbit", "_ is no separator"),
        ("7.guitar.orbit", ". is no separator"),
        ("+7-guitar-orbit", "a sign before the number"),
        ("0-guitar-orbit", "nameplate 0"),
        ("10000-guitar-orbit", "nameplate above 9999"),
        ("7-gitar-orbit", "the first word is not in the list"),
        ("7-guitar-orbít", "the second word is not in the list (not ASCII)"),
        ("\u0667-guitar-orbit", "a digit that is not ASCII (ARABIC-INDIC DIGIT SEVEN)"),
        ("\u00b2-guitar-orbit", "a digit that is not ASCII (SUPERSCRIPT TWO)"),
    ]
    refused = []
    for text, reason in unreadable:
        try:
            codes.JoinCode.parse(text)
        except codes.CodeError:
            refused.append({"text": text, "reason": reason})
            continue
        raise SystemExit(f"code text {text!r} ({reason}) parses")

    handshake_hash = seed("join code handshake hash", 64)
    right = _code_run("right", "7-guitar-orbit", "7-guitar-orbit", handshake_hash)
    wrong = _code_run("wrong", "7-guitar-otter", "7-guitar-orbit", handshake_hash)

    # PAKE messages a side refuses (the member of the right run receiving them).
    valid = bytes.fromhex(right["joiner"]["message"])
    order_2 = (ed.Q - 1).to_bytes(32, "little")  # (0, -1)
    order_8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
    mixed = ed.bytes_to_unknown_group_element(valid[1:])
    mixed = mixed.add(ed.bytes_to_unknown_group_element(order_2))
    invalid = [
        ("32 bytes", valid[:32]),
        ("34 bytes", valid + b"\x00"),
        ("side byte A", b"A" + valid[1:]),
        ("side byte B", b"B" + valid[1:]),
        ("side byte s", b"s" + valid[1:]),
        ("not a point of the curve", b"S" + (2).to_bytes(32, "little")),
        ("the identity", b"S" + (1).to_bytes(32, "little")),
        ("a point of order 2", b"S" + order_2),
        ("a point of order 4", b"S" + bytes(32)),
        ("a point of order 8", b"S" + order_8),
        ("a point outside the prime-order subgroup", b"S" + mixed.to_bytes()),
        ("the receiver's own message, reflected", bytes.fromhex(right["member"]["message"])),
    ]
    refused_messages = []
    for reason, message in invalid:
        member = codes.CodePake(
            codes.JoinCode.parse("7-guitar-orbit"),
            entropy=_fixed_entropy(bytes.fromhex(right["member"]["entropy"])),
        )
        try:
            member.finish(message, handshake_hash)
        except codes.CodeError:
            refused_messages.append({"message": message.hex(), "reason": reason})
            continue
        raise SystemExit(f"PAKE message {reason!r} is taken")

    words_file = "".join(f"{word}\n" for word in codes.WORDS).encode()
    return {
        "description": (
            "short join codes (SPEC.md §15.10): texts a reader takes (with the canonical code, "
            "its nameplate and its words' indexes in protocol/code-words.txt) and texts it "
            "refuses; SPAKE2 runs with fixed entropy (64 bytes per side; scalars and points "
            "32 bytes little-endian, messages 'S' || point), their keys and proofs over "
            "handshake_hash; and PAKE messages the receiver (the member of run 'right', with "
            "its entropy) refuses"
        ),
        "words_file": "code-words.txt",
        "words_count": len(codes.WORDS),
        "words_file_blake2b": blake2b(words_file).hex(),
        "max_nameplate": codes.MAX_NAMEPLATE,
        "max_failures": codes.MAX_FAILURES,
        "pake_id": codes.PAKE_ID.decode(),
        "spake2_s": ParamsEd25519.S.to_bytes().hex(),
        "proof_context": "commonsync code proof ",
        "parse": parsed,
        "refuse": refused,
        "runs": [right, wrong],
        "refused_messages": refused_messages,
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    schema = OUT.parent / "messages.json"
    schema.write_text(json.dumps(messages.schema_as_json(), indent=1) + "\n")
    print(f"wrote {schema}")
    words = OUT.parent / "code-words.txt"
    words.write_text("".join(f"{word}\n" for word in codes.WORDS))
    print(f"wrote {words}")
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
        "membership.json": membership(),
        "join-links.json": join_links(),
        "join-codes.json": join_codes(),
    }
    for name, content in files.items():
        (OUT / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
