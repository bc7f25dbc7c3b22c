"""Which device a person means: one resolver for every command that names a device.

Wherever the command line shows a device (its name, or its short ID: the first 7 characters
of its device ID), it takes the same back: a **name** (the one given here, else the one the
device gives itself in its Hello), the **full device ID**, or any **unique prefix** of the ID
of at least :data:`MIN_PREFIX` characters (any case, dashes ignored; the short ID is one).

The name a device gives itself is its own choice, so it never wins over what this device
knows for sure: a name given here and the device IDs are looked at first, and a name a device
gave itself counts only when nothing else matches. A device that calls itself "laptop", or
after another device's short ID, thus cannot take a reference meant for that one. A reference
that names two devices on the same footing (two names given here, or a name and another
device's ID prefix, or two devices calling themselves the same) is refused as ambiguous, with
the candidates listed, rather than guessed. A full ID is exact (it can be no prefix of
another). A reference that has a device ID's length but does not check out says so (a
mistyped ID is caught by its check characters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..errors import DeviceIdError, InvalidRequestError, NotFoundError, RequestConflictError
from ..formats.device_id import DeviceId

__all__ = ["MIN_PREFIX", "matches", "resolve"]

#: The shortest ID prefix taken for a device (the short IDs shown are 7 characters).
MIN_PREFIX = 4
#: A reference this long (dashes aside) is meant as a whole device ID.
_FULL_ID_CHARS = 56


def _clean(text: str) -> str:
    return "".join(text.split()).replace("-", "").upper()


def matches(reference: str, device: DeviceId, names: Iterable[str] = ()) -> bool:
    """Whether ``reference`` names ``device``: one of its ``names`` exactly, or a prefix of
    its ID of at least :data:`MIN_PREFIX` characters."""
    wanted = reference.strip()
    if wanted and any(name and name == wanted for name in names):
        return True
    cleaned = _clean(wanted)
    return len(cleaned) >= MIN_PREFIX and str(device).replace("-", "").startswith(cleaned)


def resolve(
    reference: str,
    candidates: Sequence[tuple[DeviceId, Sequence[str]]],
    *,
    reported: Mapping[DeviceId, str] | None = None,
    among: str = "known to this device",
    hint: str = "`commonsync device list` shows them",
) -> DeviceId:
    """The one device of ``candidates`` (each a device and the names given it here) that
    ``reference`` names; ``reported`` holds the names devices gave themselves, which count
    only when no name given here and no ID matches. Raises
    :class:`~commonsync.errors.NotFoundError` if none does ("no device … is ``among``", with
    ``hint``), :class:`~commonsync.errors.RequestConflictError` if several do,
    :class:`~commonsync.errors.InvalidRequestError` for a mistyped full device ID."""
    wanted = reference.strip()
    if not wanted:
        raise InvalidRequestError("no device given", hint=hint)
    reported = reported or {}
    named = any(wanted in names for _, names in candidates) or wanted in reported.values()
    if len(_clean(wanted)) >= _FULL_ID_CHARS and not named:
        try:
            full = DeviceId.parse(wanted)
        except DeviceIdError as exc:
            raise InvalidRequestError(
                f"{wanted!r} is not a valid device ID: {exc}",
                hint="copy it from `commonsync id` on the other device",
            ) from None
        if any(device == full for device, _ in candidates):
            return full
        raise NotFoundError(f"device {full.short_str} is not {among}", hint=hint)
    found = list(dict.fromkeys(d for d, names in candidates if matches(wanted, d, names)))
    if not found:
        found = [d for d, _ in candidates if reported.get(d) == wanted]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(f"no device {wanted!r} is {among}", hint=hint)
    names = dict(candidates)
    listed = ", ".join(_shown(d, [*names.get(d, ()), reported.get(d, "")]) for d in found)
    raise RequestConflictError(
        f"{wanted!r} names {len(found)} devices ({listed})",
        hint="give more of its device ID",
    )


def _shown(device: DeviceId, names: Sequence[str]) -> str:
    name = next((n for n in names if n), "")
    return f"{name} ({device.short_str})" if name else device.short_str
