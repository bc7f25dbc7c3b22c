"""The sans-IO channel handshake, in memory: proofs, verdicts, versions, and fuzzing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commonsync import DeviceIdentity
from commonsync.errors import (
    CommonsyncError,
    HandshakeError,
    RefusedByPeerError,
    UnsupportedVersionError,
)
from commonsync.formats.device_id import DeviceId
from commonsync.wire.handshake import ChannelHandshake, PeerRefusedError, State
from commonsync.wire.transport import TransportCore

from .fuzzing import fuzz

ALICE = DeviceIdentity.from_seed(b"a" * 32)
BOB = DeviceIdentity.from_seed(b"b" * 32)


def allow(identity: DeviceIdentity) -> object:
    return lambda device: device == identity.device_id


def pair(**responder_options: object) -> tuple[ChannelHandshake, ChannelHandshake]:
    initiator = ChannelHandshake(ALICE, initiator=True, accept=allow(BOB))
    options: dict[str, object] = {"accept": allow(ALICE), **responder_options}
    responder = ChannelHandshake(BOB, initiator=False, **options)  # type: ignore[arg-type]
    return initiator, responder


def run(
    initiator: ChannelHandshake,
    responder: ChannelHandshake,
    mutate: Callable[[int, bytes], bytes] | None = None,
) -> list[bytes]:
    """Shuttle bytes until both are done (``mutate`` may alter each message on the way);
    returns what went over the wire, in order."""
    wire: list[bytes] = []
    sides = [(initiator, responder), (responder, initiator)]
    for _ in range(4):
        for sender, receiver in sides:
            data = sender.data_to_send()
            if data and receiver.state is State.IN_PROGRESS:
                if mutate is not None:
                    data = mutate(len(wire), data)
                wire.append(data)
                receiver.receive_data(data)
    return wire


def test_both_sides_agree_and_their_transports_interoperate() -> None:
    initiator, responder = pair()
    wire = run(initiator, responder)
    assert len(wire) == 4  # hello, responder identity, initiator identity, verdict
    a, b = initiator.result(), responder.result()
    assert a.peer == BOB.device_id
    assert b.peer == ALICE.device_id
    assert a.handshake_hash == b.handshake_hash
    assert (a.version, b.version) == (1, 1)
    b.transport.receive_data(a.transport.seal(b"to bob"))
    assert b.transport.next_message() == b"to bob"
    a.transport.receive_data(b.transport.seal(b"to alice"))
    assert a.transport.next_message() == b"to alice"


def test_the_hello_is_the_only_clear_text() -> None:
    initiator, responder = pair()
    wire = run(initiator, responder)
    for message in wire[1:]:
        assert ALICE.public_key not in message
        assert BOB.public_key not in message
        assert b"commonsync" not in message


def test_a_peer_that_does_not_hold_the_key_it_claims_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bob's proof claims Bob's public key but is signed by Mallory's key."""
    mallory = DeviceIdentity.generate()
    initiator, responder = pair()
    monkeypatch.setattr(BOB, "sign", mallory.sign)
    with pytest.raises(HandshakeError, match="does not hold the key"):
        run(initiator, responder)
    assert initiator.state is State.FAILED


def test_a_proof_from_another_handshake_does_not_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaying Bob's signature from an earlier handshake fails: it covers that transcript."""
    first_initiator, first_responder = pair()
    signatures: list[bytes] = []
    real_sign = BOB.sign

    def recording_sign(message: bytes) -> bytes:
        signatures.append(real_sign(message))
        return signatures[-1]

    monkeypatch.setattr(BOB, "sign", recording_sign)
    run(first_initiator, first_responder)
    monkeypatch.setattr(BOB, "sign", lambda message: signatures[0])
    with pytest.raises(HandshakeError, match="does not hold the key"):
        run(*pair())


def test_refusal_by_the_initiator_reveals_nothing_and_both_sides_know() -> None:
    initiator = ChannelHandshake(ALICE, initiator=True, accept=lambda device: False)
    responder = ChannelHandshake(BOB, initiator=False, accept=allow(ALICE))
    with pytest.raises(PeerRefusedError) as refused:
        run(initiator, responder)
    assert refused.value.device_id == BOB.device_id
    refusal = initiator.data_to_send()
    with pytest.raises(RefusedByPeerError):
        responder.receive_data(refusal)
    assert responder.state is State.FAILED


