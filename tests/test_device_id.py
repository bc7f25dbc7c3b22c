"""Device IDs: the printed form, parsing as people type, and typing mistakes told apart."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync.errors import DeviceIdError, MistypedDeviceIdError
from commonsync.formats.device_id import DeviceId
from commonsync.formats.identity import DeviceIdentity

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
SHAPE = re.compile(r"[A-Z2-7]{7}(-[A-Z2-7]{7}){7}")

digests = st.binary(min_size=32, max_size=32)
device_ids = digests.map(DeviceId)


def compact(device: DeviceId) -> str:
    """The 56 significant characters, without dashes."""
    return str(device).replace("-", "")


def where(position: int) -> tuple[str, str]:
    """What the mistyped message must say for a wrong character at 0-based ``position``."""
    block = position // 14
    return (
        f"groups {2 * block + 1} and {2 * block + 2}",
        f"characters {14 * block + 1}-{14 * block + 14}",
    )


@settings(max_examples=200, deadline=None)
@given(device_ids)
def test_printed_shape(device: DeviceId) -> None:
    text = str(device)
    assert len(text) == 63
    assert SHAPE.fullmatch(text), text
    assert [len(g) for g in text.split("-")] == [7] * 8
    assert device.short_str == text[:7]


@settings(max_examples=200, deadline=None)
@given(device_ids)
def test_parse_round_trip(device: DeviceId) -> None:
    assert DeviceId.parse(str(device)) == device
    assert DeviceId.parse(compact(device)) == device


def test_identity_device_id_round_trips() -> None:
    device = DeviceIdentity.generate().device_id
    assert DeviceId.parse(str(device)) == device
    assert DeviceId.from_public_key(DeviceIdentity.generate().public_key) != device


@settings(max_examples=100, deadline=None)
@given(device_ids, st.data())
def test_parse_ignores_case_dashes_and_spaces(device: DeviceId, data: st.DataObject) -> None:
    chars = compact(device)
    lower = data.draw(st.lists(st.booleans(), min_size=56, max_size=56), label="lower")
    separators = data.draw(
        st.lists(
            st.sampled_from(["", "", "-", " ", "  ", "\t", "--", " - "]), min_size=56, max_size=56
        ),
        label="separators",
    )
    pieces = [
        (c.lower() if low else c) + sep
        for c, low, sep in zip(chars, lower, separators, strict=True)
    ]
    text = data.draw(st.sampled_from(["", " ", "\n"])) + "".join(pieces)
    assert DeviceId.parse(text) == device
    assert DeviceId.parse(str(device).lower()) == device
    assert DeviceId.parse(str(device).replace("-", " ")) == device


@settings(max_examples=15, deadline=None)
@given(digests)
def test_every_single_substitution_is_reported_as_mistyped(digest: bytes) -> None:
    device = DeviceId(digest)
    chars = compact(device)
    assert len(chars) == 56
    for position, original in enumerate(chars):
        for replacement in ALPHABET:
            if replacement == original:
                continue
            typed = chars[:position] + replacement + chars[position + 1 :]
            with pytest.raises(MistypedDeviceIdError) as info:
                DeviceId.parse(typed)
            message = str(info.value)
            groups, characters = where(position)
            assert groups in message, (position, message)
            assert characters in message, (position, message)


@settings(max_examples=50, deadline=None)
@given(digests, st.data())
def test_substitution_in_printed_form_is_mistyped(digest: bytes, data: st.DataObject) -> None:
    text = str(DeviceId(digest))
    index = data.draw(st.sampled_from([i for i, c in enumerate(text) if c != "-"]), label="at")
    replacement = data.draw(st.sampled_from(ALPHABET.replace(text[index], "")), label="by")
    with pytest.raises(MistypedDeviceIdError):
        DeviceId.parse(text[:index] + replacement + text[index + 1 :])


@settings(max_examples=10, deadline=None)
@given(digests)
def test_swap_of_last_data_character_and_check_character_is_mistyped(digest: bytes) -> None:
    chars = compact(DeviceId(digest))
    for block in range(4):
        i = 14 * block + 12  # the block's last data character; i + 1 is its check character
        if chars[i] == chars[i + 1] or {chars[i], chars[i + 1]} == {"A", "7"}:
            continue  # equal, or values 0 and 31: the one pair Luhn mod 32 cannot tell apart
        swapped = chars[:i] + chars[i + 1] + chars[i] + chars[i + 2 :]
        with pytest.raises(MistypedDeviceIdError):
            DeviceId.parse(swapped)


def test_spare_bits_set_is_mistyped() -> None:
    # 52 characters carry 260 bits; build a last block whose Luhn check is right but whose
    # last data character has spare bits set.
    from commonsync.formats.device_id import _luhn32

    chars = compact(DeviceId(bytes(32)))
    last = chars[42:55]
    assert last[-1] == "A"
    bad = last[:-1] + "B"  # value 1: a spare bit
    typed = chars[:42] + bad + _luhn32(bad)
    with pytest.raises(MistypedDeviceIdError, match="last group"):
        DeviceId.parse(typed)


@settings(max_examples=100, deadline=None)
@given(device_ids, st.integers(-56, 30).filter(lambda n: n != 0))
def test_wrong_length_is_not_mistyped(device: DeviceId, change: int) -> None:
    chars = compact(device)
    text = chars[:change] if change < 0 else chars + chars[:change]
    with pytest.raises(DeviceIdError) as info:
        DeviceId.parse(text)
    assert not isinstance(info.value, MistypedDeviceIdError)
    assert "56" in str(info.value)


def outside_base32(c: str) -> bool:
    if c.isspace() or c == "-" or c in "018":
        return False
    upper = c.upper()
    return len(upper) == 1 and upper not in ALPHABET


@settings(max_examples=100, deadline=None)
@given(device_ids, st.data())
def test_character_outside_base32_is_not_mistyped(device: DeviceId, data: st.DataObject) -> None:
    chars = compact(device)
    position = data.draw(st.integers(0, 55), label="at")
    bad = data.draw(
        st.one_of(st.sampled_from("9!@_.=+/éÉ€"), st.characters().filter(outside_base32)),
        label="bad",
    )
    with pytest.raises(DeviceIdError) as info:
        DeviceId.parse(chars[:position] + bad + chars[position + 1 :])
    assert not isinstance(info.value, MistypedDeviceIdError)
    assert "cannot contain" in str(info.value)


def test_empty_and_garbage_are_not_mistyped() -> None:
    for text in ("", "-------", "not a device id", "9" * 56):
        with pytest.raises(DeviceIdError) as info:
            DeviceId.parse(text)
        assert not isinstance(info.value, MistypedDeviceIdError)


@settings(max_examples=100, deadline=None)
@given(device_ids, st.data())
def test_lookalike_digits_read_as_letters(device: DeviceId, data: st.DataObject) -> None:
    text = str(device)
    lookalike = {"O": "0", "I": "1", "B": "8"}
    typed = "".join(
        lookalike[c] if c in lookalike and data.draw(st.booleans()) else c for c in text
    )
    assert DeviceId.parse(typed) == device
    assert DeviceId.parse(typed.lower()) == device


def test_lookalike_digits_in_a_known_id() -> None:
    # An ID full of O, I and B, with every one of them typed as a digit.
    device = next(
        d
        for d in (DeviceId(bytes([n]) * 32) for n in range(256))
        if sum(compact(d).count(c) for c in "OIB") >= 6
    )
    text = str(device)
    typed = text.replace("O", "0").replace("I", "1").replace("B", "8")
    assert typed != text
    assert DeviceId.parse(typed) == device


def test_short_is_first_eight_bytes_big_endian() -> None:
    digest = bytes(range(1, 33))
    assert DeviceId(digest).short == 0x0102030405060708
    assert DeviceId(b"\xff" + bytes(31)).short == 0xFF00000000000000
    assert DeviceId(bytes(7) + b"\x01" + b"\xff" * 24).short == 1


@given(digests)
def test_short_matches_digest(digest: bytes) -> None:
    assert DeviceId(digest).short == int.from_bytes(digest[:8], "big")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_digest_must_be_32_bytes(size: int) -> None:
    with pytest.raises(DeviceIdError):
        DeviceId(bytes(size))
    with pytest.raises(DeviceIdError):
        DeviceId.from_public_key(bytes(size))
