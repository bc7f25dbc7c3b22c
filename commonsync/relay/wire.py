"""The community relay's protocol as pure data: control messages and the session preamble.

A device talks to a relay in two kinds of connection (SPEC.md §14):

- a **control connection**: the ordinary channel handshake (§10, the relay is the responder),
  then the small messages below, each one transport message holding the canonical msgpack
  array ``[type, field, ...]`` (§7), exactly like the wire messages of §12 but with their own
  types (32 and up, so that a message sent on the wrong kind of channel is an unknown type,
  never misread);
- for joining a folder with a short code (SPEC.md §14.1, §15.9), a member *claims* a small
  number, the **nameplate** (``ClaimCode`` → ``CodeClaimed``), and the person joining asks
  for a session with whoever holds it (``ConnectCode``); the relay never sees the rest of the
  code, only the nameplate;
- a relay that names :data:`VOUCH_FEATURE` in its handshake takes ``Vouch`` from the devices
  its hoster made *delegates* (an association's admins): the set of device IDs each vouches
  for, which the relay then admits (``Vouched`` answers); it learns device IDs only;
- a **session connection**: a fresh TCP connection that starts with :func:`preamble` (magic,
  version, a single-use token), answered by one :class:`JoinStatus` byte; after ``JOINED``
  the relay copies bytes between the two devices that presented the same token, and the
  devices run the channel handshake end to end through it.

Nothing here does I/O: :mod:`commonsync.relay.client` (devices) and ``commonsyncd.relay.server``
(the server) feed it bytes. Every decoder bounds its input and validates every field before a
value reaches the rest of the code, raising :class:`RelayProtocolError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ProtocolError, RelayProtocolError
from ..formats.device_id import DeviceId
from ..formats.messages import FieldSpec, decode_typed, encode_typed

#: The relay protocol version this document describes (preamble byte, schema file).
RELAY_VERSION = 1
#: The port a relay listens on unless told otherwise (the daemon's is 22070).
DEFAULT_RELAY_PORT = 22071
#: The largest control message, encoded; the control channel refuses larger frames.
MAX_RELAY_MESSAGE = 1024
TOKEN_SIZE = 32
#: A session connection's first bytes. Its first byte, ``c`` (0x63), is how a relay tells a
#: session connection from a control connection on the same port: a control connection
#: starts with the length of the handshake's first message, whose high byte is at most 0x08.
SESSION_MAGIC = b"commonsync relay"
PREAMBLE_SIZE = len(SESSION_MAGIC) + 1 + TOKEN_SIZE
U32 = 2**32 - 1
#: Nameplates are 1 … 9999: short enough to read out as the first part of a short code.
MAX_NAMEPLATE = 9999
#: The feature a relay names in its handshake when it takes ``Vouch`` (SPEC.md §14.1): a
#: device sends ``Vouch`` only to a relay that names it (an older relay would end the
#: control connection on an unknown message type).
VOUCH_FEATURE = "relay-vouch"
#: Devices in one ``Vouch`` message (34 bytes each encoded: the message stays < 1,024 bytes).
MAX_VOUCH_BATCH = 24
#: Devices one delegate may vouch for in all (its set, over several ``Vouch`` messages).
MAX_VOUCHED = 10_000


class JoinStatus(enum.IntEnum):
    """The one byte a relay answers a session preamble with."""

    #: The other device joined: every byte after this one is the other device's.
    JOINED = 0
    #: The token is unknown, expired or already used; the relay closes the connection.
    UNKNOWN_TOKEN = 1
    #: The other device did not join within the join timeout; the token is forgotten.
    TIMEOUT = 2
    #: The preamble's magic or version is not one this relay speaks.
    UNSUPPORTED = 3


class RefuseReason(enum.IntEnum):
    """Why a relay refused a ``Connect``, ``ConnectCode`` or ``ClaimCode`` (or, with request
    ID 0, the control connection)."""

    PROTOCOL_ERROR = 0
    #: The target device has no control connection to this relay.
    OFFLINE = 1
    #: The requester or the target is not (or no longer) a member of this relay.
    NOT_MEMBER = 2
    #: The requester asked for sessions faster than the relay allows.
    RATE_LIMITED = 3
    #: The requester or the target already has as many sessions as the relay allows.
    TOO_MANY_SESSIONS = 4
    #: The relay is at capacity (control connections or sessions).
    OVERLOADED = 5
    #: A request the relay cannot serve (a session with oneself, request ID 0, a device
    #: holding as many nameplates as the relay lets it).
    INVALID = 6
    #: ``ConnectCode``: no device holds that nameplate on this relay (never claimed, or
    #: released: the code was mistyped, or the device that gave it stopped waiting).
    UNKNOWN_CODE = 7
    #: ``Vouch``: the relay's hoster did not make this device a delegate for admission.
    NOT_DELEGATE = 8

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    RefuseReason.PROTOCOL_ERROR: "protocol error",
    RefuseReason.OFFLINE: "the device is not connected to the relay",
    RefuseReason.NOT_MEMBER: "not a member of the relay",
    RefuseReason.RATE_LIMITED: "too many requests; slow down",
    RefuseReason.TOO_MANY_SESSIONS: "too many sessions through the relay",
    RefuseReason.OVERLOADED: "the relay is at capacity",
    RefuseReason.INVALID: "invalid request",
    RefuseReason.UNKNOWN_CODE: "no device holds that code on this relay",
    RefuseReason.NOT_DELEGATE: "this device may not vouch for devices at this relay",
}


def _uint(name: str, max_value: int) -> FieldSpec:
    return FieldSpec(name, "uint", max_value)


def _bin(name: str, size: int) -> FieldSpec:
    return FieldSpec(name, "bin", size, size)


#: A nameplate: a uint with a lower bound too (0 is no nameplate). The shared validator of
#: :mod:`commonsync.formats.messages` checks only a uint's maximum, so :func:`encode` and
#: :func:`decode` check the minimum of such fields themselves (:func:`_check_minimums`).
_NAMEPLATE = FieldSpec("nameplate", "uint", MAX_NAMEPLATE, 1)


class RelayMessage:
    """Base of every control message; subclasses are frozen dataclasses listed in SCHEMA."""

    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]


@dataclass(frozen=True)
class Connect(RelayMessage):
    """Device → relay: "open a session with this device" (its device ID, §2). A device knows
    its peers by ID; the relay knows every connected device's ID from its handshake."""

    TYPE = 32
    FIELDS = (_uint("request_id", U32), _bin("target", 32))
    request_id: int
    target: bytes


