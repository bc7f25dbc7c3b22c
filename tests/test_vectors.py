"""The library reproduces every vector in protocol/vectors/ byte for byte.

Each test recomputes outputs from the inputs stored in the vector file; nothing here writes
the vectors (protocol/generate_vectors.py does, on purpose, once).
"""

from __future__ import annotations

import io

import pytest

from commonsync.errors import CommonsyncError, InvalidPathError
from commonsync.formats import encoding, padding, paths
from commonsync.formats.chunking import iter_chunks
from commonsync.formats.chunks import CHUNK_PAD_FLOOR, chunk_id, open_chunk, seal_chunk
from commonsync.formats.device_id import DeviceId
from commonsync.formats.identity import DeviceIdentity, verify_signature
from commonsync.formats.keys import FolderKey, FolderKeyring, Purpose
from commonsync.formats.records import (
    RECORD_PAD_FLOOR,
    ChunkEntry,
    Kind,
    Record,
    open_and_verify,
    seal_record,
    sign_record,
    verify_record,
)
from commonsync.formats.versionvector import VersionVector
from commonsync.wire.handshake import (
    MAGIC,
    NOISE_PROTOCOL,
    PROLOGUE,
    ChannelHandshake,
    noise_static_key,
    signed_transcript,
)
from commonsync.wire.noise import HandshakeState
from commonsync.wire.session import folder_proof

from .vectors import load, seed


def test_identity_vectors() -> None:
    for case in load("identity.json")["cases"]:
        ident = DeviceIdentity.from_seed(bytes.fromhex(case["seed"]))
        assert ident.public_key.hex() == case["public_key"]
        assert ident.device_id.digest.hex() == case["device_id_digest"]
        assert str(ident.device_id) == case["device_id"]
        assert DeviceId.parse(case["device_id"]) == ident.device_id
        assert ident.device_id.short == case["short_id"]
        message = bytes.fromhex(case["message"])
        assert ident.sign(message).hex() == case["signature"]
        verify_signature(ident.public_key, message, bytes.fromhex(case["signature"]))


def test_folder_key_vectors() -> None:
    for case in load("folder-keys.json")["cases"]:
        key = FolderKey(
            bytes.fromhex(case["folder_id"]), case["epoch"], bytes.fromhex(case["secret"])
        )
        assert key.to_bytes().hex() == case["encoded"]
        assert FolderKey.from_bytes(bytes.fromhex(case["encoded"])) == key
        assert {p.name.lower(): p.value.decode() for p in Purpose} == case["contexts"]
        for purpose in Purpose:
            assert key.subkey(purpose).hex() == case["subkeys"][purpose.name.lower()]


def test_chunking_vectors() -> None:
    vectors = load("chunking.json")
    data = seed(vectors["data_label"], vectors["data_size"])
    key = bytes.fromhex(vectors["chunk_id_key"])
    got = [
        {"offset": off, "size": len(d), "id": chunk_id(key, d).hex()}
        for off, d in iter_chunks(io.BytesIO(data))
    ]
    assert got == vectors["chunks"]
    for case in vectors["small_inputs"]:
        assert chunk_id(key, bytes.fromhex(case["data"])).hex() == case["id"]


def test_padding_vectors() -> None:
    for case in load("padding.json")["cases"]:
        assert padding.padme(case["length"]) == case["padme"]
        assert padding.padded_size(case["length"], CHUNK_PAD_FLOOR) == case["padded_chunk"]
        assert padding.padded_size(case["length"], RECORD_PAD_FLOOR) == case["padded_record"]


def test_sealed_chunk_vectors() -> None:
    vectors = load("sealed-chunks.json")
    key = FolderKey.from_bytes(bytes.fromhex(vectors["folder_key"]))
    for case in vectors["cases"]:
        plaintext = bytes.fromhex(case["plaintext"])
        cid, sealed = seal_chunk(key, plaintext)
        assert cid.hex() == case["id"]
        assert sealed.hex() == case["sealed"]
        assert open_chunk(FolderKeyring([key]), cid, sealed) == plaintext


