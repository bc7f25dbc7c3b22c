"""Membership entries: what one device says about the folder's members, signed.

An entry is the canonical array ``[1, folder_id, parents, author, time, op, args,
signature]`` (SPEC.md §15.1, §15.2). This module checks everything that can be
checked on one entry alone: the encoding, the ranges, the shape of ``args`` for its ``op``,
and the signature. Whether its author may do what it says depends on the log
(:mod:`.log`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import EncodingError, EntryMalformedError, SignatureError
from ..formats import encoding
from ..formats.hashing import blake2b
from ..formats.identity import DeviceIdentity, verify_signature

FORMAT = 1
SIGNATURE_CONTEXT = b"commonsync/v1 membership-entry\x00"
HASH_CONTEXT = b"commonsync/v1 membership-hash\x00"
#: The largest encoded entry (a new epoch for 200 devices is about 20 KiB).
MAX_ENTRY_BYTES = 64 * 1024
#: Heads an entry may name as its parents (a merge of more is written as several).
MAX_PARENTS = 16
#: Devices one entry may name (a member's devices, an epoch's wrapped secrets).
MAX_DEVICES = 512
MAX_NAME_BYTES = 128
#: What a name may not hold (SPEC.md §15.1): controls (C0, DEL, C1), line and paragraph
#: separators, the bidirectional formatting characters (they reorder how text around them
#: shows) and lone surrogates. A fixed list rather than Unicode categories, which change with
#: the Unicode version: devices must agree on every entry, whatever their runtime.
NAME_REFUSED = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
#: An epoch's secret sealed to one device: crypto_box_seal adds 48 bytes to 32.
SEALED_SECRET_BYTES = 80
_I64_MAX = 2**63 - 1


class Role(enum.IntEnum):
    """What a member may do; each role may do what those below it may."""

    READER = 0
    WRITER = 1
    ADMIN = 2
    OWNER = 3


class Op(enum.IntEnum):
    GENESIS = 0
    ADD_MEMBER = 1
    SET_ROLE = 2
    ADD_DEVICE = 3
    REMOVE_DEVICE = 4
    REMOVE_MEMBER = 5
    NEW_EPOCH = 6
    INVITE = 7
    REVOKE_INVITATION = 8


@dataclass(frozen=True)
class Genesis:
    name: str


@dataclass(frozen=True)
class AddMember:
    name: str
    role: Role
    devices: tuple[bytes, ...]
    #: The hash of the invite entry this admission uses, or empty (an admin adding directly).
    invitation: bytes = b""
    #: The joiner's signature with the invitation's key (see :mod:`.invitations`).
    invitation_signature: bytes = b""


@dataclass(frozen=True)
class SetRole:
    member: bytes
    role: Role
    #: When a writer (or more) becomes a reader: per device, the last record sequence number
    #: still credited, as for a removal; empty otherwise.
    last_sequences: tuple[tuple[bytes, int], ...] = ()


@dataclass(frozen=True)
class AddDevice:
    member: bytes
    device: bytes


@dataclass(frozen=True)
class RemoveDevice:
    member: bytes
    device: bytes
    #: The last of this device's record sequence numbers still credited (SPEC: removal).
    last_sequence: int


@dataclass(frozen=True)
class RemoveMember:
    member: bytes
    #: Per device of the member: the last record sequence number still credited.
    last_sequences: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True)
class NewEpoch:
    epoch: int
    secret_hash: bytes
    #: Per device in force: the epoch's secret sealed to it (:mod:`.epochs`).
    wrapped: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Invite:
    #: The Ed25519 public key derived from the invitation's secret (:mod:`.invitations`).
    key: bytes
    role: Role
    #: Seconds since the epoch after which no admission may use it.
    expires: int
    uses: int


@dataclass(frozen=True)
class RevokeInvitation:
    invitation: bytes


Action = (
    Genesis
    | AddMember
    | SetRole
    | AddDevice
    | RemoveDevice
    | RemoveMember
    | NewEpoch
    | Invite
    | RevokeInvitation
)
_OPS: dict[type, Op] = {
    Genesis: Op.GENESIS,
    AddMember: Op.ADD_MEMBER,
    SetRole: Op.SET_ROLE,
    AddDevice: Op.ADD_DEVICE,
    RemoveDevice: Op.REMOVE_DEVICE,
    RemoveMember: Op.REMOVE_MEMBER,
    NewEpoch: Op.NEW_EPOCH,
    Invite: Op.INVITE,
    RevokeInvitation: Op.REVOKE_INVITATION,
}


@dataclass(frozen=True)
class Entry:
    """One signed entry of a folder's membership log."""

    folder_id: bytes
    parents: tuple[bytes, ...]
    author: bytes
    time: int
    action: Action
    signature: bytes = field(default=b"", repr=False)

    @cached_property
    def encoded(self) -> bytes:
        return encoding.pack([*self._signed_fields(), self.signature])

    @cached_property
    def hash(self) -> bytes:
        """What names this entry: its parents' successors name it, a member is named by the
        hash of the entry that added it."""
        return blake2b(HASH_CONTEXT + self.encoded)

    @property
    def op(self) -> Op:
        return _OPS[type(self.action)]

    def signed_bytes(self) -> bytes:
        return SIGNATURE_CONTEXT + encoding.pack(self._signed_fields())

    def _signed_fields(self) -> list[Any]:
        return [FORMAT, self.folder_id, list(self.parents), self.author, self.time,
                int(self.op), _args(self.action)]  # fmt: skip


