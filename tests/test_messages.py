"""Wire messages: the schema in protocol/ matches the code, vectors round-trip, and every
malformed message is a ProtocolError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commonsync.errors import ProtocolError
from commonsync.formats import encoding, messages

from .fuzzing import fuzz
from .vectors import PROTOCOL, load


def test_schema_file_matches_the_code() -> None:
    assert json.loads((PROTOCOL / "messages.json").read_text()) == messages.schema_as_json()


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def test_message_vectors() -> None:
    by_name = {cls.__name__: cls for cls in messages.SCHEMA.values()}
    cases = load("messages.json")["cases"]
    assert {c["name"] for c in cases} == set(by_name), "every message type has a vector"
    for case in cases:
        cls = by_name[case["name"]]
        message = cls(**{k: _from_json(v) for k, v in case["fields"].items()})
        assert messages.encode(message).hex() == case["encoded"]
        assert messages.decode(bytes.fromhex(case["encoded"])) == message


GOOD = encoding.unpack(
    messages.encode(messages.ChunkRequest(1, b"f" * 32, b"c" * 32, 100)), max_size=1000
)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([99, 1], "unknown message type 99"),
        ([], "starting with its type"),
        ("hello", "starting with its type"),
        (GOOD[:-1], "has 4 fields"),
        ([*GOOD, 1], "has 4 fields"),
        ([5, -1, b"f" * 32, b"c" * 32, 100], "request_id"),
        ([5, 1, b"f" * 31, b"c" * 32, 100], "folder_id"),
        ([5, 1, b"f" * 32, "c" * 32, 100], "chunk_id"),
        ([5, 1, b"f" * 32, b"c" * 32, 4 * 1024 * 1024 + 1], "size"),
        ([5, True, b"f" * 32, b"c" * 32, 100], "request_id"),
        ([1, 1, [1], "x", "y"], "feature"),
        ([1, 1, ["f"] * 33, "x", "y"], "features"),
        ([2, [[b"p" * 32, b"i" * 16]]], "does not have 3 fields"),
        ([9, 0, "x" * 257], "detail"),
    ],
)
def test_malformed_messages_are_protocol_errors(obj: Any, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        messages.decode(encoding.pack(obj))


def test_malformed_msgpack_and_oversized_input_are_protocol_errors() -> None:
    for data in (b"", b"\xc1", b"\x95\x05", encoding.pack([7, 1]) + b"\x00"):
        with pytest.raises(ProtocolError):
            messages.decode(data)
    with pytest.raises(ProtocolError, match="over the limit"):
        messages.decode(bytes(messages.MAX_MESSAGE + 1))


def test_encoding_refuses_invalid_values_too() -> None:
    with pytest.raises(ProtocolError):
        messages.encode(messages.Ping(2**40))


@pytest.mark.fuzz
@fuzz(500)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    try:
        decoded = messages.decode(data)
    except ProtocolError:
        return
    assert messages.encode(decoded) == data


@pytest.mark.fuzz
@fuzz(300)
@given(st.data())
def test_mutated_messages_only_raise_protocol_errors(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(load("messages.json")["cases"]))
    raw = bytearray(bytes.fromhex(case["encoded"]))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = messages.decode(bytes(raw))
    except ProtocolError:
        return
    assert messages.encode(decoded) == bytes(raw)
