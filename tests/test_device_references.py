"""One resolver for every command that names a device (issue 16): a name (given here, or the
device's own), its short ID, its full ID or a unique prefix; ambiguous and unknown references
refused with a sentence, and a name chosen by a device never winning over an ID."""

from __future__ import annotations

import pytest

from commonsync.errors import InvalidRequestError, NotFoundError, RequestConflictError
from commonsync.formats.device_id import DeviceId
from commonsync.formats.identity import DeviceIdentity
from commonsync.node.devices import matches, resolve


def _devices(count: int) -> list[DeviceId]:
    return [DeviceIdentity.generate().device_id for _ in range(count)]


def test_a_device_by_name_short_id_full_id_or_prefix() -> None:
    laptop, phone = _devices(2)
    candidates = [(laptop, ("laptop",)), (phone, ())]
    reported = {laptop: "ada-thinkpad", phone: "ada's phone"}
    assert resolve("laptop", candidates, reported=reported) == laptop
    assert resolve("ada's phone", candidates, reported=reported) == phone  # its own name
    assert resolve("ada-thinkpad", candidates, reported=reported) == laptop
    assert resolve(phone.short_str, candidates) == phone
    assert resolve(phone.short_str.lower(), candidates) == phone
    assert resolve(str(phone), candidates) == phone
    assert resolve(str(phone).replace("-", "").lower(), candidates) == phone
    prefix = next(
        str(laptop)[:n] for n in range(4, 56) if not str(phone).startswith(str(laptop)[:n])
    )
    assert resolve(prefix, candidates) == laptop


def test_unknown_ambiguous_and_mistyped_references_are_refused() -> None:
    laptop, phone, stranger = _devices(3)
    candidates = [(laptop, ("laptop",)), (phone, ("laptop",))]
    with pytest.raises(RequestConflictError, match="names 2 devices"):
        resolve("laptop", candidates)
    with pytest.raises(RequestConflictError, match="names 2 devices"):
        resolve("pixel", [(laptop, ()), (phone, ())], reported={laptop: "pixel", phone: "pixel"})
    with pytest.raises(NotFoundError, match="no device 'tablet'"):
        resolve("tablet", candidates)
    with pytest.raises(NotFoundError, match=stranger.short_str):
        resolve(str(stranger), candidates)
    with pytest.raises(InvalidRequestError):
        resolve("", candidates)
    typo = str(laptop)
    typo = typo[:-1] + ("A" if typo[-1] != "A" else "B")
    with pytest.raises(InvalidRequestError, match="not a valid device ID"):
        resolve(typo, candidates)
    assert not matches("ABC", laptop)  # too short a prefix to mean a device


def test_a_name_a_device_gave_itself_cannot_take_another_devices_reference() -> None:
    mine, theirs = _devices(2)
    candidates = [(mine, ("laptop",)), (theirs, ())]
    # A peer calls itself after my device's name, or after its short ID: what I gave and
    # the IDs come first, so my references still name my device.
    for name in ("laptop", mine.short_str):
        assert resolve(name, candidates, reported={theirs: name}) == mine
    # Two names given here, or a name given here and another device's ID prefix, are on
    # the same footing: refused, not guessed.
    with pytest.raises(RequestConflictError, match="names 2 devices") as refused:
        resolve(mine.short_str, [(mine, ()), (theirs, (mine.short_str,))])
    assert refused.value.hint == "give more of its device ID"
    assert resolve(str(mine), candidates) == mine  # the full ID is exact
