"""Folder-relative paths, as records carry them.

Paths from the network are hostile until proven otherwise. A valid path is relative,
``/``-separated, in Unicode NFC, with no empty, ``.`` or ``..`` component and no NUL, at most
4096 bytes of UTF-8 and 255 bytes per component. Decoders reject anything else; paths read from
the local file system are normalised to NFC first (:func:`from_local`).
"""

from __future__ import annotations

import os
import unicodedata

from ..errors import InvalidPathError

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255


def validate(path: str) -> str:
    """Return ``path`` unchanged if it is acceptable, else raise InvalidPathError."""
    if not isinstance(path, str):
        raise InvalidPathError("a path is a string")
    if not path:
        raise InvalidPathError("empty path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPathError(f"path {path!r} is not valid Unicode") from exc
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidPathError(f"path is {len(encoded)} bytes, over the {MAX_PATH_BYTES} limit")
    if "\x00" in path:
        raise InvalidPathError(f"path {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise InvalidPathError(f"path {path!r} is absolute")
    if unicodedata.normalize("NFC", path) != path:
        raise InvalidPathError(f"path {path!r} is not in Unicode NFC")
    for component in path.split("/"):
        if component in ("", ".", ".."):
            raise InvalidPathError(f"path {path!r} has an empty, '.' or '..' component")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise InvalidPathError(f"a component of {path!r} is over {MAX_COMPONENT_BYTES} bytes")
    return path


def from_local(relative: str) -> str:
    """A path read from the local file system (``os.sep``-separated), made canonical."""
    if os.sep != "/":
        relative = relative.replace(os.sep, "/")
    return validate(unicodedata.normalize("NFC", relative))
