"""The relay's codec (SPEC.md §14): the schema in protocol/ matches the code, the vectors
round-trip, and malformed, oversized or misdirected input is a RelayProtocolError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commonsync.errors import ProtocolError, RelayError, RelayProtocolError
from commonsync.formats import encoding, messages
from commonsync.formats.device_id import DeviceId
from commonsync.relay import wire as relaywire

from .fuzzing import fuzz
from .vectors import PROTOCOL, load


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def test_schema_file_matches_the_code() -> None:
    schema = json.loads((PROTOCOL / "relay-messages.json").read_text())
    assert schema == relaywire.schema_as_json()


def test_relay_vectors() -> None:
    vectors = load("relay.json")
    by_name = {cls.__name__: cls for cls in relaywire.SCHEMA.values()}
    assert {c["name"] for c in vectors["cases"]} == set(by_name), "every type has a vector"
    for case in vectors["cases"]:
        message = by_name[case["name"]](**{k: _from_json(v) for k, v in case["fields"].items()})
        assert relaywire.encode(message).hex() == case["encoded"]
        assert relaywire.decode(bytes.fromhex(case["encoded"])) == message
    invitation = next(c for c in vectors["cases"] if c["name"] == "Invitation")
    requester = relaywire.decode(bytes.fromhex(invitation["encoded"]))
    assert isinstance(requester, relaywire.Invitation)
    assert requester.requester_id == DeviceId.parse(vectors["requester_device_id"])
    session = vectors["session"]
    token = bytes.fromhex(session["token"])
    assert relaywire.preamble(token).hex() == session["preamble"]
    assert relaywire.parse_preamble(bytes.fromhex(session["preamble"])) == token
    assert relaywire.join_status(bytes.fromhex(session["joined"])) is relaywire.JoinStatus.JOINED


def test_relay_types_do_not_overlap_the_wire_messages() -> None:
    assert not set(relaywire.SCHEMA) & set(messages.SCHEMA)
    # A wire message on a control channel is an unknown type, never misread.
    with pytest.raises(RelayProtocolError, match="unknown relay message type 7"):
        relaywire.decode(messages.encode(messages.Ping(1)))


def test_a_session_preamble_is_told_from_a_handshake_by_its_first_byte() -> None:
    assert relaywire.is_session_start(relaywire.preamble(b"t" * 32)[0])
    # A control connection starts with u16be(len(first handshake message)); that message is
    # an ephemeral key and at most ~2 KiB of payload, so its high byte is at most 0x08.
    for length in (32 + 10, 32 + 2048 + 16):
        assert not relaywire.is_session_start(length.to_bytes(2, "big")[0])


GOOD = encoding.unpack(relaywire.encode(relaywire.Connect(5, b"t" * 32)), max_size=100)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([99, 1], "unknown relay message type 99"),
        ([1, 1], "unknown relay message type 1"),
        ([], "starting with its type"),
        ("connect", "starting with its type"),
        ([True, 1], "starting with its type"),
        (GOOD[:-1], "has 2 fields"),
        ([*GOOD, 1], "has 2 fields"),
        ([32, -1, b"t" * 32], "request_id"),
        ([32, 2**32, b"t" * 32], "request_id"),
        ([32, 1, b"t" * 31], "target"),
        ([32, 1, b"t" * 33], "target"),
        ([32, 1, "t" * 32], "target"),
        ([33, 1, b"k" * 16], "token"),
        ([34, 1, 256, "x"], "reason"),
        ([34, 1, 1, "x" * 257], "detail"),
        ([35, b"r" * 32, None], "token"),
        ([36, "1"], "nonce"),
    ],
)
def test_malformed_relay_messages(obj: Any, problem: str) -> None:
    with pytest.raises(RelayProtocolError, match=problem):
        relaywire.decode(encoding.pack(obj))


def test_malformed_msgpack_and_oversized_input() -> None:
    for data in (b"", b"\xc1", b"\x93\x20", encoding.pack([36, 1]) + b"\x00", b"\x81\x01\x02"):
        with pytest.raises(RelayProtocolError):
            relaywire.decode(data)
    oversized = encoding.pack([34, 1, 1, "x" * 2000])
    with pytest.raises(RelayProtocolError, match="over the limit of 1024"):
        relaywire.decode(oversized)
    # A relay protocol error is both a relay error and a protocol error.
    assert issubclass(RelayProtocolError, RelayError)
    assert issubclass(RelayProtocolError, ProtocolError)


def test_encoding_refuses_invalid_values() -> None:
    with pytest.raises(RelayProtocolError, match="target"):
        relaywire.encode(relaywire.Connect(1, b"short"))
    with pytest.raises(RelayProtocolError, match="token"):
        relaywire.preamble(b"short")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"commonsync relay\x01" + b"t" * 31, "49 bytes"),
        (b"commonsync relax\x01" + b"t" * 32, "not a commonsync relay session"),
        (b"commonsync relay\x02" + b"t" * 32, "version 2"),
    ],
)
def test_malformed_preambles(data: bytes, problem: str) -> None:
    with pytest.raises(RelayProtocolError, match=problem):
        relaywire.parse_preamble(data)


def test_join_status_bytes() -> None:
    assert relaywire.join_status(b"\x01") is relaywire.JoinStatus.UNKNOWN_TOKEN
    for data in (b"", b"\x00\x00", b"\x09"):
        with pytest.raises(RelayProtocolError):
            relaywire.join_status(data)


@pytest.mark.fuzz
@fuzz(500)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_relay_protocol_errors(data: bytes) -> None:
    try:
        decoded = relaywire.decode(data)
    except RelayProtocolError:
        return
    assert relaywire.encode(decoded) == data


@pytest.mark.fuzz
@fuzz(300)
@given(st.data())
def test_mutated_vectors_only_raise_relay_protocol_errors(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(load("relay.json")["cases"]))
    raw = bytearray(bytes.fromhex(case["encoded"]))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = relaywire.decode(bytes(raw))
    except RelayProtocolError:
        return
    assert relaywire.encode(decoded) == bytes(raw)