def test_refusal_by_the_responder_is_a_verdict() -> None:
    initiator, responder = pair(accept=lambda device: False)
    with pytest.raises(PeerRefusedError):
        run(initiator, responder)
    verdict = responder.data_to_send()
    with pytest.raises(RefusedByPeerError, match=str(BOB.device_id)):
        initiator.receive_data(verdict)


def test_no_common_version_is_reported_on_both_sides() -> None:
    initiator, responder = pair(versions=(2,))
    with pytest.raises(UnsupportedVersionError):
        run(initiator, responder)
    with pytest.raises(UnsupportedVersionError):
        initiator.receive_data(responder.data_to_send())


def test_features_are_exchanged() -> None:
    initiator = ChannelHandshake(ALICE, initiator=True, accept=allow(BOB), features=["zstd"])
    responder = ChannelHandshake(BOB, initiator=False, accept=allow(ALICE), features=["relay"])
    run(initiator, responder)
    assert initiator.result().features == {"relay"}
    assert responder.result().features == {"zstd"}


def test_a_closed_connection_mid_handshake_is_an_error() -> None:
    initiator, responder = pair()
    responder.receive_data(initiator.data_to_send())
    with pytest.raises(HandshakeError, match="closed the connection"):
        initiator.receive_data(b"")


def test_a_device_id_accept_policy_sees_device_ids() -> None:
    seen: list[DeviceId] = []
    initiator = ChannelHandshake(ALICE, initiator=True, accept=lambda d: seen.append(d) or True)
    responder = ChannelHandshake(BOB, initiator=False, accept=lambda d: seen.append(d) or True)
    run(initiator, responder)
    assert seen == [BOB.device_id, ALICE.device_id]


# -- fuzzing -----------------------------------------------------------------------------------


FUZZ = fuzz(300)


def _feed(core: ChannelHandshake, chunks: list[bytes]) -> None:
    for chunk in chunks:
        if core.state is not State.IN_PROGRESS:
            return
        try:
            core.receive_data(chunk)
        except CommonsyncError:
            return


@pytest.mark.fuzz
@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_random_bytes_into_a_responder(chunks: list[bytes]) -> None:
    _feed(ChannelHandshake(BOB, initiator=False, accept=allow(ALICE)), chunks)


@pytest.mark.fuzz
@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_random_bytes_into_an_initiator(chunks: list[bytes]) -> None:
    _feed(ChannelHandshake(ALICE, initiator=True, accept=allow(BOB)), chunks)


@pytest.mark.fuzz
@FUZZ
@given(st.integers(0, 3), st.data())
def test_mutated_handshake_messages(index: int, data: st.DataObject) -> None:
    """Flip, cut or extend one message of an otherwise honest exchange: the receiver raises
    one of the library's errors or waits for more bytes (a cut, or a length made larger), and
    never completes the handshake on a changed message."""
    original: list[bytes] = []

    def mutate(position: int, message: bytes) -> bytes:
        if position != index:
            return message
        original.append(message)
        changed = bytearray(message)
        action = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if action == "flip":
            at = data.draw(st.integers(0, len(changed) - 1))
            changed[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del changed[data.draw(st.integers(0, len(changed) - 1)) :]
        else:
            changed += data.draw(st.binary(min_size=1, max_size=40))
        return bytes(changed)

    initiator, responder = pair()
    try:
        wire = run(initiator, responder, mutate)
    except CommonsyncError:
        return
    if initiator.state is State.ESTABLISHED and responder.state is State.ESTABLISHED:
        # Only bytes appended after a whole message can go unnoticed here: they wait in the
        # transport's buffer, where they fail authentication as the next frame.
        assert wire[index].startswith(original[0])
        assert len(wire[index]) > len(original[0])


@pytest.mark.fuzz
@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_random_bytes_into_a_transport(chunks: list[bytes]) -> None:
    core = TransportCore(b"k" * 32, b"k" * 32, max_message_size=1024)
    for chunk in chunks:
        core.receive_data(chunk)
        try:
            while core.next_message() is not None:
                pass
        except CommonsyncError:
            return
