"""The wire protocol's messages: typed values, a declarative schema, one codec.

A message on the wire is the canonical msgpack array ``[type, field, field, ...]`` (SPEC.md,
"Wire protocol"), sent as one transport message. :data:`SCHEMA` describes every message type
field by field, with the limit of each; ``protocol/messages.json`` holds the same table for
other implementations, and a test keeps the two equal. Decoding validates every field against
the schema before any value reaches the rest of the library: unknown types, missing or extra
fields, wrong types and out-of-range values all raise :class:`ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

from ..errors import EncodingError, ProtocolError
from . import encoding

PROTOCOL_VERSION = 1
U32 = 2**32 - 1
U63 = 2**63 - 1
MAX_CHUNK = 4 * 1024 * 1024
#: One index batch holds at most this many sealed records (and at most MAX_MESSAGE bytes).
MAX_INDEX_BATCH = 4096
MAX_FOLDERS = 1024
#: The largest encoded message: a full chunk response or a full index batch.
MAX_MESSAGE = 16 * 1024 * 1024
#: One chunk batch asks for at most this many chunks, and this many bytes in all (so that
#: its response, with msgpack's few bytes per item, fits in one message).
MAX_BATCH_CHUNKS = 1024
MAX_BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FieldSpec:
    """One field: ``kind`` is uint, bool, bin, str or array.

    An array with one item spec holds plain values of that spec; with several, each element is
    itself an array with one value per item spec (a record).
    """

    name: str
    kind: str
    max: int = 0
    min: int = 0
    items: tuple[FieldSpec, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind}
        if self.kind in ("uint", "bin", "str", "array"):
            out["max"] = self.max
        if self.kind in ("bin", "array") and self.min:
            out["min"] = self.min
        if self.items:
            out["items"] = [item.as_json() for item in self.items]
        return out


def _uint(name: str, max_value: int = U63) -> FieldSpec:
    return FieldSpec(name, "uint", max_value)


def _bin(name: str, max_len: int, min_len: int = 0) -> FieldSpec:
    return FieldSpec(name, "bin", max_len, min_len)


def _str(name: str, max_bytes: int) -> FieldSpec:
    return FieldSpec(name, "str", max_bytes)


def _array(name: str, max_count: int, *items: FieldSpec) -> FieldSpec:
    return FieldSpec(name, "array", max_count, 0, items)


class Message:
    """Base of every wire message; subclasses are frozen dataclasses listed in SCHEMA."""

    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]


@dataclass(frozen=True)
class Hello(Message):
    """First message each way: who is speaking, and what it can do."""

    TYPE = 1
    FIELDS = (
        _uint("version", U32),
        _array("features", 32, _str("feature", 64)),
        _str("device_name", 64),
        _str("client", 64),
    )
    version: int
    features: list[str]
    device_name: str
    client: str


@dataclass(frozen=True)
class Folders(Message):
    """The folders the sender shares with the receiver, each proved by a keyed hash of the
    handshake hash (so only someone holding the folder's key recognises it)."""

    TYPE = 2
    FIELDS = (
        _array(
            "folders",
            MAX_FOLDERS,
            _bin("proof", 32, 32),
            _bin("index_id", 16, 16),
            _uint("max_sequence"),
        ),
    )
    folders: list[list[Any]]


@dataclass(frozen=True)
class IndexRequest(Message):
    """Send me your records for ``folder_id`` after ``after`` (0: everything)."""

    TYPE = 3
    FIELDS = (_bin("folder_id", 32, 32), _bin("index_id", 16, 16), _uint("after"))
    folder_id: bytes
    index_id: bytes
    after: int


@dataclass(frozen=True)
class Index(Message):
    """A batch of sealed records, each with the sender's local sequence number for it."""

    TYPE = 4
    FIELDS = (
        _bin("folder_id", 32, 32),
        _bin("index_id", 16, 16),
        _array("records", MAX_INDEX_BATCH, _uint("sequence"), _bin("sealed", MAX_MESSAGE, 1)),
        _uint("max_sequence"),
    )
    folder_id: bytes
    index_id: bytes
    records: list[list[Any]]
    max_sequence: int


@dataclass(frozen=True)
class ChunkRequest(Message):
    TYPE = 5
    FIELDS = (
        _uint("request_id", U32),
        _bin("folder_id", 32, 32),
        _bin("chunk_id", 32, 32),
        _uint("size", MAX_CHUNK),
    )
    request_id: int
    folder_id: bytes
    chunk_id: bytes
    size: int


@dataclass(frozen=True)
class ChunkResponse(Message):
    """``status`` 0: found, ``data`` is the chunk; 1: not found; 2: read error."""

    TYPE = 6
    FIELDS = (_uint("request_id", U32), _uint("status", 2), _bin("data", MAX_CHUNK))
    request_id: int
    status: int
    data: bytes


@dataclass(frozen=True)
class ChunkBatchRequest(Message):
    """Many chunks in one request: small files cost one round trip per batch, not per file.
    Their sizes add up to at most :data:`MAX_BATCH_BYTES` (checked by the session)."""

    TYPE = 11
    FIELDS = (
        _uint("request_id", U32),
        _bin("folder_id", 32, 32),
        _array("chunks", MAX_BATCH_CHUNKS, _bin("chunk_id", 32, 32), _uint("size", MAX_CHUNK)),
    )
    request_id: int
    folder_id: bytes
    chunks: list[list[Any]]


@dataclass(frozen=True)
class ChunkBatchResponse(Message):
    """One ``[status, data]`` per requested chunk, in the request's order (statuses as in
    :class:`ChunkResponse`)."""

    TYPE = 12
    FIELDS = (
        _uint("request_id", U32),
        _array("chunks", MAX_BATCH_CHUNKS, _uint("status", 2), _bin("data", MAX_CHUNK)),
    )
    request_id: int
    chunks: list[list[Any]]


@dataclass(frozen=True)
class Ping(Message):
    TYPE = 7
    FIELDS = (_uint("nonce", U32),)
    nonce: int


@dataclass(frozen=True)
class Pong(Message):
    TYPE = 8
    FIELDS = (_uint("nonce", U32),)
    nonce: int


class CloseReason(IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    UNKNOWN_DEVICE = 2
    UNSUPPORTED_VERSION = 3
    OVERLOADED = 4
    SHUTTING_DOWN = 5


@dataclass(frozen=True)
class Close(Message):
    """Last message of a session; ``reason`` is one of :class:`CloseReason`'s codes."""

    TYPE = 9
    FIELDS = (_uint("reason", 255), _str("detail", 256))
    reason: int
    detail: str


@dataclass(frozen=True)
class Offer(Message):
    """An invitation to a folder: its label and its key (``FolderKey.to_bytes``), sent only
    inside the channel to a device the sender chose. The receiver keeps it pending until its
    user accepts; nothing about the offer is trusted beyond "this device offered it"."""

    TYPE = 10
    FIELDS = (_bin("folder_id", 32, 32), _str("label", 256), _bin("key", 128))
    folder_id: bytes
    label: str
    key: bytes


#: The heads one LogHeads names at most (a log with more names some of them: its peer then
#: sends a few entries the device had already).
MAX_LOG_HEADS = 64
#: Membership entries in one LogEntries message at most, and the largest entry.
MAX_LOG_BATCH = 1024
MAX_LOG_ENTRY = 64 * 1024
MAX_LOG_ENTRIES = 10_000


@dataclass(frozen=True)
class LogHeads(Message):
    """The heads of the sender's membership log of a shared folder, and how many entries
    it holds: the receiver answers with the entries the sender lacks (SPEC.md §15.8)."""

    TYPE = 13
    FIELDS = (
        _bin("folder_id", 32, 32),
        _uint("count", MAX_LOG_ENTRIES),
        _array("heads", MAX_LOG_HEADS, _bin("head", 32, 32)),
        _uint("epoch", U32),
    )
    folder_id: bytes
    count: int
    heads: list[bytes]
    #: The newest key epoch the sender holds: a member that holds newer ones hands them over.
    epoch: int


@dataclass(frozen=True)
class LogEntries(Message):
    """Membership entries of a shared folder the receiver lacks, parents first."""

    TYPE = 14
    FIELDS = (
        _bin("folder_id", 32, 32),
        _array("entries", MAX_LOG_BATCH, _bin("entry", MAX_LOG_ENTRY, 1)),
    )
    folder_id: bytes
    entries: list[bytes]


#: Folder keys in one EpochKeys message at most.
MAX_EPOCH_KEYS = 64


@dataclass(frozen=True)
class EpochKeys(Message):
    """Keys of a folder's later epochs (each encoded as in SPEC.md §3), for a member whose
    log names them but who was not sealed their secrets (it joined after they began)."""

    TYPE = 15
    FIELDS = (
        _bin("folder_id", 32, 32),
        _array("keys", MAX_EPOCH_KEYS, _bin("key", 128, 1)),
    )
    folder_id: bytes
    keys: list[bytes]


@dataclass(frozen=True)
class Join(Message):
    """A joiner's request, on a channel it opened with the ``join`` feature: admit this
    device (the channel's peer) to the folder, proving the invitation's secret by signing the
    admission with its key (SPEC.md §15.9)."""

    TYPE = 16
    FIELDS = (
        _bin("folder_id", 32, 32),
        _bin("invitation", 32, 32),
        _str("name", 128),
        _bin("signature", 64, 64),
    )
    folder_id: bytes
    invitation: bytes
    name: str
    signature: bytes


class JoinStatus(IntEnum):
    ADMITTED = 0
    REFUSED = 1


@dataclass(frozen=True)
class Joined(Message):
    """The answer to a Join: admitted (with the folder's label and key, encoded as in SPEC.md
    §3) or refused (``detail`` says why, for the person joining)."""

    TYPE = 17
    FIELDS = (
        _uint("status", 1),
        _str("detail", 256),
        _str("label", 256),
        _bin("key", 128),
    )
    status: int
    detail: str
    label: str
    key: bytes


@dataclass(frozen=True)
class CodeHello(Message):
    """Either way, first on a ``join`` channel opened for a short code (SPEC.md §15.10): the
    code's nameplate (which of the device's open codes is meant; the joiner's alone counts)
    and this side's SPAKE2 message."""

    TYPE = 18
    FIELDS = (_uint("nameplate", 9999), _bin("pake", 33, 33))
    nameplate: int
    pake: bytes


@dataclass(frozen=True)
class CodeProof(Message):
    """Joiner → member: proof that it derived the same key, bound to this channel."""

    TYPE = 19
    FIELDS = (_bin("proof", 32, 32),)
    proof: bytes


@dataclass(frozen=True)
class CodeAnswer(Message):
    """Member → joiner: the code was right (status 0: the member's own proof, and the
    invitation's link, with which the joiner sends ``Join`` on the same channel), wrong or
    void (1), or not held by this device (2, sent instead of ``CodeHello``: no attempt was
    spent); ``detail`` says why, for the person joining, and ``proof`` and ``link`` are
    then empty."""

    TYPE = 20
    FIELDS = (
        _uint("status", 2),
        _str("detail", 256),
        _bin("proof", 32),
        _str("link", 8192),
    )
    status: int
    detail: str
    proof: bytes
    link: str


@dataclass(frozen=True)
class Progress(Message):
    """How far the sender is with a shared folder, for the receiver's status (SPEC.md §13):
    it has taken the receiver's index ``index_id`` up to local sequence ``seen``, its own
    index is at ``highest``, and it still has ``need_files`` files of ``need_bytes`` bytes to
    write. Sent only to a peer that names the ``progress`` feature in its ``Hello``."""

    TYPE = 21
    FIELDS = (
        _bin("folder_id", 32, 32),
        _bin("index_id", 16, 16),
        _uint("seen"),
        _uint("highest"),
        _uint("need_files"),
        _uint("need_bytes"),
    )
    folder_id: bytes
    index_id: bytes
    seen: int
    highest: int
    need_files: int
    need_bytes: int


SCHEMA: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Folders, IndexRequest, Index, ChunkRequest, ChunkResponse, Ping, Pong, Close, Offer,
        ChunkBatchRequest, ChunkBatchResponse, LogHeads, LogEntries, EpochKeys,
        Join, Joined, CodeHello, CodeProof, CodeAnswer, Progress,
    )
}  # fmt: skip