def test_version_vector_vectors() -> None:
    vectors = load("version-vectors.json")
    for case in vectors["compare"]:
        a, b = VersionVector.from_wire(case["a"]), VersionVector.from_wire(case["b"])
        assert a.compare(b).value == case["order"]
        assert a.merge(b).to_wire() == case["merge"]
        assert encoding.pack(a.to_wire()).hex() == case["encoded_a"]
    for case in vectors["bump"]:
        vector = VersionVector.from_wire(case["vector"])
        assert vector.bump(case["device"], case["now"]).to_wire() == case["result"]


def _record_from_fields(fields: dict[str, object]) -> Record:
    f = fields
    return Record(
        f["path"],
        Kind(f["kind"]),
        f["size"],
        f["mtime_ns"],
        f["mode"],
        f["deleted"],  # type: ignore[arg-type]
        VersionVector.from_wire(f["version"]),
        tuple(ChunkEntry(bytes.fromhex(i), s) for i, s in f["chunks"]),  # type: ignore[attr-defined]
        f["symlink_target"],
        bytes.fromhex(f["author"]),
        f["sequence"],  # type: ignore[arg-type]
        bytes.fromhex(f["previous"]),  # type: ignore[arg-type]
    )


def test_record_vectors() -> None:
    vectors = load("records.json")
    author = DeviceIdentity.from_seed(bytes.fromhex(vectors["author_seed"]))
    key = FolderKey.from_bytes(bytes.fromhex(vectors["folder_key"]))
    keyring = FolderKeyring([key])
    for case in vectors["cases"]:
        record = _record_from_fields(case["fields"])
        assert record.encode().hex() == case["encoded"]
        assert Record.decode(bytes.fromhex(case["encoded"])) == record
        assert record.content_digest().hex() == case["content_digest"]
        signed = sign_record(author, key.folder_id, record)
        assert signed.hex() == case["signed"]
        assert verify_record(key.folder_id, signed) == record
        sealed = seal_record(key, signed, nonce=bytes.fromhex(case["nonce"]))
        assert sealed.hex() == case["sealed"]
        assert open_and_verify(keyring, sealed) == record


@pytest.mark.parametrize(
    "case", load("records.json")["invalid_encodings"], ids=lambda c: c["reason"]
)
def test_invalid_record_vectors_are_refused(case: dict[str, str]) -> None:
    with pytest.raises(CommonsyncError):
        Record.decode(bytes.fromhex(case["encoded"]))


def test_path_vectors() -> None:
    vectors = load("paths.json")
    for path in vectors["valid"]:
        assert paths.validate(path) == path
    for path in vectors["invalid"]:
        with pytest.raises(InvalidPathError):
            paths.validate(path)


