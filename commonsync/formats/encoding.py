"""The one place where commonsync turns structures into msgpack and back.

Signatures are computed over encoded bytes, so the encoding must be canonical: one structure,
one byte string. We get that from msgpack's own rules (shortest integer and length forms,
``bin`` for bytes, ``str`` for text) plus two of ours: no maps and no floats in signed
structures (positional arrays instead), and a decoder that refuses anything that would not
come back byte for byte if it were encoded again. Every decode has an explicit size limit.

Chunks of a MiB travel inside messages, so neither direction copies them more than it must:
:func:`pack` copies a large ``bytes`` item of the outer array once (msgpack alone copies it
twice), and :func:`unpack` checks canonical form with one walk over the headers, not by
encoding again (see :func:`_check_canonical`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import msgpack

from ..errors import EncodingError

#: Nesting a well-formed commonsync structure never exceeds; deeper input is refused early.
_MAX_DEPTH = 16


#: A ``bytes`` item of the outer array this large is joined in, not packed by msgpack.
_LARGE = 64 * 1024


def pack(obj: Any) -> bytes:
    """Encode ``obj`` canonically (arrays, ints, bools, None, bytes, str only)."""
    try:
        if isinstance(obj, list) and any(type(v) is bytes and len(v) >= _LARGE for v in obj):
            return _pack_joined(obj)
        return _packb(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodingError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=False, datetime=False)  # type: ignore[no-any-return]


def _pack_joined(items: list[Any]) -> bytes:
    """The same bytes as msgpack's, with each large item copied once: headers and small items
    are packed, and everything is joined."""
    parts = [_array_header(len(items))]
    for item in items:
        if type(item) is bytes and len(item) >= _LARGE:
            parts.append(_bin_header(len(item)))
            parts.append(item)
        else:
            parts.append(_packb(item))
    return b"".join(parts)


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def unpack(data: bytes, *, max_size: int, what: str = "message") -> Any:
    """Decode exactly one canonical msgpack object of at most ``max_size`` bytes.

    ``what`` names the structure in error messages ("record", "folder key", ...).
    """
    _check_whole(data, max_size, what)
    with _decoding(what):
        return msgpack.unpackb(data, **_OPTIONS)


#: How much of the encoded object a :class:`Reader` copies out at a time.
_READ_SIZE = 64 * 1024


class Reader:
    """One canonical msgpack object of at most ``max_size`` bytes, read a piece at a time.

    A record's chunk list holds up to 400,000 small arrays; decoded at once, they are tens of
    megabytes of short-lived objects per record. Read item by item, each is gone before the
    next is made. The whole object is checked (size, canonical form) before anything is read.
    """

    def __init__(self, data: bytes, *, max_size: int, what: str = "message") -> None:
        _check_whole(data, max_size, what)
        self._what = what
        # Read through a window rather than from a copy of all of ``data``.
        self._unpacker = msgpack.Unpacker(io.BytesIO(data), read_size=_READ_SIZE, **_OPTIONS)

    def item(self) -> Any:
        """The next item, whole."""
        with _decoding(self._what):
            return self._unpacker.unpack()

    def array(self) -> int | None:
        """Open the array that comes next: its length, or None if the next item is not an
        array (the reader is then of no further use)."""
        try:
            length: int = self._unpacker.read_array_header()
        except (ValueError, msgpack.OutOfData):
            return None
        return length


def _check_whole(data: bytes, max_size: int, what: str) -> None:
    if len(data) > max_size:
        raise EncodingError(f"{what} is {len(data)} bytes, over the limit of {max_size}")
    _check_canonical(data, what)


@contextlib.contextmanager
def _decoding(what: str) -> Iterator[None]:
    """msgpack's own errors, as :class:`EncodingError` naming ``what``."""
    try:
        yield
    except EncodingError:
        raise
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        RecursionError,
    ) as exc:
        raise EncodingError(f"{what} is not valid msgpack: {exc}") from exc