def make_entry(
    identity: DeviceIdentity,
    folder_id: bytes,
    parents: list[bytes] | tuple[bytes, ...],
    time: int,
    action: Action,
) -> Entry:
    """An entry of ``action`` by ``identity``, signed; ``parents`` are the heads it knew."""
    unsigned = Entry(folder_id, tuple(sorted(set(parents))), identity.public_key, time, action)
    _check_fields(unsigned)
    entry = Entry(*_fields(unsigned), signature=identity.sign(unsigned.signed_bytes()))
    if len(entry.encoded) > MAX_ENTRY_BYTES:
        raise EntryMalformedError(f"the entry is larger than {MAX_ENTRY_BYTES} bytes")
    return entry


def decode_entry(data: bytes) -> Entry:
    """An entry from its encoding, checked on its own: form, ranges and signature."""
    try:
        obj = encoding.unpack(data, max_size=MAX_ENTRY_BYTES, what="membership entry")
    except EncodingError as exc:
        raise EntryMalformedError(str(exc)) from None
    if not isinstance(obj, list) or len(obj) != 8:
        raise EntryMalformedError("a membership entry is an array of 8 fields")
    version, folder_id, parents, author, time, op, args, signature = obj
    _require(version == FORMAT, f"unknown membership entry format {version!r}")
    _require(isinstance(parents, list) and all(_is_bytes(p, 32) for p in parents), "parents")
    _require(_is_int(op) and op in Op._value2member_map_, f"unknown operation {op!r}")
    _require(_is_bytes(signature, 64), "the signature is not 64 bytes")
    entry = Entry(
        _bytes(folder_id, 32, "folder ID"),
        tuple(parents),
        _bytes(author, 32, "author"),
        _int(time, "time"),
        _action(Op(op), args),
        signature,
    )
    _check_fields(entry)
    _require(list(entry.parents) == sorted(set(entry.parents)), "parents are not sorted and unique")
    try:
        verify_signature(entry.author, entry.signed_bytes(), entry.signature)
    except SignatureError:
        raise EntryMalformedError("the entry's signature does not verify") from None
    if entry.encoded != data:
        raise EntryMalformedError("the entry is not in canonical form")
    return entry


# -- the fields of each action -------------------------------------------------------------------


def _args(action: Action) -> list[Any]:
    match action:
        case Genesis(name):
            return [name]
        case AddMember(name, role, devices, invitation, signature):
            return [name, int(role), list(devices), invitation, signature]
        case SetRole(member, role, lasts):
            return [member, int(role), [[d, n] for d, n in lasts]]
        case AddDevice(member, device):
            return [member, device]
        case RemoveDevice(member, device, last):
            return [member, device, last]
        case RemoveMember(member, lasts):
            return [member, [[d, n] for d, n in lasts]]
        case NewEpoch(epoch, secret_hash, wrapped):
            return [epoch, secret_hash, [[d, w] for d, w in wrapped]]
        case Invite(key, role, expires, uses):
            return [key, int(role), expires, uses]
        case RevokeInvitation(invitation):
            return [invitation]
    raise AssertionError(action)


