"""The one place where commonsync turns structures into msgpack and back.

Signatures are computed over encoded bytes, so the encoding must be canonical: one structure,
one byte string. We get that from msgpack's own rules (shortest integer and length forms,
``bin`` for bytes, ``str`` for text) plus two of ours: no maps and no floats in signed
structures (positional arrays instead), and a decoder that refuses anything that would not
come back byte for byte if it were encoded again. Every decode has an explicit size limit.

Chunks of a MiB travel inside messages, so neither direction copies them more than it must:
:func:`pack` copies a large ``bytes`` item of the outer array once (msgpack alone copies it
twice), and :func:`unpack` checks canonical form by size, not by encoding again (see
:func:`_canonical_size`).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import EncodingError

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
    if len(data) > max_size:
        raise EncodingError(f"{what} is {len(data)} bytes, over the limit of {max_size}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            # Only what a commonsync structure may hold: no ext types, no timestamps.
            ext_hook=_refuse_ext,
            timestamp=0,
        )
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
    if _canonical_size(obj, what) != len(data):
        raise EncodingError(f"{what} is not canonically encoded")
    return obj


def _canonical_size(obj: Any, what: str, depth: int = 0) -> int:
    """The size of ``obj``'s canonical encoding, without encoding it; refuses what a
    commonsync structure may not hold (maps, floats, deep nesting) on the way.

    The size is enough to tell canonical input from any other: msgpack's canonical form of
    each value is its shortest, so any other encoding of the same decoded structure is
    longer. (A test checks this function against :func:`pack` on generated structures.)
    """
    if isinstance(obj, list):
        if depth >= _MAX_DEPTH:
            raise EncodingError(f"{what} is nested more than {_MAX_DEPTH} levels deep")
        count = len(obj)
        header = 1 if count < 16 else 3 if count < 1 << 16 else 5
        return header + sum(_canonical_size(item, what, depth + 1) for item in obj)
    if isinstance(obj, bytes):
        n = len(obj)
        return n + (2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)
    if isinstance(obj, str):
        n = len(obj.encode("utf-8", "surrogatepass"))
        return n + (1 if n < 32 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)
    if obj is None or isinstance(obj, bool):
        return 1
    if isinstance(obj, int):
        return _int_size(obj)
    if isinstance(obj, dict):
        raise EncodingError(f"{what} contains a map; commonsync structures use arrays")
    if isinstance(obj, float):
        raise EncodingError(f"{what} contains a float; commonsync structures use integers")
    raise EncodingError(f"{what} holds a {type(obj).__name__}, which commonsync does not use")


def _int_size(n: int) -> int:
    if -32 <= n < 128:
        return 1
    if n >= 0:
        return 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9
    return 2 if n >= -(1 << 7) else 3 if n >= -(1 << 15) else 5 if n >= -(1 << 31) else 9


def _refuse_ext(code: int, data: bytes) -> Any:
    raise EncodingError(f"msgpack extension type {code} is not allowed")
