"""The one place where commonsync turns structures into msgpack and back.

Signatures are computed over encoded bytes, so the encoding must be canonical: one structure,
one byte string. We get that from msgpack's own rules (shortest integer and length forms,
``bin`` for bytes, ``str`` for text) plus two of ours: no maps and no floats in signed
structures (positional arrays instead), and a decoder that re-encodes what it read and refuses
anything that does not come back byte for byte. Every decode has an explicit size limit.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import EncodingError

#: Nesting a well-formed commonsync structure never exceeds; deeper input is refused early.
_MAX_DEPTH = 16


def pack(obj: Any) -> bytes:
    """Encode ``obj`` canonically (arrays, ints, bools, None, bytes, str only)."""
    try:
        return msgpack.packb(obj, use_bin_type=True, strict_types=False, datetime=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodingError(f"cannot encode {type(obj).__name__}: {exc}") from exc


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
    _check_shape(obj, what, 0)
    if pack(obj) != data:
        raise EncodingError(f"{what} is not canonically encoded")
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise EncodingError(f"msgpack extension type {code} is not allowed")


def _check_shape(obj: Any, what: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise EncodingError(f"{what} is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(obj, list):
        for item in obj:
            _check_shape(item, what, depth + 1)
    elif isinstance(obj, dict):
        raise EncodingError(f"{what} contains a map; commonsync structures use arrays")
    elif isinstance(obj, float):
        raise EncodingError(f"{what} contains a float; commonsync structures use integers")
