"""An invitation's secret, and the key the log knows it by.

The person invited gets the secret (in a link, or through the PAKE of a short code); the log
holds only the Ed25519 public key derived from it (:class:`~.entries.Invite`). Admitting the
joiner takes a signature with the derived private key over what the admission says (the
joiner's name and devices), so any member device can admit the joiner while the inviting admin
is away, and nobody who read the log, or a relay, can use the invitation.
"""

from __future__ import annotations

import os

from ..errors import EntryMalformedError, SignatureError
from ..formats import encoding
from ..formats.hashing import derive_key
from ..formats.identity import DeviceIdentity, verify_signature

SECRET_BYTES = 16  # 128 bits: a guess costs an online attempt in any case
#: The longest secret: it keys BLAKE2b (SPEC.md §1), whose key is at most 64 bytes.
MAX_SECRET_BYTES = 64
KEY_CONTEXT = b"commonsync/v1 invitation-key"
ADMISSION_CONTEXT = b"commonsync/v1 invitation\x00"


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def invitation_identity(secret: bytes) -> DeviceIdentity:
    """The signing key an invitation's secret stands for."""
    if not SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise EntryMalformedError(
            f"an invitation secret has {SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
        )
    return DeviceIdentity.from_seed(derive_key(secret, KEY_CONTEXT))


def invitation_key(secret: bytes) -> bytes:
    """The public key the invite entry holds (checked like :func:`invitation_identity`, so
    that no invitation is made whose secret could not sign an admission)."""
    return invitation_identity(secret).public_key


def admission_message(
    folder_id: bytes, invitation: bytes, name: str, devices: list[bytes]
) -> bytes:
    return ADMISSION_CONTEXT + folder_id + invitation + encoding.pack([name, devices])


def sign_admission(
    secret: bytes, folder_id: bytes, invitation: bytes, name: str, devices: list[bytes]
) -> bytes:
    """The joiner's proof that it holds the invitation's secret, for this name and these
    devices only (an admission cannot be replayed for others)."""
    message = admission_message(folder_id, invitation, name, devices)
    return invitation_identity(secret).sign(message)


def admission_verifies(
    key: bytes, signature: bytes, folder_id: bytes, invitation: bytes, name: str,
    devices: list[bytes],
) -> bool:  # fmt: skip
    try:
        verify_signature(key, admission_message(folder_id, invitation, name, devices), signature)
    except SignatureError:
        return False
    return True