def test_channel_handshake_vector() -> None:
    case = load("channel-handshake.json")
    alice = DeviceIdentity.from_seed(bytes.fromhex(case["initiator_seed"]))
    bob = DeviceIdentity.from_seed(bytes.fromhex(case["responder_seed"]))
    assert noise_static_key(alice).hex() == case["initiator_noise_static"]
    assert noise_static_key(bob).hex() == case["responder_noise_static"]
    initiator = ChannelHandshake(
        alice,
        initiator=True,
        accept=lambda d: d == bob.device_id,
        features=case["initiator_features"],
        versions=case["initiator_versions"],
        ephemeral=bytes.fromhex(case["initiator_ephemeral"]),
    )
    responder = ChannelHandshake(
        bob,
        initiator=False,
        accept=lambda d: d == alice.device_id,
        features=case["responder_features"],
        versions=case["responder_versions"],
        ephemeral=bytes.fromhex(case["responder_ephemeral"]),
    )
    turns = [(initiator, responder), (responder, initiator), (initiator, responder)]
    for (sender, receiver), expected in zip(turns, case["wire"], strict=True):
        data = sender.data_to_send()
        assert data.hex() == expected
        receiver.receive_data(data)
    result = responder.result()
    assert result.handshake_hash.hex() == case["handshake_hash"]
    assert result.peer == alice.device_id
    to_responder, to_initiator = responder._noise.split()
    assert to_responder.key is not None
    assert to_initiator.key is not None
    assert to_responder.key.hex() == case["initiator_to_responder_key"]
    assert to_initiator.key.hex() == case["responder_to_initiator_key"]
    assert result.version == case["chosen_version"]
    # And the initiator, fed the responder's verdict, agrees.
    initiator.receive_data(responder.data_to_send())
    assert initiator.result().handshake_hash == result.handshake_hash
    assert initiator.result().features == frozenset(case["responder_features"])
    assert result.features == frozenset(case["initiator_features"])
    assert encoding.pack([0]).hex() == case["verdict"]
    folder = FolderKey.from_bytes(bytes.fromhex(case["folder_key"]))
    for sender_is_initiator, name in ((True, "initiator"), (False, "responder")):
        proof = folder_proof(folder, result.handshake_hash, sender_is_initiator=sender_is_initiator)
        assert proof.hex() == case[f"proof_from_{name}"]


def test_channel_handshake_vector_payloads() -> None:
    """The plaintext payloads the vector states are the ones in its wire messages, as SPEC.md
    §10 lays them out, and each signature covers the handshake hash the vector gives."""
    case = load("channel-handshake.json")
    alice = DeviceIdentity.from_seed(bytes.fromhex(case["initiator_seed"]))
    bob = DeviceIdentity.from_seed(bytes.fromhex(case["responder_seed"]))
    frames = [bytes.fromhex(w)[2:] for w in case["wire"]]
    payloads = [bytes.fromhex(p) for p in case["payloads"]]
    hashes = [bytes.fromhex(h) for h in case["payload_hashes"]]
    # Bare Noise, independent of the commonsync handshake's state machine.
    i = HandshakeState(
        NOISE_PROTOCOL,
        initiator=True,
        prologue=PROLOGUE,
        ephemeral=bytes.fromhex(case["initiator_ephemeral"]),
    )
    r = HandshakeState(
        NOISE_PROTOCOL,
        initiator=False,
        prologue=PROLOGUE,
        static=noise_static_key(bob),
        ephemeral=bytes.fromhex(case["responder_ephemeral"]),
    )
    assert i.write_message(payloads[0]) == frames[0]
    assert r.read_message(frames[0]) == payloads[0]
    assert r.write_message(payloads[1]) == frames[1]
    assert r.hash_before_payload == hashes[1]
    assert i.read_message(frames[1]) == payloads[1]
    i.set_static(noise_static_key(alice))
    assert i.write_message(payloads[2]) == frames[2]
    assert i.hash_before_payload == hashes[2]
    assert r.read_message(frames[2]) == payloads[2]
    assert i.handshake_hash.hex() == r.handshake_hash.hex() == case["handshake_hash"]

    assert encoding.unpack(payloads[0], max_size=2048, what="hello") == [
        MAGIC, case["initiator_versions"], case["initiator_features"],
    ]  # fmt: skip
    version, features, bob_key, bob_signature = encoding.unpack(
        payloads[1], max_size=2048, what="responder identity"
    )
    assert (version, features, bob_key) == (
        case["chosen_version"], case["responder_features"], bob.public_key,
    )  # fmt: skip
    verify_signature(bob_key, signed_transcript(b"R", hashes[1]), bob_signature)
    verdict, alice_key, alice_signature = encoding.unpack(
        payloads[2], max_size=2048, what="initiator identity"
    )
    assert (verdict, alice_key) == (0, alice.public_key)
    verify_signature(alice_key, signed_transcript(b"I", hashes[2]), alice_signature)
