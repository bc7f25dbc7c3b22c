"""An epoch's secret, sealed to each device in force.

A new epoch (a member removed, a device lost) gets a fresh folder secret. It travels inside the
signed entry, sealed to every remaining device with ``crypto_box_seal`` (an anonymous sender,
an X25519 key converted from the device's Ed25519 key), beside a hash of the secret so that a
device can tell it unsealed the right one. A removed device is not among them: it cannot read
what is sealed from then on.
"""

from __future__ import annotations

from nacl.bindings import (
    crypto_box_seal,
    crypto_box_seal_open,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import CryptoError

from ..errors import MembershipError
from ..formats.hashing import blake2b
from ..formats.identity import DeviceIdentity
from ..formats.keys import FolderKey

SECRET_HASH_CONTEXT = b"commonsync/v1 epoch-secret\x00"


def secret_hash(secret: bytes) -> bytes:
    return blake2b(SECRET_HASH_CONTEXT + secret)


def seal_secret(secret: bytes, device: bytes) -> bytes:
    """``secret`` sealed to the device whose Ed25519 public key is ``device``."""
    try:
        return bytes(crypto_box_seal(secret, crypto_sign_ed25519_pk_to_curve25519(device)))
    except (CryptoError, ValueError) as exc:
        raise MembershipError(f"cannot seal to device key {device.hex()[:16]}: {exc}") from None


def open_secret(
    identity: DeviceIdentity, folder_id: bytes, epoch: int, expected_hash: bytes, sealed: bytes
) -> FolderKey:
    """The folder key of ``epoch``, from the secret sealed to ``identity``."""
    public, private = crypto_sign_seed_keypair(identity.seed)
    try:
        secret = crypto_box_seal_open(
            sealed,
            crypto_sign_ed25519_pk_to_curve25519(public),
            crypto_sign_ed25519_sk_to_curve25519(private),
        )
    except (CryptoError, ValueError):
        raise MembershipError(
            f"the secret of epoch {epoch} was not sealed to this device"
        ) from None
    if secret_hash(secret) != expected_hash:
        raise MembershipError(f"the secret of epoch {epoch} is not the one its entry names")
    return FolderKey(folder_id, epoch, secret)
