"""The post-handshake transport: whole messages through, every corruption detected."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync.errors import (
    ChannelError,
    FrameTooLargeError,
    TamperedFrameError,
    TruncatedStreamError,
)
from commonsync.wire.transport import END_OF_STREAM, HEADER_SIZE, TransportCore

A_TO_B, B_TO_A = os.urandom(32), os.urandom(32)


def pair(limit: int = 1 << 20) -> tuple[TransportCore, TransportCore]:
    return (
        TransportCore(A_TO_B, B_TO_A, max_message_size=limit),
        TransportCore(B_TO_A, A_TO_B, max_message_size=limit),
    )


def drain(core: TransportCore) -> list[object]:
    out = []
    while (message := core.next_message()) is not None:
        out.append(message)
        if message is END_OF_STREAM:
            break
    return out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 5000))
def test_messages_arrive_whole_whatever_the_read_sizes(messages: list[bytes], step: int) -> None:
    a, b = pair()
    wire = b"".join(a.seal(m) for m in messages) + a.close()
    received: list[object] = []
    for i in range(0, len(wire), step):
        b.receive_data(wire[i : i + step])
        received += drain(b)
    assert received == [*messages, END_OF_STREAM]


def frames(n: int) -> tuple[TransportCore, bytes, list[bytes]]:
    a, b = pair()
    first = a.seal(b"one")
    header, first = first[:HEADER_SIZE], first[HEADER_SIZE:]
    return b, header, [first] + [a.seal(f"message {i}".encode()) for i in range(n - 1)]


def test_flipped_bits_are_detected_anywhere() -> None:
    for position in range(0, 4 + 3 + 17, 3):
        b, header, fs = frames(1)
        bad = bytearray(fs[0])
        bad[position] ^= 0x02
        b.receive_data(header + bytes(bad))
        b.receive_data(b"")  # a corrupted length may just look like a longer frame
        with pytest.raises(ChannelError):
            drain(b)


def test_reordered_and_replayed_frames_are_detected() -> None:
    b, header, fs = frames(3)
    b.receive_data(header + fs[0] + fs[2])
    with pytest.raises(TamperedFrameError):
        drain(b)
    b, header, fs = frames(3)
    b.receive_data(header + fs[0] + fs[0])
    with pytest.raises(TamperedFrameError):
        drain(b)


def test_a_frame_from_another_stream_is_detected() -> None:
    b, header, _ = frames(1)
    stranger = TransportCore(os.urandom(32), os.urandom(32)).seal(b"hi")
    b.receive_data(header + stranger[HEADER_SIZE:])
    with pytest.raises(TamperedFrameError):
        drain(b)


def test_truncation_is_detected_at_every_cut() -> None:
    a, _ = pair()
    wire = a.seal(b"x" * 100) + a.seal(b"y") + a.close()
    for cut in [0, 5, HEADER_SIZE, HEADER_SIZE + 3, HEADER_SIZE + 50, len(wire) - 1]:
        _, b = pair()
        b.receive_data(wire[:cut])
        b.receive_data(b"")
        with pytest.raises(TruncatedStreamError):
            drain(b)
    # Dropping only the final frame is truncation too, even at a frame boundary.
    _, b = pair()
    b.receive_data(wire[: len(wire) - 4 - 17])
    b.receive_data(b"")
    with pytest.raises(TruncatedStreamError):
        drain(b)


def test_oversized_frames_are_refused_before_buffering() -> None:
    a, b = pair(limit=1000)
    with pytest.raises(FrameTooLargeError):
        a.seal(b"x" * 1001)
    b.receive_data(os.urandom(HEADER_SIZE))  # any header: the length check comes first
    b.receive_data((10**9).to_bytes(4, "big"))
    with pytest.raises(FrameTooLargeError, match="limit is"):
        drain(b)


def test_nothing_may_be_sent_after_close() -> None:
    a, _ = pair()
    a.close()
    with pytest.raises(ChannelError):
        a.seal(b"late")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.data())
def test_a_mutated_stream_never_yields_a_forged_message(
    messages: list[bytes], data: st.DataObject
) -> None:
    """Flip, cut, duplicate or insert bytes anywhere in an honest stream: the receiver yields
    an honest prefix of the messages, then a ChannelError; never a forged message, and never
    a clean end."""
    a, b = pair()
    stream = bytearray(b"".join(a.seal(m) for m in messages) + a.close())
    honest = bytes(stream)
    at = data.draw(st.integers(0, len(stream) - 1))
    action = data.draw(st.sampled_from(["flip", "cut", "duplicate", "insert"]))
    if action == "flip":
        stream[at] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "cut":
        del stream[at:]
    elif action == "duplicate":
        end = data.draw(st.integers(at + 1, len(stream)))
        stream[end:end] = stream[at:end]
    else:
        stream[at:at] = data.draw(st.binary(min_size=1, max_size=20))
    b.receive_data(bytes(stream))
    b.receive_data(b"")  # and the connection ends
    received: list[object] = []
    try:
        while (message := b.next_message()) is not None:
            received.append(message)
            if message is END_OF_STREAM:
                break
    except ChannelError:
        pass
    assert bytes(stream) != honest
    assert END_OF_STREAM not in received  # a changed stream never ends cleanly
    assert received == messages[: len(received)]
