"""Invitation links: everything a person needs to join a folder, in one string to send.

    commonsync://join/<payload>#<secret>

``payload`` is base32 (RFC 4648, lower case, no padding) of the canonical msgpack array
``[1, folder_id, invitation, label, name, [[device_digest, [address, ...]], ...], [relay,
...]]``: the folder, the invite entry's hash, a label for the joiner to see, the name the
inviter suggests for the joiner ("" for none), the devices of members
that may admit the joiner (device ID digests, SPEC.md §2, with ``HOST:PORT`` addresses), and
community relays (``RELAYID@HOST:PORT``) through which to reach them. ``secret`` is base32 of
the invitation's secret (:mod:`.invitations`): after the ``#``, so that a web page or a chat
preview that opens the link does not send it anywhere (SPEC.md §15.9).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from ..errors import EncodingError, MembershipError
from ..formats import encoding
from ..formats.device_id import DeviceId
from .invitations import MAX_SECRET_BYTES, SECRET_BYTES

PREFIX = "commonsync://join/"
FORMAT = 1
MAX_PAYLOAD_BYTES = 4096
MAX_DEVICES = 16
MAX_ADDRESSES = 8
MAX_RELAYS = 4
MAX_TEXT = 256


class LinkError(MembershipError):
    """The text is not an invitation link, or is damaged (a character lost in copying)."""


@dataclass(frozen=True)
class JoinLink:
    folder_id: bytes
    #: The hash of the invite entry in the folder's membership log.
    invitation: bytes
    label: str
    secret: bytes = field(repr=False)
    #: The name the inviter suggests for the person joining ("": their device's name).
    name: str = ""
    #: Devices that may admit the joiner, each with addresses to try.
    devices: tuple[tuple[DeviceId, tuple[str, ...]], ...] = ()
    relays: tuple[str, ...] = ()

    def __str__(self) -> str:
        payload = encoding.pack(
            [
                FORMAT,
                self.folder_id,
                self.invitation,
                self.label,
                self.name,
                [[device.digest, list(addresses)] for device, addresses in self.devices],
                list(self.relays),
            ]
        )
        return f"{PREFIX}{_b32(payload)}#{_b32(self.secret)}"

    @classmethod
    def parse(cls, text: str) -> JoinLink:
        """A link from its text (spaces and line breaks a mail program added are ignored);
        :class:`LinkError` with a sentence for a person otherwise."""
        cleaned = "".join(text.split())
        if not cleaned.lower().startswith(PREFIX):
            raise LinkError(f"an invitation link starts with {PREFIX}")
        body = cleaned[len(PREFIX) :]
        if "#" not in body:
            raise LinkError("the link lacks its secret (the part after '#'); copy the whole link")
        payload_text, secret_text = body.split("#", 1)
        payload = _unb32(payload_text, MAX_PAYLOAD_BYTES)
        secret = _unb32(secret_text, MAX_SECRET_BYTES)
        if not SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise LinkError("the link's secret is cut short; copy the whole link")
        try:
            obj = encoding.unpack(payload, max_size=MAX_PAYLOAD_BYTES, what="invitation link")
        except EncodingError:
            raise LinkError("the link is damaged; copy it again, whole") from None
        if not isinstance(obj, list) or len(obj) != 7 or obj[0] != FORMAT:
            raise LinkError("the link is of another version of commonsync, or damaged")
        _, folder_id, invitation, label, name, devices, relays = obj
        _check(isinstance(folder_id, bytes) and len(folder_id) == 32)
        _check(isinstance(invitation, bytes) and len(invitation) == 32)
        _check(isinstance(label, str) and len(label.encode()) <= MAX_TEXT)
        _check(isinstance(name, str) and len(name.encode()) <= MAX_TEXT)
        _check(isinstance(devices, list) and len(devices) <= MAX_DEVICES)
        _check(isinstance(relays, list) and len(relays) <= MAX_RELAYS)
        parsed = []
        for item in devices:
            _check(isinstance(item, list) and len(item) == 2)
            digest, addresses = item
            _check(isinstance(digest, bytes) and len(digest) == 32)
            _check(isinstance(addresses, list) and len(addresses) <= MAX_ADDRESSES)
            _check(all(isinstance(a, str) and len(a.encode()) <= MAX_TEXT for a in addresses))
            parsed.append((DeviceId(digest), tuple(addresses)))
        _check(all(isinstance(r, str) and len(r.encode()) <= MAX_TEXT for r in relays))
        return cls(folder_id, invitation, label, secret, name, tuple(parsed), tuple(relays))


def _check(condition: bool) -> None:
    if not condition:
        raise LinkError("the link is damaged; copy it again, whole")


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str, limit: int) -> bytes:
    if len(text) > (limit * 8 + 4) // 5:
        raise LinkError("the link is too long to be an invitation link")
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise LinkError("the link is damaged (a character is wrong); copy it again") from None