def schema_as_json() -> dict[str, Any]:
    """The table written to protocol/messages.json."""
    return {
        "version": PROTOCOL_VERSION,
        "max_message": MAX_MESSAGE,
        "messages": [
            {"type": code, "name": cls.__name__, "fields": [f.as_json() for f in cls.FIELDS]}
            for code, cls in sorted(SCHEMA.items())
        ],
    }


def encode(message: Message) -> bytes:
    return encode_typed(message)


def decode(data: bytes) -> Message:
    message: Message = decode_typed(data, SCHEMA, max_size=MAX_MESSAGE, what="message")
    return message


def encode_typed(message: Any) -> bytes:
    """``[TYPE, field, ...]`` of a message class with ``TYPE`` and ``FIELDS``, every field
    validated first (:class:`ProtocolError`). Shared by the wire and the relay's messages."""
    values = [getattr(message, f.name) for f in message.FIELDS]
    for spec, value in zip(message.FIELDS, values, strict=True):
        validate_field(spec, value, type(message).__name__)
    return encoding.pack([message.TYPE, *values])


def decode_typed(data: bytes, schema: Mapping[int, type[Any]], *, max_size: int, what: str) -> Any:
    """The message of ``schema`` that ``data`` encodes, every field validated before it is
    built; :class:`ProtocolError` (naming ``what``) on anything else."""
    try:
        obj = encoding.unpack(data, max_size=max_size, what=what)
    except EncodingError as exc:
        raise ProtocolError(str(exc)) from exc
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise ProtocolError(f"a {what} is an array starting with its type")
    cls = schema.get(obj[0])
    if cls is None:
        raise ProtocolError(f"unknown {what} type {obj[0]}")
    values = obj[1:]
    specs: tuple[FieldSpec, ...] = cls.FIELDS
    if len(values) != len(specs):
        raise ProtocolError(f"{cls.__name__} has {len(specs)} fields, this one has {len(values)}")
    for spec, value in zip(specs, values, strict=True):
        validate_field(spec, value, cls.__name__)
    return cls(*values)