@dataclass(frozen=True)
class Granted(RelayMessage):
    """Relay → device: the answer to ``Connect``: join the session with this token."""

    TYPE = 33
    FIELDS = (_uint("request_id", U32), _bin("token", TOKEN_SIZE))
    request_id: int
    token: bytes


@dataclass(frozen=True)
class Refused(RelayMessage):
    """Relay → device: a ``Connect``, ``ConnectCode`` or ``ClaimCode`` refused (``reason``
    from :class:`RefuseReason`); with ``request_id`` 0, the relay is closing this control
    connection and says why."""

    TYPE = 34
    FIELDS = (_uint("request_id", U32), _uint("reason", 255), FieldSpec("detail", "str", 256))
    request_id: int
    reason: int
    detail: str


@dataclass(frozen=True)
class Invitation(RelayMessage):
    """Relay → device: the device ``requester`` (its ID) asked for a session with you; join
    with ``token`` to take it (or let it expire)."""

    TYPE = 35
    FIELDS = (_bin("requester", 32), _bin("token", TOKEN_SIZE))
    requester: bytes
    token: bytes

    @property
    def requester_id(self) -> DeviceId:
        """Who asked, as the relay says; the handshake that follows proves it (or not)."""
        return DeviceId(self.requester)


@dataclass(frozen=True)
class Ping(RelayMessage):
    """Either way: are you there? Answered by ``Pong`` with the same nonce."""

    TYPE = 36
    FIELDS = (_uint("nonce", U32),)
    nonce: int