def _check_canonical(data: bytes, what: str) -> None:
    """Refuse ``data`` unless it is one msgpack object in canonical form: every header the
    shortest for its value, and only what a commonsync structure may hold (arrays, ints,
    bools, None, bytes, str; no maps, floats or extensions; at most :data:`_MAX_DEPTH` deep).

    A walk over the headers, skipping payloads: it costs one step per item, whatever the
    bytes a chunk holds, and it needs nothing decoded. (Comparing sizes is not enough: a
    signed form of a positive integer can be as long as the unsigned one.)
    """
    size = len(data)
    position = 0
    #: Items still to read in each open array, innermost last.
    open_arrays = [1]
    while open_arrays:
        if open_arrays[-1] == 0:
            open_arrays.pop()
            continue
        open_arrays[-1] -= 1
        if position >= size:
            raise EncodingError(f"{what} is not valid msgpack: it ends early")
        marker = data[position]
        form = _FORMS.get(marker)
        if form is None:  # fixint, fixstr, fixarray, nil, bool
            if 0x90 <= marker <= 0x9F:
                open_arrays.append(marker & 0x0F)
                position += 1
            elif 0xA0 <= marker <= 0xBF:
                position += 1 + (marker & 0x1F)
            elif marker <= 0x7F or marker >= 0xE0 or marker in (0xC0, 0xC2, 0xC3):
                position += 1
            else:
                raise EncodingError(f"{what} {_refused(marker)}")
        else:
            kind, width, smallest = form
            if position + 1 + width > size:
                raise EncodingError(f"{what} is not valid msgpack: it ends early")
            value = int.from_bytes(
                data[position + 1 : position + 1 + width], "big", signed=kind == "int"
            )
            if (value >= smallest) if kind == "int" else (value < smallest):
                raise EncodingError(f"{what} is not canonically encoded")
            position += 1 + width
            if kind == "array":
                open_arrays.append(value)
            elif kind == "payload":
                position += value
        if len(open_arrays) > _MAX_DEPTH + 1:
            raise EncodingError(f"{what} is nested more than {_MAX_DEPTH} levels deep")
    if position != size:
        raise EncodingError(f"{what} is not valid msgpack: bytes follow the object")


#: Header forms with a value after the marker: (what the value is, its width in bytes, the
#: bound that makes the form the shortest one). "uint" and the lengths of "payload" and
#: "array" must be at least the bound; a signed "int" must be below it (a non-negative value
#: or a small negative one has a shorter form).
_FORMS: dict[int, tuple[str, int, int]] = {
    0xCC: ("uint", 1, 1 << 7),
    0xCD: ("uint", 2, 1 << 8),
    0xCE: ("uint", 4, 1 << 16),
    0xCF: ("uint", 8, 1 << 32),
    0xD0: ("int", 1, -32),
    0xD1: ("int", 2, -(1 << 7)),
    0xD2: ("int", 4, -(1 << 15)),
    0xD3: ("int", 8, -(1 << 31)),
    0xC4: ("payload", 1, 0),  # bin 8
    0xC5: ("payload", 2, 1 << 8),
    0xC6: ("payload", 4, 1 << 16),
    0xD9: ("payload", 1, 32),  # str 8
    0xDA: ("payload", 2, 1 << 8),
    0xDB: ("payload", 4, 1 << 16),
    0xDC: ("array", 2, 16),
    0xDD: ("array", 4, 1 << 16),
}


def _refused(marker: int) -> str:
    if 0x80 <= marker <= 0x8F or marker in (0xDE, 0xDF):
        return "contains a map; commonsync structures use arrays"
    if marker in (0xCA, 0xCB):
        return "contains a float; commonsync structures use integers"
    if marker in (0xC7, 0xC8, 0xC9) or 0xD4 <= marker <= 0xD8:
        return f"contains a msgpack extension type (0x{marker:02x}), which is not allowed"
    return f"is not valid msgpack: 0x{marker:02x} is no msgpack type"


def _refuse_ext(code: int, data: bytes) -> Any:
    raise EncodingError(f"msgpack extension type {code} is not allowed")


#: How every commonsync structure is decoded.
_OPTIONS: dict[str, Any] = {
    "raw": False,
    "use_list": True,
    "strict_map_key": True,
    # Only what a commonsync structure may hold: no ext types, no timestamps.
    "ext_hook": _refuse_ext,
    "timestamp": 0,
}
