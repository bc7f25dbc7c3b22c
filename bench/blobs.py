"""Self-describing file contents, so that a file proves by itself whether it is whole.

Every write the reliability scenarios make is one *blob*::

    #csrel <tag> <kind> <length> <checksum>\\n<payload>\\n

``tag`` is unique in a trial (the writing device's name and a counter), ``kind`` is ``W`` for a
blob that starts a file (a write or an overwrite) and ``A`` for one appended to it, ``length``
the payload's size in bytes and ``checksum`` its BLAKE2b-128 in hex. A file's content is then a
head blob followed by any number of appended ones. :func:`damage` says what is wrong with a
content that is not such a sequence of whole blobs with known tags: a file the sync engine tore
(a half-written temporary file renamed into place, chunks of two versions spliced, a zero-filled
hole) cannot pass, because blob boundaries do not line up with content-defined chunk
boundaries and every payload carries its checksum.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection

__all__ = ["APPEND", "HEAD", "damage", "digest", "make_blob", "tags"]

HEAD = "W"
APPEND = "A"
_MAGIC = b"#csrel "
#: Longest header accepted: magic, a tag, a kind, a length and 32 hex digits, with room.
_MAX_HEADER = 200


def digest(content: bytes) -> str:
    """What identifies one version of a file: the hash of its whole content."""
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def make_blob(tag: str, kind: str, size: int, rng: random.Random) -> bytes:
    """One blob of ``size`` random payload bytes (from ``rng``, so a seed fixes it)."""
    payload = rng.randbytes(size)
    header = f"#csrel {tag} {kind} {size} {digest(payload)}\n".encode()
    return header + payload + b"\n"


def _parse(content: bytes) -> tuple[list[tuple[str, str]], str]:
    """The (tag, kind) of every whole blob from the start, and what stopped the parse ("" if
    the content was read to its end)."""
    found: list[tuple[str, str]] = []
    at = 0
    while at < len(content):
        end = content.find(b"\n", at, at + _MAX_HEADER)
        if not content.startswith(_MAGIC, at) or end < 0:
            return found, f"no blob header at byte {at}"
        fields = content[at + len(_MAGIC) : end].split(b" ")
        if len(fields) != 4 or not fields[2].isdigit():
            return found, f"a malformed blob header at byte {at}"
        tag, kind, size, checksum = (
            fields[0].decode(),
            fields[1].decode(),
            int(fields[2]),
            fields[3],
        )
        start, stop = end + 1, end + 1 + size
        if stop + 1 > len(content):
            return found, f"blob {tag} is cut short ({len(content) - start} of {size + 1} bytes)"
        if digest(content[start:stop]).encode() != checksum or content[stop : stop + 1] != b"\n":
            return found, f"blob {tag} does not match its checksum"
        found.append((tag, kind))
        at = stop + 1
    return found, ""


def tags(content: bytes) -> list[str]:
    """The tags of the whole blobs at the start of ``content`` (for reports)."""
    return [tag for tag, _ in _parse(content)[0]]


def damage(content: bytes, known: Collection[str]) -> str:
    """Why ``content`` is not one complete written version ("" when it is): it must be a head
    blob and any appended blobs, every one whole, checksummed and written by a scenario
    (``known`` tags)."""
    if not content:
        return "empty (no write leaves a file empty)"
    found, stopped = _parse(content)
    if stopped:
        return stopped
    if found[0][1] != HEAD:
        return f"starts with blob {found[0][0]}, which was appended to a file"
    unknown = [tag for tag, _ in found if tag not in known]
    if unknown:
        return f"holds blobs no scenario wrote: {', '.join(unknown[:3])}"
    return ""