def validate_field(spec: FieldSpec, value: Any, where: str) -> None:
    """Check one decoded value against its spec (:class:`ProtocolError` if it does not fit);
    ``where`` names the message for the error."""
    name = f"{where}.{spec.name}"
    if spec.kind == "uint":
        ok = type(value) is int and 0 <= value <= spec.max
    elif spec.kind == "bool":
        ok = type(value) is bool
    elif spec.kind == "bin":
        ok = isinstance(value, bytes) and spec.min <= len(value) <= spec.max
    elif spec.kind == "str":
        ok = isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) <= spec.max
    else:
        ok = isinstance(value, list) and len(value) <= spec.max
        if ok and len(spec.items) == 1:  # an array of plain values
            for item in value:
                validate_field(spec.items[0], item, name)
        elif ok:  # an array of fixed-size records
            for item in value:
                if not isinstance(item, list) or len(item) != len(spec.items):
                    raise ProtocolError(f"{name}: an entry does not have {len(spec.items)} fields")
                for item_spec, item_value in zip(spec.items, item, strict=True):
                    validate_field(item_spec, item_value, name)
    if not ok:
        raise ProtocolError(f"{name} is not a valid {spec.kind} (limit {spec.max})")


__all__ = [
    "SCHEMA",
    "ChunkBatchRequest",
    "ChunkBatchResponse",
    "ChunkRequest",
    "ChunkResponse",
    "Close",
    "CloseReason",
    "CodeAnswer",
    "CodeHello",
    "CodeProof",
    "FieldSpec",
    "Folders",
    "Hello",
    "Index",
    "IndexRequest",
    "Message",
    "Ping",
    "Pong",
    "Progress",
    "decode",
    "decode_typed",
    "encode",
    "encode_typed",
    "validate_field",
]