def _action(op: Op, args: Any) -> Action:
    _require(isinstance(args, list), "the operation's arguments are not an array")
    counts = {Op.GENESIS: 1, Op.ADD_MEMBER: 5, Op.SET_ROLE: 3, Op.ADD_DEVICE: 2,
              Op.REMOVE_DEVICE: 3, Op.REMOVE_MEMBER: 2, Op.NEW_EPOCH: 3, Op.INVITE: 4,
              Op.REVOKE_INVITATION: 1}  # fmt: skip
    _require(len(args) == counts[op], f"{op.name.lower()} takes {counts[op]} arguments")
    match op:
        case Op.GENESIS:
            return Genesis(_name(args[0]))
        case Op.ADD_MEMBER:
            devices = args[2]
            _require(isinstance(devices, list), "devices are not an array")
            return AddMember(
                _name(args[0]),
                _role(args[1]),
                tuple(_bytes(d, 32, "device key") for d in devices),
                _bytes_of(args[3], (0, 32), "invitation"),
                _bytes_of(args[4], (0, 64), "invitation signature"),
            )
        case Op.SET_ROLE:
            return SetRole(_bytes(args[0], 32, "member"), _role(args[1]), _pairs(args[2], _int))
        case Op.ADD_DEVICE:
            return AddDevice(_bytes(args[0], 32, "member"), _bytes(args[1], 32, "device key"))
        case Op.REMOVE_DEVICE:
            return RemoveDevice(
                _bytes(args[0], 32, "member"),
                _bytes(args[1], 32, "device key"),
                _int(args[2], "last sequence"),
            )
        case Op.REMOVE_MEMBER:
            return RemoveMember(_bytes(args[0], 32, "member"), _pairs(args[1], _int))
        case Op.NEW_EPOCH:
            return NewEpoch(
                _int(args[0], "epoch"),
                _bytes(args[1], 32, "secret hash"),
                _pairs(args[2], lambda v, what: _bytes(v, SEALED_SECRET_BYTES, what)),
            )
        case Op.INVITE:
            return Invite(
                _bytes(args[0], 32, "invitation key"),
                _role(args[1]),
                _int(args[2], "expiry"),
                _int(args[3], "uses"),
            )
        case Op.REVOKE_INVITATION:
            return RevokeInvitation(_bytes(args[0], 32, "invitation"))
    raise AssertionError(op)


def _check_fields(entry: Entry) -> None:
    """The ranges an entry must keep, whoever made it (also what :func:`make_entry` checks,
    so that this device never signs what others would refuse)."""
    _require(len(entry.folder_id) == 32, "a folder ID is 32 bytes")
    _require(len(entry.author) == 32, "an author is a 32-byte device key")
    _require(len(entry.parents) <= MAX_PARENTS, f"more than {MAX_PARENTS} parents")
    _require(
        (not entry.parents) == (entry.op is Op.GENESIS),
        "the genesis entry alone has no parents",
    )
    _require(0 <= entry.time <= _I64_MAX, "time out of range")
    action = entry.action
    devices: tuple[bytes, ...] = ()
    match action:
        case AddMember():
            devices = action.devices
            _require(len(devices) > 0, "a member needs a device")
            _require(
                (not action.invitation) == (not action.invitation_signature),
                "an admission by invitation carries the invitation and the joiner's signature",
            )
        case RemoveMember() | SetRole():
            devices = tuple(d for d, _ in action.last_sequences)
        case NewEpoch():
            devices = tuple(d for d, _ in action.wrapped)
            _require(1 <= action.epoch <= 2**32 - 1, "an epoch is between 1 and 2^32 - 1")
        case Invite():
            _require(1 <= action.uses <= 10_000, "an invitation has 1 to 10,000 uses")
    _require(len(devices) <= MAX_DEVICES, f"more than {MAX_DEVICES} devices in one entry")
    _require(len(set(devices)) == len(devices), "a device is named twice")


def _fields(entry: Entry) -> tuple[bytes, tuple[bytes, ...], bytes, int, Action]:
    return entry.folder_id, entry.parents, entry.author, entry.time, entry.action


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise EntryMalformedError(f"malformed membership entry: {what}")


def _is_bytes(value: Any, size: int) -> bool:
    return type(value) is bytes and len(value) == size


def _is_int(value: Any) -> bool:
    return type(value) is int


def _bytes(value: Any, size: int, what: str) -> bytes:
    _require(_is_bytes(value, size), f"{what} is not {size} bytes")
    return bytes(value)


def _bytes_of(value: Any, sizes: tuple[int, ...], what: str) -> bytes:
    _require(type(value) is bytes and len(value) in sizes, f"{what} has the wrong size")
    return bytes(value)


def _int(value: Any, what: str) -> int:
    _require(_is_int(value) and 0 <= value <= _I64_MAX, f"{what} is not a count")
    return int(value)


def _role(value: Any) -> Role:
    _require(_is_int(value) and value in Role._value2member_map_, f"unknown role {value!r}")
    return Role(value)


def _name(value: Any) -> str:
    _require(isinstance(value, str), "a name is text")
    _require(len(value.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES, "name too long")
    _require(
        NAME_REFUSED.search(value) is None,
        "a name holds no control, line-break or bidirectional formatting characters",
    )
    return str(value)


def _pairs(value: Any, second: Any) -> tuple[tuple[bytes, Any], ...]:
    _require(isinstance(value, list), "not an array of pairs")
    pairs = []
    for item in value:
        _require(isinstance(item, list) and len(item) == 2, "not a pair")
        pairs.append((_bytes(item[0], 32, "device key"), second(item[1], "value")))
    return tuple(pairs)