@dataclass(frozen=True)
class Pong(RelayMessage):
    TYPE = 37
    FIELDS = (_uint("nonce", U32),)
    nonce: int


@dataclass(frozen=True)
class ClaimCode(RelayMessage):
    """Device → relay: "reserve a nameplate for me", to give a short code to someone joining
    (SPEC.md §15.9). Members only; answered by ``CodeClaimed`` or ``Refused``. The nameplate
    is held until ``ReleaseCode`` or until this control connection ends."""

    TYPE = 38
    FIELDS = (_uint("request_id", U32),)
    request_id: int


@dataclass(frozen=True)
class CodeClaimed(RelayMessage):
    """Relay → device: the answer to ``ClaimCode``: the nameplate now held for you (the
    smallest free one, so that codes stay short)."""

    TYPE = 39
    FIELDS = (_uint("request_id", U32), _NAMEPLATE)
    request_id: int
    nameplate: int


@dataclass(frozen=True)
class ReleaseCode(RelayMessage):
    """Device → relay: "I no longer hold this nameplate" (the join is done or abandoned).
    Not answered; releasing a nameplate one does not hold does nothing."""

    TYPE = 40
    FIELDS = (_NAMEPLATE,)
    nameplate: int


@dataclass(frozen=True)
class ConnectCode(RelayMessage):
    """Device → relay: "open a session with the device that holds this nameplate". Answered
    like ``Connect``: ``Granted`` (and the holder gets an ``Invitation`` with the requester's
    ID and the token) or ``Refused`` (``UNKNOWN_CODE`` when nobody holds it). The one message,
    with ``Connect``, that a device which is not a member of the relay may send."""

    TYPE = 41
    FIELDS = (_uint("request_id", U32), _NAMEPLATE)
    request_id: int
    nameplate: int


@dataclass(frozen=True)
class Vouch(RelayMessage):
    """Device → relay, from a *delegate* of the relay's hoster (SPEC.md §14.1): part of the
    set of devices it vouches for (the relay admits them as members). The set is sent in
    batches of at most :data:`MAX_VOUCH_BATCH`; the one with ``final`` true ends it, and the
    set then replaces the delegate's previous one whole (an empty final batch alone: none).
    Answered, after the final batch, by ``Vouched``; or ``Refused`` (``NOT_DELEGATE``, or
    ``INVALID`` past :data:`MAX_VOUCHED` devices). Only to a relay naming
    :data:`VOUCH_FEATURE`."""

    TYPE = 42
    FIELDS = (
        _uint("request_id", U32),
        FieldSpec("final", "bool"),
        FieldSpec("devices", "array", MAX_VOUCH_BATCH, 0, (_bin("device", 32),)),
    )
    request_id: int
    final: bool
    devices: list[bytes]


@dataclass(frozen=True)
class Vouched(RelayMessage):
    """Relay → device: the answer to a final ``Vouch``: the set now in force holds
    ``devices`` devices (duplicates counted once)."""

    TYPE = 43
    FIELDS = (_uint("request_id", U32), _uint("devices", U32))
    request_id: int
    devices: int


SCHEMA: dict[int, type[RelayMessage]] = {
    cls.TYPE: cls
    for cls in (
        Connect,
        Granted,
        Refused,
        Invitation,
        Ping,
        Pong,
        ClaimCode,
        CodeClaimed,
        ReleaseCode,
        ConnectCode,
        Vouch,
        Vouched,
    )
}


def _field_json(spec: FieldSpec) -> dict[str, Any]:
    out = spec.as_json()
    if spec.kind == "uint" and spec.min:
        out["min"] = spec.min
    return out


def _check_minimums(message: RelayMessage) -> None:
    """The lower bounds of uint fields (a nameplate is at least 1), which the shared field
    validator does not check."""
    for spec in message.FIELDS:
        if spec.kind == "uint" and spec.min and getattr(message, spec.name) < spec.min:
            raise RelayProtocolError(
                f"{type(message).__name__}.{spec.name} is not a valid uint "
                f"({spec.min} … {spec.max})"
            )


