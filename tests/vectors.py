"""Loading the protocol's test vectors (protocol/vectors/*.json) for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROTOCOL = Path(__file__).resolve().parent.parent / "protocol"


def load(name: str) -> Any:
    return json.loads((PROTOCOL / "vectors" / name).read_text(encoding="utf-8"))


def seed(label: str, n: int) -> bytes:
    """The vectors' deterministic input generator (see protocol/generate_vectors.py)."""
    import hashlib

    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.blake2b(label.encode() + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])
