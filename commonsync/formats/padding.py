"""Length hiding: pad sealed payloads into Padmé buckets.

Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication with
PURBs", PETS 2019) rounds a length L up so that only O(log log L) bits of it remain visible,
with at most 12 % overhead. A floor bucket hides the size of small payloads entirely.
"""

from __future__ import annotations

from ..errors import EncodingError

#: Bytes of the big-endian length prefix inside a padded payload.
LENGTH_PREFIX = 4


def padme(length: int) -> int:
    """Smallest Padmé bucket that holds ``length`` bytes."""
    if length < 2:
        return length
    exponent = length.bit_length() - 1  # floor(log2 L)
    size_bits = exponent.bit_length()  # floor(log2 E) + 1
    low_bits = exponent - size_bits
    mask = (1 << low_bits) - 1
    return (length + mask) & ~mask


def padded_size(length: int, floor: int) -> int:
    """Size of ``pad(data)`` for data of ``length`` bytes."""
    return max(floor, padme(length + LENGTH_PREFIX))


def pad(data: bytes, floor: int) -> bytes:
    """``u32be(len(data)) || data || zeros`` up to the bucket size."""
    total = padded_size(len(data), floor)
    return (
        len(data).to_bytes(LENGTH_PREFIX, "big") + data + bytes(total - LENGTH_PREFIX - len(data))
    )


def unpad(padded: bytes, floor: int) -> bytes:
    """Inverse of :func:`pad`; refuses any padding :func:`pad` would not have produced."""
    if len(padded) < LENGTH_PREFIX:
        raise EncodingError("padded payload is shorter than its length prefix")
    length = int.from_bytes(padded[:LENGTH_PREFIX], "big")
    end = LENGTH_PREFIX + length
    if end > len(padded) or padded_size(length, floor) != len(padded):
        raise EncodingError("padded payload has an inconsistent length")
    if padded.count(0, end) != len(padded) - end:
        raise EncodingError("padding bytes are not zero")
    return padded[LENGTH_PREFIX:end]