def schema_as_json() -> dict[str, Any]:
    """The table written to protocol/relay-messages.json."""
    return {
        "version": RELAY_VERSION,
        "max_message": MAX_RELAY_MESSAGE,
        "session_magic": SESSION_MAGIC.decode(),
        "token_size": TOKEN_SIZE,
        "join_status": {s.name: int(s) for s in JoinStatus},
        "refuse_reasons": {r.name: int(r) for r in RefuseReason},
        "messages": [
            {"type": code, "name": cls.__name__, "fields": [_field_json(f) for f in cls.FIELDS]}
            for code, cls in sorted(SCHEMA.items())
        ],
    }


def encode(message: RelayMessage) -> bytes:
    """One control message, every field validated first (:class:`RelayProtocolError`)."""
    try:
        data = encode_typed(message)
    except ProtocolError as exc:
        raise RelayProtocolError(str(exc)) from None
    _check_minimums(message)
    return data


def decode(data: bytes) -> RelayMessage:
    """One control message, validated; :class:`RelayProtocolError` on anything else."""
    try:
        message: RelayMessage = decode_typed(
            data, SCHEMA, max_size=MAX_RELAY_MESSAGE, what="relay message"
        )
    except ProtocolError as exc:
        raise RelayProtocolError(str(exc)) from None
    _check_minimums(message)
    return message


# -- the session connection --------------------------------------------------------------------


def preamble(token: bytes) -> bytes:
    """The first bytes a device writes on a session connection."""
    if len(token) != TOKEN_SIZE:
        raise RelayProtocolError(f"a session token is {TOKEN_SIZE} bytes, not {len(token)}")
    return SESSION_MAGIC + bytes([RELAY_VERSION]) + token


def is_session_start(first_byte: int) -> bool:
    """Whether a connection whose first byte is this one is a session join (else control)."""
    return first_byte == SESSION_MAGIC[0]


def parse_preamble(data: bytes) -> bytes:
    """The token of a session preamble (exactly :data:`PREAMBLE_SIZE` bytes)."""
    if len(data) != PREAMBLE_SIZE:
        raise RelayProtocolError(f"a session preamble is {PREAMBLE_SIZE} bytes, not {len(data)}")
    if not data.startswith(SESSION_MAGIC):
        raise RelayProtocolError("not a commonsync relay session preamble")
    version = data[len(SESSION_MAGIC)]
    if version != RELAY_VERSION:
        raise RelayProtocolError(
            f"session preamble of relay protocol version {version}; this side speaks "
            f"{RELAY_VERSION}"
        )
    return data[len(SESSION_MAGIC) + 1 :]


def join_status(data: bytes) -> JoinStatus:
    """The relay's answer to a preamble (one byte)."""
    if len(data) != 1:
        raise RelayProtocolError("the relay's join answer is one byte")
    try:
        return JoinStatus(data[0])
    except ValueError:
        raise RelayProtocolError(f"unknown join status {data[0]}") from None


__all__ = [
    "DEFAULT_RELAY_PORT",
    "MAX_NAMEPLATE",
    "MAX_RELAY_MESSAGE",
    "MAX_VOUCHED",
    "MAX_VOUCH_BATCH",
    "PREAMBLE_SIZE",
    "RELAY_VERSION",
    "SCHEMA",
    "SESSION_MAGIC",
    "TOKEN_SIZE",
    "VOUCH_FEATURE",
    "ClaimCode",
    "CodeClaimed",
    "Connect",
    "ConnectCode",
    "Granted",
    "Invitation",
    "JoinStatus",
    "Ping",
    "Pong",
    "RefuseReason",
    "Refused",
    "RelayMessage",
    "ReleaseCode",
    "Vouch",
    "Vouched",
    "decode",
    "encode",
    "join_status",
    "parse_preamble",
    "preamble",
]
