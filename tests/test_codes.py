"""Short join codes as pure data: their text, the PAKE, and the inviter's count of attempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from commonsync.membership.codes import (
    MAX_FAILURES,
    WORDS,
    CodeError,
    CodePake,
    JoinCode,
    looks_like_code,
)
from commonsync.node.open_codes import OpenCode, OpenCodes


def test_a_code_reads_as_a_person_types_it() -> None:
    code = JoinCode(7, ("guitar", "orbit"))
    assert str(code) == "7-guitar-orbit"
    for typed in ("7-guitar-orbit", " 7 Guitar ORBIT ", "7--guitar - orbit"):
        assert JoinCode.parse(typed) == code
    assert looks_like_code("7-guitar-orbit")
    assert not looks_like_code("commonsync://join/abc#def")


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("7-gitar-orbit", "did you mean 'guitar'"),
        ("7-guitar", "a number and two words"),
        ("guitar-orbit-7", "a number and two words"),
        ("0-guitar-orbit", "from 1 to 9999"),
        ("10000-guitar-orbit", "from 1 to 9999"),
        ("7-guitar-zzzzzz", "second word"),
    ],
)
def test_a_mistyped_code_gets_one_clear_sentence(typed: str, says: str) -> None:
    with pytest.raises(CodeError, match=says):
        JoinCode.parse(typed)


def test_new_codes_draw_both_words() -> None:
    drawn = {JoinCode.generate(3).words for _ in range(200)}
    assert len(drawn) > 150  # 65,536 pairs: 200 draws nearly never repeat
    assert all(a in WORDS and b in WORDS for a, b in drawn)
    with pytest.raises(CodeError):
        JoinCode.generate(0)


def test_the_same_code_gives_both_sides_one_key_bound_to_their_channel() -> None:
    code = JoinCode(7, ("guitar", "orbit"))
    joiner, member = CodePake(code), CodePake(code)
    ours = joiner.finish(member.message, b"handshake")
    theirs = member.finish(joiner.message, b"handshake")
    assert theirs.check("joiner", ours.proof("joiner"))
    assert ours.check("member", theirs.proof("member"))
    assert not theirs.check("member", ours.proof("joiner"))  # a proof is for one role
    # A relay in the middle running two channels has two handshake hashes: nothing carries.
    elsewhere = CodePake(code).finish(CodePake(code).message, b"another channel")
    assert not theirs.check("joiner", elsewhere.proof("joiner"))


def test_a_wrong_guess_derives_another_key() -> None:
    member = CodePake(JoinCode(7, ("guitar", "orbit")))
    guesser = CodePake(JoinCode(7, ("guitar", "otter")))
    theirs = member.finish(guesser.message, b"h")
    ours = guesser.finish(member.message, b"h")
    assert not theirs.check("joiner", ours.proof("joiner"))


@pytest.mark.parametrize(
    "message", [b"", b"\x00" * 33, b"\x01" * 40, b"S" + b"\xff" * 32, b"S" + b"\x00" * 32]
)
def test_a_malformed_pake_message_is_refused(message: bytes) -> None:
    with pytest.raises(CodeError):
        CodePake(JoinCode(7, ("guitar", "orbit"))).finish(message, b"h")


def test_our_own_message_reflected_is_refused() -> None:
    pake = CodePake(JoinCode(7, ("guitar", "orbit")))
    with pytest.raises(CodeError):
        pake.finish(pake.message, b"h")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened(nameplate: int, expires: float = 2000.0, invitation: bytes = b"i" * 32) -> OpenCode:
    return OpenCode(JoinCode(nameplate, ("guitar", "orbit")), "link", "scores", invitation, expires)


def test_attempts_are_reserved_so_parallel_guesses_get_no_more_than_the_limit() -> None:
    codes = OpenCodes(Clock())
    codes.open(opened(1))
    attempts = [codes.begin(1) for _ in range(MAX_FAILURES + 2)]
    assert sum(a is not None for a in attempts) == MAX_FAILURES
    for attempt in attempts:
        if attempt is not None:
            codes.end(attempt, "wrong")
    assert not codes.holds(1)  # void after the last wrong one
    assert [c.nameplate for c in codes.closed] == [1]


def test_an_abandoned_attempt_gives_its_reservation_back() -> None:
    codes = OpenCodes(Clock())
    codes.open(opened(1))
    attempt = codes.begin(1)
    assert attempt is not None
    assert codes.end(attempt, "abandoned") == MAX_FAILURES
    attempt = codes.begin(1)
    assert attempt is not None
    assert codes.end(attempt, "wrong") == MAX_FAILURES - 1
    attempt = codes.begin(1)
    assert attempt is not None
    codes.end(attempt, "right")
    assert not codes.holds(1)  # a code is redeemed once


def test_codes_expire_and_free_their_nameplate() -> None:
    clock = Clock()
    codes = OpenCodes(clock)
    codes.open(opened(codes.free_nameplate(), expires=1500))
    codes.open(opened(codes.free_nameplate(), expires=3000))
    assert [c["nameplate"] for c in codes.listing()] == [1, 2]
    clock.now = 1600
    assert codes.begin(1) is None
    assert codes.free_nameplate() == 1
    assert [c.nameplate for c in codes.closed] == [1]


def test_revoking_the_invitation_closes_its_codes() -> None:
    codes = OpenCodes(Clock())
    codes.open(opened(1, invitation=b"a" * 32))
    codes.open(opened(2, invitation=b"b" * 32))
    codes.close_invitation(b"a" * 32)
    assert [c["nameplate"] for c in codes.listing()] == [2]


def test_the_word_list_in_protocol_is_the_code_s() -> None:
    listed = (Path(__file__).resolve().parent.parent / "protocol" / "code-words.txt").read_text()
    assert tuple(listed.split("\n")[:-1]) == WORDS
