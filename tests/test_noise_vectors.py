"""The Noise handshake reproduces every published vector of its suite, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest

from commonsync.errors import HandshakeError
from commonsync.wire.noise import CipherState, HandshakeState

from .vectors import PROTOCOL

VECTORS: list[dict[str, Any]] = json.loads(
    (PROTOCOL / "vectors" / "noise-25519-chachapoly-blake2b.json").read_text()
)["vectors"]


def _opt(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return bytes.fromhex(value) if value is not None else None


def _side(vector: dict[str, Any], prefix: str) -> HandshakeState:
    return HandshakeState(
        vector["protocol_name"],
        initiator=prefix == "init",
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        static=_opt(vector, f"{prefix}_static"),
        remote_static=_opt(vector, f"{prefix}_remote_static"),
        psks=[bytes.fromhex(p) for p in vector.get(f"{prefix}_psks", [])],
        ephemeral=_opt(vector, f"{prefix}_ephemeral"),
    )


def test_every_pattern_of_the_suite_is_covered() -> None:
    names = {v["protocol_name"] for v in VECTORS}
    for required in ("NN", "XX", "IK", "KK", "N", "K", "X"):
        assert f"Noise_{required}_25519_ChaChaPoly_BLAKE2b" in names
    assert len(VECTORS) == 59


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"][6:-25] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    initiator, responder = _side(vector, "init"), _side(vector, "resp")
    sender, receiver = initiator, responder
    messages = vector["messages"]
    transport: tuple[CipherState, CipherState, CipherState, CipherState] | None = None
    for i, message in enumerate(messages):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        if transport is None:
            assert sender.write_message(payload) == expected, f"message {i}"
            assert receiver.read_message(expected) == payload, f"message {i}"
            if initiator.finished:
                assert responder.finished
                assert initiator.handshake_hash.hex() == vector["handshake_hash"]
                assert responder.handshake_hash == initiator.handshake_hash
                i_send, i_recv = initiator.split()
                r_recv, r_send = responder.split()
                transport = (i_send, r_recv, r_send, i_recv)
        else:
            # After a one-way handshake only the initiator speaks; otherwise turns alternate.
            from_initiator = initiator.pattern.one_way or sender is initiator
            out, into = (transport[0], transport[1]) if from_initiator else transport[2:]
            assert out.encrypt_with_ad(b"", payload) == expected, f"message {i}"
            assert into.decrypt_with_ad(b"", expected) == payload, f"message {i}"
        sender, receiver = receiver, sender
    assert transport is not None


def test_a_flipped_bit_in_a_handshake_message_is_refused() -> None:
    vector = next(v for v in VECTORS if v["protocol_name"].startswith("Noise_XX_"))
    initiator, responder = _side(vector, "init"), _side(vector, "resp")
    responder.read_message(initiator.write_message(b""))
    message = bytearray(responder.write_message(b"payload"))
    message[40] ^= 1  # inside the encrypted static key
    with pytest.raises(HandshakeError, match="authentication"):
        initiator.read_message(bytes(message))


def test_out_of_turn_and_truncated_messages_are_refused() -> None:
    vector = next(v for v in VECTORS if v["protocol_name"].startswith("Noise_XX_"))
    responder = _side(vector, "resp")
    with pytest.raises(HandshakeError, match="out of turn"):
        responder.write_message(b"")
    with pytest.raises(HandshakeError, match="too short"):
        responder.read_message(b"\x00" * 31)


def test_a_low_order_public_key_is_refused() -> None:
    vector = next(v for v in VECTORS if v["protocol_name"].startswith("Noise_NN_"))
    responder = _side(vector, "resp")
    responder.read_message(bytes(32))  # the all-zero point as the initiator's ephemeral
    with pytest.raises(HandshakeError, match="invalid public key"):
        responder.write_message(b"")
